//! Concurrency: the actors that own connections, and the handle to them.
//!
//! | file | owns |
//! |---|---|
//! | `handle.rs` | [`Pool`], the public handle |
//! | `supervisor.rs` | the supervisor: peers in and out, restarts |
//! | `peer.rs` | one `PeerActor` per peer: carries out its `PeerCore`, publishes |
//! | `messages.rs` | every actor message |
//! | `admission.rs` | inbound handshakes and hellos |
//! | `shared.rs` | what a peer actor publishes (its table and counters) |
//! | `endpoints.rs` | what openers learn of each endpoint: latency, failure runs |
//! | `discovery.rs` | resolving a peer's host name into endpoints |
//! | `routes.rs` | opening a stream from the published table (no actor hop) |
//! | `inbound.rs` | the loop serving the streams a peer opens |
//! | `conn.rs` | per-connection stream counts and waits |
//! | `streams.rs` | pooled and incoming streams and their guards |
//! | `status.rs` | the public status types of `/peers` |
//! | `telemetry.rs` | traffic totals, RTT and the per-second gauges |
//! | `registry.rs` | peers by id and name; the TLS inbound policy |
//! | `context.rs` | what every actor of a node shares |
//! | `error.rs` | `PoolError` |
//!
//! Dependencies run one way: `handle` → `supervisor` → `peer` → the rest;
//! nothing imports `handle`, and `peer` knows the supervisor only through
//! message recipients.

mod admission;
mod conn;
mod context;
mod discovery;
mod endpoints;
mod error;
mod handle;
mod inbound;
#[cfg(feature = "test-util")]
mod inspect;
mod messages;
mod peer;
mod registry;
mod routes;
mod shared;
mod status;
mod streams;
mod supervisor;
mod telemetry;

pub use error::PoolError;
pub use handle::Pool;
#[cfg(feature = "test-util")]
pub use inspect::CoreView;
pub use status::{ConnectionInfo, CoolingSource, EndpointInfo, PeerStatus};
pub use streams::{
    IncomingStream, PooledRecv, PooledSend, PooledStream, StreamHandler, StreamOutcome,
};
