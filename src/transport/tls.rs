//! TLS 1.3, both ways, with pinned peer ids or CA-issued names.
//!
//! Each side presents its certificate; the other accepts it only if it is
//! well-formed and currently valid, and either self-signed (signed by its
//! own key) or chained to a CA of `[trust] ca`; then on dial it must be the
//! peer dialled (a pinned id, or the peer's name in a CA-issued
//! certificate), on accept a peer the [`InboundPolicy`] allows. The
//! handshake signature proves the presenter holds the key. Every refusal is
//! counted in `peerpool_handshake_failures_total` by reason.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::ca::{Trust, Usage};
use crate::identity::{verify_certificate, CertError, Identity, PeerId, Verified};
use crate::metrics::{self, labels::HandshakeReason};

/// The server name every dial uses; certificates are checked by id, not name.
pub const SERVER_NAME: &str = "peerpool";

/// The one crypto provider of the process (ring), so rustls never has to
/// guess one (mixing providers panics at run time).
pub fn provider() -> Arc<CryptoProvider> {
    // One per process: every peer's client config shares it.
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Decides who may connect in.
pub trait InboundPolicy: Send + Sync + std::fmt::Debug + 'static {
    /// `Ok` if the presenter of `who` may connect; `Err` with the reason it
    /// is counted under.
    fn check(&self, who: &Verified) -> Result<(), HandshakeReason>;
}

/// Who a dial expects at the other end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expected {
    /// One of these ids.
    Pinned(Vec<PeerId>),
    /// A certificate of a trusted CA carrying this peer name.
    Named(String),
}

/// Why building a TLS config failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

fn cert_error(e: &CertError) -> (CertificateError, HandshakeReason) {
    match e {
        CertError::Malformed(_) => (CertificateError::BadEncoding, HandshakeReason::BadCert),
        CertError::Expired { .. } => (CertificateError::Expired, HandshakeReason::Expired),
        CertError::NotYetValid { .. } => (CertificateError::NotValidYet, HandshakeReason::Expired),
        CertError::BadSignature => (
            CertificateError::BadSignature,
            HandshakeReason::BadSignature,
        ),
        CertError::Untrusted(_) => (CertificateError::UnknownIssuer, HandshakeReason::Untrusted),
    }
}

/// Checks a presented certificate (self-signed, or chained to `trust`) and
/// returns who it is, counting a refusal.
fn check_presented(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    trust: Option<&Trust>,
    usage: Usage,
) -> Result<Verified, rustls::Error> {
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let verified = match (verify_certificate(end_entity, now), trust) {
        (Ok(id), _) => Ok(Verified { id, name: None }),
        (Err(CertError::BadSignature), Some(trust)) => {
            trust.verify(end_entity, intermediates, now, usage)
        }
        (Err(e), _) => Err(e),
    };
    verified.map_err(|e| {
        let (err, reason) = cert_error(&e);
        metrics::handshake_failure(reason);
        tracing::debug!(error = %e, "refused a peer certificate");
        rustls::Error::InvalidCertificate(err)
    })
}

fn check_signature(
    algs: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, algs).inspect_err(|_| {
        // The certificate was fine but the handshake was not signed by its
        // key: someone presents a certificate whose key they do not hold.
        metrics::handshake_failure(HandshakeReason::BadSignature);
    })
}

