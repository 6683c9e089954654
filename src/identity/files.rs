//! `peerpool keygen` and reading ids back from certificate files.

use std::fs;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::ca::name_of_cert;
use super::ca::validity;
use super::id::{peer_id_of_cert, IdentityError, PeerId};
use super::node::generate_pem;
use super::write::{refuse_existing, write_file, write_private, CERT_FILE, KEY_FILE};

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
    refuse_existing(&[&key_path, &cert_path], force)?;
    let (not_before, not_after) = validity(valid_days)?;
    fs::create_dir_all(dir).map_err(IdentityError::write(dir))?;
    let made = generate_pem(not_before, not_after)?;
    write_private(&key_path, made.key_pem.as_bytes(), force)?;
    write_file(&cert_path, made.cert_pem.as_bytes(), force, 0o644)?;
    Ok(KeygenOutput {
        id: made.id,
        cert_path,
        key_path,
    })
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

/// What a certificate file says about itself (for `peerpool id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFileInfo {
    pub id: PeerId,
    /// The URI SAN `peerpool://NAME`, when the certificate carries one
    /// (whether a trusted CA vouches for it is not checked here).
    pub name: Option<String>,
}

/// The id and name of the first certificate of a PEM file.
pub fn cert_file_info(path: &Path) -> Result<CertFileInfo, IdentityError> {
    let pem = fs::read(path).map_err(IdentityError::read(path))?;
    let cert = CertificateDer::from_pem_slice(&pem).map_err(|_| IdentityError::NoCertificate {
        path: path.to_owned(),
    })?;
    let id = peer_id_of_cert(&cert).map_err(|reason| IdentityError::BadCertificate {
        path: path.to_owned(),
        reason,
    })?;
    Ok(CertFileInfo {
        id,
        name: name_of_cert(&cert),
    })
}
