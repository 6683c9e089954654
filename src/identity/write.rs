//! Writing key and certificate files: private ones mode 0600, never over
//! an existing file unless asked to.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::id::IdentityError;

/// File name of the certificate written by `peerpool keygen`.
pub const CERT_FILE: &str = "node.crt";
/// File name of the private key written by `peerpool keygen`.
pub const KEY_FILE: &str = "node.key";
/// Validity of a certificate made by `peerpool keygen` when none is asked for.
pub const DEFAULT_VALID_DAYS: u32 = 3650;

/// Fails with `Exists` if any of `paths` exists (a symlink counts, even a
/// dangling one), unless `force`.
pub(crate) fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), IdentityError> {
    if force {
        return Ok(());
    }
    for path in paths {
        if path.symlink_metadata().is_ok() {
            return Err(IdentityError::Exists {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

pub(crate) fn write_private(path: &Path, data: &[u8], force: bool) -> Result<(), IdentityError> {
    write_file(path, data, force, 0o600)
}

/// Writes a new file of `mode`. It never follows a symlink: with `force`
/// an existing entry (a file, or a link, dangling or not) is unlinked first,
/// and the file is always created anew (`O_EXCL`), so a link planted in
/// between fails the write instead of redirecting it.
pub(crate) fn write_file(
    path: &Path,
    data: &[u8],
    force: bool,
    mode: u32,
) -> Result<(), IdentityError> {
    if force && path.symlink_metadata().is_ok() {
        fs::remove_file(path).map_err(IdentityError::write(path))?;
    }
    let mut opts = OpenOptions::new();
    opts.write(true).mode(mode).create_new(true);
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
    // The umask may have narrowed `mode`; make it exact.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(IdentityError::write(path))?;
    file.write_all(data).map_err(IdentityError::write(path))?;
    file.sync_all().map_err(IdentityError::write(path))
}
