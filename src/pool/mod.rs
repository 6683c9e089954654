//! The pure core of the pool: no IO, no async, no clock, no global rng.
//!
//! Time is passed in as a [`Time`] (a `Duration` since an epoch the caller
//! picks) and randomness as an `&mut impl Rng`, so that every rule here is
//! tested deterministically, the way quinn-proto separates protocol logic from
//! quinn's IO.
//!
//! - [`time`]: the clock reading the core is handed.
//! - [`backoff`]: the delay before each retry.
//! - [`balance`]: which connection carries the next stream.
//! - `conn`: one connection as the core knows it.
//! - `endpoint`: one endpoint of a peer: its connections, slots, ejection.
//! - `peer`: `PeerCore`, a peer's connections, dial plan and drain: the one
//!   record everything else about a peer is derived from.
//! - [`gate`]: what an inbound handshake may cost before it authenticates
//!   (ignore, refuse, Retry or accept; cooling off per source).
//! - `limit`: the per-peer limit and the simultaneous-dial tie-break.
//! - [`state`]: connecting / healthy / degraded / unreachable / draining, as
//!   a function of the core's facts.

pub mod backoff;
pub mod balance;
pub(crate) mod conn;
pub(crate) mod endpoint;
pub mod gate;
pub(crate) mod limit;
pub(crate) mod peer;
mod slot;
pub mod state;
pub mod time;

pub use backoff::RetryPolicy;
pub use balance::{pick_endpoint, Balancer, EndpointLoad, Load, PeakEwma, Strategy};
pub use conn::{ConnKey, Direction};
pub use state::{EndpointState, PeerState};
pub use time::Time;