/// Client side: the server must be the peer we dialled.
#[derive(Debug)]
struct DialVerifier {
    expected: Expected,
    trust: Option<Arc<Trust>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for DialVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let who = check_presented(
            end_entity,
            intermediates,
            now,
            self.trust.as_deref(),
            Usage::Server,
        )?;
        let (ok, reason) = match &self.expected {
            Expected::Pinned(ids) => (ids.contains(&who.id), HandshakeReason::WrongId),
            Expected::Named(name) => (who.name.as_ref() == Some(name), HandshakeReason::WrongName),
        };
        if !ok {
            metrics::handshake_failure(reason);
            tracing::warn!(expected = ?self.expected, presented = %who.id, name = ?who.name, "dialled peer presented another identity");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only; the configs below enable nothing else.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Server side: the client must present a certificate of an allowed peer.
#[derive(Debug)]
struct AcceptVerifier {
    policy: Arc<dyn InboundPolicy>,
    trust: Option<Arc<Trust>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AcceptVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let who = check_presented(
            end_entity,
            intermediates,
            now,
            self.trust.as_deref(),
            Usage::Client,
        )?;
        if let Err(reason) = self.policy.check(&who) {
            metrics::handshake_failure(reason);
            tracing::info!(peer = %who.id, name = ?who.name, %reason, "refused an inbound connection");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The certificate and its chain, as a handshake sends them.
fn chain_of(identity: &Identity) -> Vec<CertificateDer<'static>> {
    std::iter::once(identity.cert.clone())
        .chain(identity.chain.iter().cloned())
        .collect()
}

/// The rustls server config of a node.
pub fn server_config(
    identity: &Identity,
    alpn: &[u8],
    policy: Arc<dyn InboundPolicy>,
    trust: Option<Arc<Trust>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(AcceptVerifier {
        policy,
        trust,
        algs: provider.signature_verification_algorithms,
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain_of(identity), identity.key.clone_key())?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    // No resumption: every connection presents and proves its certificate
    // (a resumed session would skip the verifier, so a removed peer or a
    // revoked CA could come back on an old ticket).
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// The rustls client config for dialling the peer pinned to `expected`.
pub fn client_config(
    identity: &Identity,
    alpn: &[u8],
    expected: PeerId,
) -> Result<rustls::ClientConfig, TlsError> {
    client_config_expecting(identity, alpn, Expected::Pinned(vec![expected]), None)
}

/// The rustls client config for dialling the peer `expected`.
pub(crate) fn client_config_expecting(
    identity: &Identity,
    alpn: &[u8],
    expected: Expected,
    trust: Option<Arc<Trust>>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(DialVerifier {
        expected,
        trust,
        algs: provider.signature_verification_algorithms,
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain_of(identity), identity.key.clone_key())?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    // Every connection does a full handshake against a pinned key; session
    // resumption would only cost memory (rustls preallocates a 256-entry
    // cache per config, that is, per peer) and keep tickets around.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// Who is at the other end of an established connection: the id of its
/// certificate, and its name if that certificate is CA-issued (the
/// handshake verified the chain; a self-signed certificate's names mean
/// nothing).
pub(crate) fn remote_identity(conn: &quinn::Connection) -> Option<Verified> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let first = certs.first()?;
    let id = crate::identity::peer_id_of_cert(first).ok()?;
    let self_signed = verify_certificate(first, crate::identity::now_unix()).is_ok();
    let name = if self_signed {
        None
    } else {
        crate::identity::ca::name_of_cert(first)
    };
    Some(Verified { id, name })
}

/// Labels a handshake that failed on this side for a reason the verifiers
/// did not already count (they count certificate problems themselves).
pub(crate) fn uncounted_handshake_failure(e: &quinn::ConnectionError) -> Option<HandshakeReason> {
    use quinn::ConnectionError as E;
    match e {
        E::TransportError(te) => {
            let code = u64::from(te.code);
            if !(0x100..0x200).contains(&code) {
                return Some(HandshakeReason::Tls);
            }
            // TLS alerts (RFC 8446 §6): the ones our verifiers raise were
            // counted where they were raised.
            match code - 0x100 {
                42 | 45 | 49 | 51 => None,
                116 => Some(HandshakeReason::NoClientCert),
                120 => Some(HandshakeReason::Alpn),
                _ => Some(HandshakeReason::Tls),
            }
        }
        E::TimedOut => Some(HandshakeReason::Timeout),
        _ => None,
    }
}
