//! peerpool: a sidecar that keeps a pool of QUIC connections to each of its
//! peers and hands out streams over them.
//!
//! # Layout
//!
//! - [`config`]: the TOML schema, its defaults and its validation.
//! - [`identity`]: node keys, certificates and the [`identity::PeerId`] peers pin.
//! - [`pool`]: the pure core (backoff, balancing, dial plan, limit, peer
//!   states). No IO, no clock, no global rng.
//! - [`transport`]: QUIC and TLS: the endpoint, pinned-id verifiers, the
//!   application hello and the control stream it becomes, close codes.
//! - [`actors`]: the supervisor and one `PeerActor` per peer, and [`Pool`],
//!   the handle the rest of the program (and library users) hold.
//! - [`sidecar`]: TCP forwarding over pooled streams, services, the admin
//!   HTTP API, and the node that runs them with a graceful drain.
//! - [`metrics`]: every metric name, help text and bucket set.
//! - [`tools`]: `peerpool demo` and `peerpool load`.

pub mod actors;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod pool;
pub mod sidecar;
pub mod tools;
pub mod transport;

pub use actors::{
    ConnectionInfo, Direction, IncomingStream, PeerStatus, Pool, PoolError, PooledStream,
    StreamHandler,
};
pub use identity::PeerId;
