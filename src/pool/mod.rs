//! The pure core of the pool: no IO, no async, no clock, no global rng.
//!
//! Time is passed in as a [`Time`] (a `Duration` since an epoch the caller
//! picks) and randomness as an `&mut impl Rng`, so that every rule here is
//! tested deterministically, the way quinn-proto separates protocol logic from
//! quinn's IO.
//!
//! - [`backoff`]: the delay before each retry.
//! - [`balance`]: which connection carries the next stream.
//! - [`dial`]: which connection slots to dial, and when.
//! - [`limit`]: the per-peer limit and the simultaneous-dial tie-break.
//! - [`peer_state`]: connecting / healthy / degraded / unreachable / draining.

pub mod backoff;
pub mod balance;
pub mod dial;
pub mod limit;
pub mod peer_state;

/// A point in time, as the time since an epoch chosen by the caller.
pub type Time = std::time::Duration;

pub use backoff::RetryPolicy;
pub use balance::{Balancer, Load, PeakEwma, Strategy};
pub use dial::{AfterFailure, ConnKey, DialPlanner};
pub use limit::{admit, excess, Admission, ConnRank};
pub use peer_state::{PeerEvent, PeerState, PeerStateMachine};
