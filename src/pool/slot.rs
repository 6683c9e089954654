//! The backoff state of one connection slot of an endpoint: whether a dial
//! is under way, how many attempts it used, and when it may dial next.

use std::time::Duration;

use super::time::Time;

/// How a failed attempt left its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// The dial goes on: the next attempt waits this long.
    Retry(Duration),
    /// The dial has used all its attempts: probing in this long.
    Exhausted(Duration),
}

/// The backoff state of one connection slot. Whether the slot holds a
/// connection is not stored here: a connection names its slot.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Slot {
    pub(super) dialing: bool,
    /// Consecutive failures: the `k` of the next backoff.
    pub(super) failures: u32,
    /// Attempts in the current dial.
    pub(super) attempts: u32,
    pub(super) exhausted: bool,
    /// When this slot may dial next; `None` waits for the endpoint to answer.
    pub(super) next_at: Option<Time>,
    /// The backoff that set `next_at`, for the backoff gauge.
    pub(super) delay: Duration,
}

impl Slot {
    pub(super) fn parked() -> Slot {
        Slot {
            dialing: false,
            failures: 0,
            attempts: 0,
            exhausted: false,
            next_at: None,
            delay: Duration::ZERO,
        }
    }

    /// The slot got a connection: its dial is over.
    pub(super) fn filled(&mut self) {
        self.dialing = false;
        self.attempts = 0;
        self.exhausted = false;
        self.next_at = None;
        self.delay = Duration::ZERO;
    }

    /// A dial with attempts left is under way or scheduled.
    pub(super) fn pending(&self) -> bool {
        !self.exhausted && (self.dialing || self.next_at.is_some())
    }
}
