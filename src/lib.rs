//! peerpool: a sidecar that keeps a pool of QUIC connections to each of its
//! peers and hands out streams over them.
//!
//! # Layout
//!
//! - [`config`]: the TOML schema, its defaults and its validation.
//! - [`identity`]: node keys, certificates, the [`PeerId`] peers pin, and
//!   the CA whose certificates name replicas (`peerpool://NAME`).
//! - [`pool`]: the pure core: backoff, balancing, the per-peer limit and
//!   tie-break, and `PeerCore`, the one record of a peer (its endpoints,
//!   their connections, dial plans and ejections, and its drain) its state
//!   is derived from. No IO, no clock, no global rng.
//! - [`transport`]: QUIC and TLS: the endpoint, pinned-id verifiers, the
//!   application hello and the control stream it becomes, close codes.
//! - `actors` (private): the supervisor, one `PeerActor` per peer carrying
//!   out its `PeerCore`, the table each publishes for stream opens, and
//!   [`Pool`], the handle the rest of the program (and library users) hold.
//! - [`sidecar`]: forwarding local connections (TCP or Unix sockets) over
//!   pooled streams (with a safe retry),
//!   services, the admin HTTP API, hot reload, and the node that runs them
//!   with a graceful drain.
//! - [`metrics`]: every metric name, help text, label set and bucket set.
//!
//! Which may use which: `pool` uses nothing of the others; `transport` uses
//! `config`, `identity` and `metrics`; `actors` uses all of those; `sidecar`
//! uses the [`Pool`] handle. `ARCHITECTURE.md` shows how a stream open and
//! a dial flow through them. The command line, the demo and the load
//! generator are not part of the library: they live in the `peerpool-cli`
//! and `peerpool-testkit` crates of this workspace.
//!
//! The `test-util` feature adds test hooks (`Pool::inject_actor_panic`,
//! `Pool::inspect_core`); nothing else depends on it. The `fuzzing` feature
//! adds `fuzz`, the entry points of the `cargo fuzz` targets in `fuzz/`.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod actors;
pub mod config;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub mod identity;
pub mod metrics;
pub mod pool;
pub mod sidecar;
pub mod transport;

#[cfg(feature = "test-util")]
pub use actors::CoreView;
pub use actors::{
    ConnectionInfo, CoolingSource, EndpointInfo, IncomingStream, PeerStatus, Pool, PoolError,
    PooledRecv, PooledSend, PooledStream, StreamHandler, StreamOutcome,
};
pub use identity::PeerId;
pub use pool::{Direction, EndpointState, PeerState, Strategy};
