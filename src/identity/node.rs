//! A node's own identity: its certificate (and chain), its key, the id and
//! name they define; and fresh self-signed ones for `keygen` and tests.

use std::fs;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use super::ca::{self, Trust};
use super::id::{now_unix, verify_certificate, CertError, IdentityError, PeerId, Verified};
use super::write::DEFAULT_VALID_DAYS;

/// A node's certificate (with the chain up to its CA, if any), private key
/// and the id they define.
#[derive(Debug)]
pub struct Identity {
    pub id: PeerId,
    /// The name a trusted CA issued this certificate for, if any.
    pub name: Option<String>,
    pub cert: CertificateDer<'static>,
    /// Certificates between `cert` and its CA, sent along in handshakes.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            id: self.id,
            name: self.name.clone(),
            cert: self.cert.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads and checks a PEM certificate and PKCS#8 key: the certificate must
    /// be currently valid and self-signed, and the key must be its key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, IdentityError> {
        Identity::load_trusting(cert_path, key_path, None)
    }

    /// Like [`Identity::load`], accepting also a certificate issued by a CA
    /// of `trust` (the file may hold the chain after the certificate).
    pub fn load_trusting(
        cert_path: &Path,
        key_path: &Path,
        trust: Option<&Trust>,
    ) -> Result<Identity, IdentityError> {
        let cert_pem = fs::read(cert_path).map_err(IdentityError::read(cert_path))?;
        let key_pem = fs::read(key_path).map_err(IdentityError::read(key_path))?;
        Identity::from_pem(&cert_pem, cert_path, &key_pem, key_path, trust)
    }

    /// Like [`Identity::load_trusting`] from bytes already read; the paths
    /// only name the sources in error messages.
    pub fn from_pem(
        cert_pem: &[u8],
        cert_path: &Path,
        key_pem: &[u8],
        key_path: &Path,
        trust: Option<&Trust>,
    ) -> Result<Identity, IdentityError> {
        let mut certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| IdentityError::NoCertificate {
                path: cert_path.to_owned(),
            })?
            .into_iter();
        let cert = certs.next().ok_or_else(|| IdentityError::NoCertificate {
            path: cert_path.to_owned(),
        })?;
        let chain: Vec<CertificateDer<'static>> = certs.collect();
        let bad = |reason| IdentityError::BadCertificate {
            path: cert_path.to_owned(),
            reason,
        };
        let verified = match (verify_certificate(&cert, now_unix()), trust) {
            (Ok(id), _) => Verified { id, name: None },
            (Err(CertError::BadSignature), Some(trust)) => trust
                .verify(&cert, &chain, now_unix(), ca::Usage::Both)
                .map_err(bad)?,
            (Err(e), _) => return Err(bad(e)),
        };
        let id = verified.id;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| IdentityError::NoKey {
            path: key_path.to_owned(),
        })?;
        let key_text = std::str::from_utf8(key_pem).map_err(|_| IdentityError::NoKey {
            path: key_path.to_owned(),
        })?;
        let pair = rcgen::KeyPair::from_pem(key_text).map_err(|e| IdentityError::BadKey {
            path: key_path.to_owned(),
            reason: e.to_string(),
        })?;
        use rcgen::PublicKeyData;
        if PeerId::from_spki(&pair.subject_public_key_info()) != id {
            return Err(IdentityError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            });
        }
        Ok(Identity {
            id,
            name: verified.name,
            cert,
            chain,
            key,
        })
    }

    /// A fresh in-memory identity (ECDSA P-256), valid for
    /// [`DEFAULT_VALID_DAYS`]; used by `peerpool demo` and tests.
    pub fn generate() -> Result<Identity, IdentityError> {
        let now = OffsetDateTime::now_utc();
        let made = generate_pem(
            now - time::Duration::days(1),
            now + time::Duration::days(DEFAULT_VALID_DAYS.into()),
        )?;
        made.into_identity()
    }
}

/// A key pair and self-signed certificate, PEM-encoded.
pub struct GeneratedPem {
    pub cert_pem: String,
    pub key_pem: String,
    pub id: PeerId,
}

impl GeneratedPem {
    /// Parses the PEM back without the validity checks of [`Identity::load`],
    /// so that tests can hold expired or not-yet-valid identities.
    pub fn into_identity(self) -> Result<Identity, IdentityError> {
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        Ok(Identity {
            id: self.id,
            name: None,
            cert,
            chain: Vec::new(),
            key,
        })
    }
}

