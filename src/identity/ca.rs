//! Certificate authorities: the CAs a node trusts (`[trust] ca`), the chain
//! check a CA-issued certificate must pass, the name it carries, and
//! `peerpool ca init` / `ca issue`.
//!
//! A CA-issued peer certificate names its peer in a URI SAN:
//! `peerpool://NAME`, NAME being the peer's configured `name`
//! (`[a-z0-9_-]{1,32}`). Replicas of one service share the name, each with a
//! key of its own (or the same). The chain is checked with webpki (the
//! verifier rustls itself uses): a path to a trusted CA, every certificate
//! within its validity period, the extended key usage of the direction.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use time::OffsetDateTime;

use super::id::{CertError, IdentityError, PeerId, Verified};
use super::write::{write_file, write_private};

/// The scheme of the URI SAN that names a peer.
pub const NAME_SCHEME: &str = "peerpool://";
/// Files `peerpool ca init` writes.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
/// How long a CA made by `ca init` is valid by default: ten years (its
/// node certificates are short-lived and reissued; the CA is not).
pub const DEFAULT_CA_VALID_DAYS: u32 = 3650;
/// Common name of the CAs `ca init` makes (`ca issue` signs with it).
const CA_COMMON_NAME: &str = "peerpool CA";

/// Which side of a handshake presented the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// The dialled node (TLS server).
    Server,
    /// The dialling node (TLS client).
    Client,
    /// A node's own certificate, which serves both ways.
    Both,
}

/// The CAs a node trusts.
#[derive(Debug, Clone)]
pub struct Trust {
    anchors: Vec<TrustAnchor<'static>>,
    /// Where they came from, for messages.
    pub path: PathBuf,
}

/// The same anchors, wherever they were read from.
impl PartialEq for Trust {
    fn eq(&self, other: &Trust) -> bool {
        self.anchors == other.anchors
    }
}

impl Trust {
    /// Reads a PEM bundle of CA certificates.
    pub fn load(path: &Path) -> Result<Trust, IdentityError> {
        let pem = std::fs::read(path).map_err(IdentityError::read(path))?;
        Trust::from_pem(&pem, path)
    }

    /// A bundle already read; `path` only names it in messages.
    pub fn from_pem(pem: &[u8], path: &Path) -> Result<Trust, IdentityError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| IdentityError::NoCertificate {
                path: path.to_owned(),
            })?;
        if certs.is_empty() {
            return Err(IdentityError::NoCertificate {
                path: path.to_owned(),
            });
        }
        let anchors = certs
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| IdentityError::BadCertificate {
                        path: path.to_owned(),
                        reason: CertError::Malformed(format!("not a CA certificate: {e}")),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Trust {
            anchors,
            path: path.to_owned(),
        })
    }

    /// Checks that `end_entity` chains (through `intermediates`) to one of
    /// these CAs, that everything is valid at `now_unix` and usable for
    /// `usage`. Returns its id and the name it carries.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now_unix: i64,
        usage: Usage,
    ) -> Result<Verified, CertError> {
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| CertError::Malformed(e.to_string()))?;
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now_unix).unwrap_or(0),
        ));
        let usages = match usage {
            Usage::Server => vec![webpki::KeyUsage::server_auth()],
            Usage::Client => vec![webpki::KeyUsage::client_auth()],
            Usage::Both => vec![
                webpki::KeyUsage::server_auth(),
                webpki::KeyUsage::client_auth(),
            ],
        };
        let algs = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all;
        for u in usages {
            ee.verify_for_usage(algs, &self.anchors, intermediates, now, u, None, None)
                .map_err(|e| match e {
                    webpki::Error::CertExpired { .. } => CertError::Expired {
                        not_after: not_after(end_entity).unwrap_or(0),
                    },
                    webpki::Error::CertNotValidYet { .. } => {
                        CertError::NotYetValid { not_before: 0 }
                    }
                    other => CertError::Untrusted(other.to_string()),
                })?;
        }
        let id = super::id::peer_id_of_cert(end_entity)?;
        Ok(Verified {
            id,
            name: name_of_cert(end_entity),
        })
    }
}

fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The peer name a certificate carries: its URI SAN `peerpool://NAME`.
/// A certificate with several such names carries none (which one would it
/// be?).
pub fn name_of_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut names = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(NAME_SCHEME),
        _ => None,
    });
    let name = names.next()?;
    match names.next() {
        None => Some(name.to_string()),
        Some(_) => None,
    }
}

fn ca_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params
}

fn gen_err(e: rcgen::Error) -> IdentityError {
    IdentityError::Generate(e.to_string())
}

/// What `peerpool ca init` wrote.
#[derive(Debug)]
pub struct CaOutput {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Creates `dir` and writes a new CA: `ca.key` (mode 0600) and `ca.crt`.
/// Refuses to touch existing files unless `force`.
pub fn ca_init(dir: &Path, force: bool, valid_days: u32) -> Result<CaOutput, IdentityError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    super::write::refuse_existing(&[&key_path, &cert_path], force)?;
    std::fs::create_dir_all(dir).map_err(IdentityError::write(dir))?;
    let pair = rcgen::KeyPair::generate().map_err(gen_err)?;
    let mut params = ca_params();
    let (not_before, not_after) = validity(valid_days)?;
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.self_signed(&pair).map_err(gen_err)?;
    write_private(&key_path, pair.serialize_pem().as_bytes(), force)?;
    write_file(&cert_path, cert.pem().as_bytes(), force, 0o644)?;
    Ok(CaOutput {
        cert_path,
        key_path,
    })
}

