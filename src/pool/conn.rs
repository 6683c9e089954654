//! One connection as the pure core knows it: who dialled it, how it ranks
//! in the tie-break, which peer process it reaches, its RTT estimate, the
//! slot it holds and whether it is being retired. `H` is the caller's
//! handle, stored and never looked into.

use serde::{Deserialize, Serialize};

use super::balance::PeakEwma;
use super::limit::ConnRank;
use super::time::Time;

/// The pool's number for a connection, unique per node.
pub type ConnKey = u64;

/// Who dialled a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// This node dialled it.
    Outbound,
    /// The peer dialled it.
    Inbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// One connection of the peer, as the core knows it.
#[derive(Debug)]
pub(crate) struct Conn<H> {
    pub(crate) handle: H,
    pub(crate) direction: Direction,
    pub(crate) rank: ConnRank,
    /// The peer process this connection reaches (from the hello).
    pub(crate) instance: u64,
    /// Peak-EWMA of its RTT, for the `latency` strategy.
    pub(crate) ewma: PeakEwma,
    /// The slot it holds; `None` while it is over the target (it waits to
    /// be retired, or for a slot to free up).
    pub(super) slot: Option<usize>,
    /// When it took its slot: the start of "stayed up for reset_after".
    pub(super) bound_at: Time,
    pub(super) retiring: bool,
    /// When it has lived long enough (`pool.max_connection_age`, jittered
    /// by the caller); `None` for no limit or a connection the peer dialled.
    pub(crate) expires_at: Option<Time>,
}

impl<H> Conn<H> {
    pub(crate) fn new(
        handle: H,
        direction: Direction,
        rank: ConnRank,
        instance: u64,
        ewma: PeakEwma,
    ) -> Conn<H> {
        Conn {
            handle,
            direction,
            rank,
            instance,
            ewma,
            slot: None,
            bound_at: Time::ZERO,
            retiring: false,
            expires_at: None,
        }
    }

    /// The same connection, due for replacement at `at`.
    pub(crate) fn expiring_at(mut self, at: Option<Time>) -> Conn<H> {
        self.expires_at = at;
        self
    }

    /// Takes new streams: it is not being retired.
    pub(crate) fn usable(&self) -> bool {
        !self.retiring
    }
}

/// How far a connection's lifetime may stray from `pool.max_connection_age`
/// either way, so connections opened together are not replaced together.
pub(crate) const AGE_JITTER: f64 = 0.1;

/// When a connection opened at `now` is due for replacement: `age` ± 10 %,
/// uniformly; `None` when `age` is zero (no limit).
pub(crate) fn expiry<R: rand::Rng + ?Sized>(
    now: Time,
    age: std::time::Duration,
    rng: &mut R,
) -> Option<Time> {
    (!age.is_zero())
        .then(|| now + age.mul_f64(rng.random_range(1.0 - AGE_JITTER..=1.0 + AGE_JITTER)))
}

/// A connection the core let go of.
#[derive(Debug)]
pub(crate) struct Closed<H> {
    pub(crate) handle: H,
    /// The close counted against its slot's backoff.
    pub(crate) failure: bool,
}