/// Generates an ECDSA P-256 key and a self-signed certificate valid between
/// the two instants.
pub fn generate_pem(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<GeneratedPem, IdentityError> {
    use rcgen::PublicKeyData;
    let gen_err = |e: rcgen::Error| IdentityError::Generate(e.to_string());
    let pair = rcgen::KeyPair::generate().map_err(gen_err)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["peerpool".to_string()]).map_err(gen_err)?;
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.self_signed(&pair).map_err(gen_err)?;
    Ok(GeneratedPem {
        cert_pem: cert.pem(),
        key_pem: pair.serialize_pem(),
        id: PeerId::from_spki(&pair.subject_public_key_info()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{id_of_cert_file, keygen};
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keygen_then_load_gives_the_same_id() {
        let dir = tempfile::tempdir().unwrap();
        let out = keygen(dir.path(), false, 30).unwrap();
        let loaded = Identity::load(&out.cert_path, &out.key_path).unwrap();
        assert_eq!(loaded.id, out.id);
        assert_eq!(id_of_cert_file(&out.cert_path).unwrap(), out.id);
        let mode = fs::metadata(&out.key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn keygen_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let first = keygen(dir.path(), false, 30).unwrap();
        let before = fs::read(&first.key_path).unwrap();
        let err = keygen(dir.path(), false, 30).unwrap_err();
        assert!(matches!(err, IdentityError::Exists { .. }), "{err}");
        assert_eq!(fs::read(&first.key_path).unwrap(), before);
        let second = keygen(dir.path(), true, 30).unwrap();
        assert_ne!(second.id, first.id);
    }

    #[test]
    fn a_key_from_another_identity_is_refused() {
        let a = generate_pem(
            OffsetDateTime::now_utc() - time::Duration::days(1),
            OffsetDateTime::now_utc() + time::Duration::days(1),
        )
        .unwrap();
        let b = generate_pem(
            OffsetDateTime::now_utc() - time::Duration::days(1),
            OffsetDateTime::now_utc() + time::Duration::days(1),
        )
        .unwrap();
        let err = Identity::from_pem(
            a.cert_pem.as_bytes(),
            Path::new("a.crt"),
            b.key_pem.as_bytes(),
            Path::new("b.key"),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn expired_and_future_certificates_are_refused() {
        let now = OffsetDateTime::now_utc();
        let old = generate_pem(
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap()
        .into_identity()
        .unwrap();
        assert!(matches!(
            verify_certificate(&old.cert, now.unix_timestamp()),
            Err(CertError::Expired { .. })
        ));
        let young = generate_pem(
            now + time::Duration::days(1),
            now + time::Duration::days(10),
        )
        .unwrap()
        .into_identity()
        .unwrap();
        assert!(matches!(
            verify_certificate(&young.cert, now.unix_timestamp()),
            Err(CertError::NotYetValid { .. })
        ));
    }

    #[test]
    fn a_tampered_certificate_fails_its_signature() {
        let id = Identity::generate().unwrap();
        let mut der = id.cert.to_vec();
        // Flip a bit in the last byte: inside the signature value.
        let last = der.len() - 1;
        der[last] ^= 1;
        let got = verify_certificate(&der, now_unix());
        assert!(
            matches!(
                got,
                Err(CertError::BadSignature) | Err(CertError::Malformed(_))
            ),
            "{got:?}"
        );
    }

    #[test]
    fn peer_id_rejects_what_is_not_64_lowercase_hex() {
        for bad in ["", "ab", &"A".repeat(64), &"g".repeat(64), &"a".repeat(65)] {
            assert!(bad.parse::<PeerId>().is_err(), "{bad}");
        }
        assert!("0".repeat(64).parse::<PeerId>().is_ok());
    }

    proptest! {
        #[test]
        fn peer_id_display_parse_round_trips(bytes in any::<[u8; 32]>()) {
            let id = PeerId::from_bytes(bytes);
            let text = id.to_string();
            prop_assert_eq!(text.len(), 64);
            prop_assert_eq!(text.parse::<PeerId>().unwrap(), id);
        }

        #[test]
        fn verify_certificate_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = verify_certificate(&bytes, 0);
        }
    }
}
