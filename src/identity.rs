//! Node identity: a self-signed certificate whose public key *is* the identity.
//!
//! Peers pin each other by [`PeerId`], the SHA-256 of the certificate's
//! SubjectPublicKeyInfo, as libp2p does. No CA is involved: the certificate is
//! only a container for the key, so its names do not matter, but its validity
//! period and self-signature are still checked (see [`verify_certificate`]).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

/// File name of the certificate written by [`keygen`].
pub const CERT_FILE: &str = "node.crt";
/// File name of the private key written by [`keygen`].
pub const KEY_FILE: &str = "node.key";
/// Validity of a certificate made by `peerpool keygen` when none is asked for.
pub const DEFAULT_VALID_DAYS: u32 = 3650;

/// The identity of a node: lowercase hex SHA-256 of its certificate's SPKI.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// The id of a DER-encoded SubjectPublicKeyInfo.
    pub fn from_spki(spki_der: &[u8]) -> PeerId {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        PeerId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 32]) -> PeerId {
        PeerId(bytes)
    }

    /// The first 12 hex characters: enough to tell peers apart in logs.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(12);
        s
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

/// Why a string is not a [`PeerId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "must be 64 lowercase hex characters (the output of `peerpool id --cert FILE`), got {got:?}"
)]
pub struct ParsePeerIdError {
    pub got: String,
}

impl FromStr for PeerId {
    type Err = ParsePeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePeerIdError {
            got: s.chars().take(80).collect(),
        };
        let raw = s.as_bytes();
        if raw.len() != 64 {
            return Err(err());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut bytes = [0u8; 32];
        for (i, pair) in raw.chunks_exact(2).enumerate() {
            let hi = nibble(pair[0]).ok_or_else(err)?;
            let lo = nibble(pair[1]).ok_or_else(err)?;
            bytes[i] = (hi << 4) | lo;
        }
        Ok(PeerId(bytes))
    }
}

impl serde::Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Everything that can go wrong loading, checking or creating an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; pass --force to overwrite it")]
    Exists { path: PathBuf },
    #[error("{path}: no PEM certificate found (expected a \"-----BEGIN CERTIFICATE-----\" block)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found (expected a \"-----BEGIN PRIVATE KEY-----\" PKCS#8 block)")]
    NoKey { path: PathBuf },
    #[error("{path}: {reason}")]
    BadCertificate { path: PathBuf, reason: CertError },
    #[error("{path}: unusable private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{key} does not belong to {cert}: their public keys differ (regenerate both with `peerpool keygen`)")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot generate a key pair or certificate: {0}")]
    Generate(String),
}

impl IdentityError {
    fn read(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
        move |source| IdentityError::Read {
            path: path.to_owned(),
            source,
        }
    }

    fn write(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
        move |source| IdentityError::Write {
            path: path.to_owned(),
            source,
        }
    }
}

/// Why a certificate is not acceptable as a peer identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("malformed certificate: {0}")]
    Malformed(String),
    #[error("certificate expired at unix time {not_after}")]
    Expired { not_after: i64 },
    #[error("certificate not valid before unix time {not_before}")]
    NotYetValid { not_before: i64 },
    #[error("certificate signature does not verify with its own key")]
    BadSignature,
}

/// Checks a peer certificate the way a pinned-key identity needs: it parses,
/// it is valid at `now_unix`, it is signed by its own key. Returns its id.
pub fn verify_certificate(der: &[u8], now_unix: i64) -> Result<PeerId, CertError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::Malformed(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    let validity = cert.validity();
    if now_unix < validity.not_before.timestamp() {
        return Err(CertError::NotYetValid {
            not_before: validity.not_before.timestamp(),
        });
    }
    if now_unix > validity.not_after.timestamp() {
        return Err(CertError::Expired {
            not_after: validity.not_after.timestamp(),
        });
    }
    cert.verify_signature(None)
        .map_err(|_| CertError::BadSignature)?;
    Ok(PeerId::from_spki(cert.public_key().raw))
}

