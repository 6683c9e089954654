//! Peer ids, and the checks a presented certificate must pass: its id is
//! the SHA-256 of its SubjectPublicKeyInfo; a self-signed one must be
//! within its validity period and signed by its own key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use time::OffsetDateTime;

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
    pub(crate) fn read(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
        move |source| IdentityError::Read {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn write(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
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
    #[error("certificate does not chain to a trusted CA: {0}")]
    Untrusted(String),
}

/// A certificate that passed the checks of a peer identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub id: PeerId,
    /// The name it carries (URI SAN `peerpool://NAME`) when a trusted CA
    /// vouches for it; `None` for a self-signed certificate.
    pub name: Option<String>,
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

pub(crate) fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}