/// The validity of a certificate made now for `valid_days` (from a day ago,
/// against clocks a little behind), or an error naming the bad count.
pub(crate) fn validity(valid_days: u32) -> Result<(OffsetDateTime, OffsetDateTime), IdentityError> {
    let now = OffsetDateTime::now_utc();
    let until = i64::from(valid_days)
        .checked_mul(86_400)
        .and_then(|s| now.checked_add(time::Duration::seconds(s)))
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| {
            IdentityError::Generate(format!(
                "--valid-days {valid_days} ends after the year 9999; give at most a few thousand years"
            ))
        })?;
    Ok((now - time::Duration::days(1), until))
}

/// What `peerpool ca issue` wrote.
#[derive(Debug)]
pub struct IssueOutput {
    pub id: PeerId,
    pub name: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Issues a node certificate for the peer `name` with the CA in `ca_dir`
/// (made by `ca init`): a fresh key in `out/node.key` (mode 0600) and the
/// certificate in `out/node.crt`, carrying `peerpool://NAME`.
pub fn ca_issue(
    ca_dir: &Path,
    name: &str,
    out: &Path,
    force: bool,
    valid_days: u32,
) -> Result<IssueOutput, IdentityError> {
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_cert_pem = std::fs::read(&ca_cert_path).map_err(IdentityError::read(&ca_cert_path))?;
    let ca_key_pem = std::fs::read(&ca_key_path).map_err(IdentityError::read(&ca_key_path))?;
    CertificateDer::from_pem_slice(&ca_cert_pem).map_err(|_| IdentityError::NoCertificate {
        path: ca_cert_path.clone(),
    })?;
    PrivateKeyDer::from_pem_slice(&ca_key_pem).map_err(|_| IdentityError::NoKey {
        path: ca_key_path.clone(),
    })?;
    let key_text = String::from_utf8_lossy(&ca_key_pem);
    let ca_pair = rcgen::KeyPair::from_pem(&key_text).map_err(|e| IdentityError::BadKey {
        path: ca_key_path.clone(),
        reason: e.to_string(),
    })?;
    let trust = Trust::from_pem(&ca_cert_pem, &ca_cert_path)?;
    let issuer = rcgen::Issuer::new(ca_params(), ca_pair);

    let cert_path = out.join(super::write::CERT_FILE);
    let key_path = out.join(super::write::KEY_FILE);
    super::write::refuse_existing(&[&key_path, &cert_path], force)?;
    let pair = rcgen::KeyPair::generate().map_err(gen_err)?;
    let mut params = rcgen::CertificateParams::default();
    let uri = format!("{NAME_SCHEME}{name}");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        uri.as_str().try_into().map_err(gen_err)?,
    )];
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let (not_before, not_after) = validity(valid_days)?;
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&pair, &issuer).map_err(gen_err)?;
    // Only a CA made by `ca init` can be signed with here: prove the chain
    // before writing anything.
    let verified = trust
        .verify(cert.der(), &[], super::id::now_unix(), Usage::Both)
        .map_err(|reason| IdentityError::BadCertificate {
            path: ca_cert_path.clone(),
            reason,
        })?;
    std::fs::create_dir_all(out).map_err(IdentityError::write(out))?;
    write_private(&key_path, pair.serialize_pem().as_bytes(), force)?;
    write_file(&cert_path, cert.pem().as_bytes(), force, 0o644)?;
    Ok(IssueOutput {
        id: verified.id,
        name: name.to_string(),
        cert_path,
        key_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{verify_certificate, Identity};

    #[test]
    fn an_issued_certificate_chains_names_its_peer_and_loads_as_an_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_init(&dir.path().join("ca"), false, 365).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&ca.key_path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let issued = ca_issue(
            &dir.path().join("ca"),
            "payments",
            &dir.path().join("n1"),
            false,
            30,
        )
        .unwrap();
        let trust = Trust::load(&ca.cert_path).unwrap();
        let pem = std::fs::read(&issued.cert_path).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let now = crate::identity::now_unix();
        let v = trust.verify(&der, &[], now, Usage::Client).unwrap();
        assert_eq!(
            v,
            Verified {
                id: issued.id,
                name: Some("payments".into())
            }
        );
        // Not self-signed: a pinned-key check refuses it, the CA accepts it.
        assert_eq!(verify_certificate(&der, now), Err(CertError::BadSignature));
        assert!(Identity::load(&issued.cert_path, &issued.key_path).is_err());
        let id =
            Identity::load_trusting(&issued.cert_path, &issued.key_path, Some(&trust)).unwrap();
        assert_eq!((id.id, id.name.as_deref()), (issued.id, Some("payments")));
        // Another CA does not vouch for it.
        let other = ca_init(&dir.path().join("other"), false, 365).unwrap();
        let other = Trust::load(&other.cert_path).unwrap();
        assert!(matches!(
            other.verify(&der, &[], now, Usage::Server),
            Err(CertError::Untrusted(_))
        ));
        // Two replicas share the name, not the key.
        let second = ca_issue(
            &dir.path().join("ca"),
            "payments",
            &dir.path().join("n2"),
            false,
            30,
        )
        .unwrap();
        assert_ne!(second.id, issued.id);
    }

    #[test]
    fn ca_files_are_never_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let first = ca_init(dir.path(), false, 30).unwrap();
        let before = std::fs::read(&first.key_path).unwrap();
        assert!(matches!(
            ca_init(dir.path(), false, 30),
            Err(IdentityError::Exists { .. })
        ));
        assert_eq!(std::fs::read(&first.key_path).unwrap(), before);
        ca_init(dir.path(), true, 30).unwrap();
        assert_ne!(std::fs::read(&first.key_path).unwrap(), before);
    }

    #[test]
    fn validity_past_the_year_9999_is_refused_not_a_panic() {
        assert!(validity(u32::MAX).is_err());
        assert!(validity(3650).is_ok());
    }
}