/// The id of a certificate without judging it (for `peerpool id`).
pub fn peer_id_of_cert(der: &[u8]) -> Result<PeerId, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertError::Malformed(e.to_string()))?;
    Ok(PeerId::from_spki(cert.public_key().raw))
}

fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// A node's certificate, private key and the id they define.
#[derive(Debug)]
pub struct Identity {
    pub id: PeerId,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            id: self.id,
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads and checks a PEM certificate and PKCS#8 key: the certificate must
    /// be currently valid and self-signed, and the key must be its key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, IdentityError> {
        let cert_pem = fs::read(cert_path).map_err(IdentityError::read(cert_path))?;
        let key_pem = fs::read(key_path).map_err(IdentityError::read(key_path))?;
        Identity::from_pem(&cert_pem, cert_path, &key_pem, key_path)
    }

    /// Like [`Identity::load`] from bytes already read; the paths only name
    /// the sources in error messages.
    pub fn from_pem(
        cert_pem: &[u8],
        cert_path: &Path,
        key_pem: &[u8],
        key_path: &Path,
    ) -> Result<Identity, IdentityError> {
        let cert =
            CertificateDer::from_pem_slice(cert_pem).map_err(|_| IdentityError::NoCertificate {
                path: cert_path.to_owned(),
            })?;
        let id = verify_certificate(&cert, now_unix()).map_err(|reason| {
            IdentityError::BadCertificate {
                path: cert_path.to_owned(),
                reason,
            }
        })?;
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
        Ok(Identity { id, cert, key })
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
            cert,
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

/// What `peerpool keygen` wrote.
#[derive(Debug)]
pub struct KeygenOutput {
    pub id: PeerId,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Creates `dir` if needed and writes `node.key` (mode 0600) and `node.crt`.
/// Refuses to touch existing files unless `force`.
pub fn keygen(dir: &Path, force: bool, valid_days: u32) -> Result<KeygenOutput, IdentityError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if !force {
        for path in [&key_path, &cert_path] {
            if path.symlink_metadata().is_ok() {
                return Err(IdentityError::Exists { path: path.clone() });
            }
        }
    }
    fs::create_dir_all(dir).map_err(IdentityError::write(dir))?;
    let now = OffsetDateTime::now_utc();
    let made = generate_pem(
        now - time::Duration::days(1),
        now + time::Duration::days(valid_days.into()),
    )?;
    write_private(&key_path, made.key_pem.as_bytes(), force)?;
    write_file(&cert_path, made.cert_pem.as_bytes(), force, 0o644)?;
    Ok(KeygenOutput {
        id: made.id,
        cert_path,
        key_path,
    })
}

fn write_private(path: &Path, data: &[u8], force: bool) -> Result<(), IdentityError> {
    write_file(path, data, force, 0o600)
}

fn write_file(path: &Path, data: &[u8], force: bool, mode: u32) -> Result<(), IdentityError> {
    let mut opts = OpenOptions::new();
    opts.write(true).mode(mode);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut file = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            IdentityError::Exists {
                path: path.to_owned(),
            }
        } else {
            IdentityError::Write {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    // `mode` only applies to new files; an overwritten key must not keep a
    // looser mode it had before.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(IdentityError::write(path))?;
    file.write_all(data).map_err(IdentityError::write(path))?;
    file.sync_all().map_err(IdentityError::write(path))
}

/// Reads the id from a PEM certificate file (for `peerpool id`).
pub fn id_of_cert_file(path: &Path) -> Result<PeerId, IdentityError> {
    let pem = fs::read(path).map_err(IdentityError::read(path))?;
    let cert = CertificateDer::from_pem_slice(&pem).map_err(|_| IdentityError::NoCertificate {
        path: path.to_owned(),
    })?;
    peer_id_of_cert(&cert).map_err(|reason| IdentityError::BadCertificate {
        path: path.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
