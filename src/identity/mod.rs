//! Node identity: a certificate whose public key *is* the identity.
//!
//! Peers pin each other by [`PeerId`], the SHA-256 of the certificate's
//! SubjectPublicKeyInfo, as libp2p does; such a certificate is self-signed,
//! a container for the key whose validity period and self-signature are
//! still checked (see [`verify_certificate`]). Replicas of a service may
//! instead share a *name*: a certificate issued by a CA the node trusts,
//! carrying the URI SAN `peerpool://NAME` (see [`ca`]).
//!
//! - `id`: peer ids and the checks of a presented certificate;
//! - `node`: a node's own identity;
//! - [`ca`]: trusted CAs, `peerpool ca init` and `ca issue`, names;
//! - `files`, `write`: `peerpool keygen`, reading ids back, writing keys.

pub mod ca;
mod files;
mod id;
mod node;
mod write;

pub use files::{cert_file_info, id_of_cert_file, keygen, CertFileInfo, KeygenOutput};
pub(crate) use id::now_unix;
pub use id::{
    peer_id_of_cert, verify_certificate, CertError, IdentityError, ParsePeerIdError, PeerId,
    Verified,
};
pub use node::{generate_pem, GeneratedPem, Identity};
pub use write::{CERT_FILE, DEFAULT_VALID_DAYS, KEY_FILE};
