//! Concurrency: the actors that own connections, and the handle to them.
//!
//! - [`Pool`] (handle.rs): the public, cheap-to-clone handle.
//! - `Supervisor` (supervisor.rs): one per node; peers in and out, restarts.
//! - `PeerActor` (peer.rs): one per peer; dials, redials, retires, drains.
//! - shared.rs: what a peer actor publishes (routing table, status), read
//!   without a message on the stream-open hot path.

mod context;
mod error;
mod handle;
mod peer;
mod shared;
mod supervisor;

pub use context::{IncomingStream, StreamHandler};
pub use error::PoolError;
pub use handle::Pool;
pub use shared::{ConnectionInfo, Direction, PeerStatus, PooledRecv, PooledSend, PooledStream};
