//! One endpoint of a peer (one address it answers on, or one it dialled
//! from): its connections, its N slots with their backoff, whether it is
//! still in the peer's address set, whether it announced a drain, and its
//! ejection. The peer's [`super::PeerCore`] holds one per endpoint.
//!
//! Dial rules, per endpoint (README "Retries and states" explains them):
//! - A slot dials only while `held + dialling < N` (connections being
//!   retired still count: they hold their slot until they close).
//! - A dial is the first attempt plus `max_retries` retries; retry `k` waits
//!   the backoff of [`RetryPolicy::delay`] for the slot's `k`-th consecutive
//!   failure. When a dial runs out of attempts the slot probes once every
//!   `max_delay` (jittered) until it succeeds.
//! - While the endpoint has no connection only one slot dials (the lead);
//!   the others wait for it to answer, so a dead endpoint sees one dial
//!   sequence, not N. When any connection comes up, waiting and probing
//!   slots dial at once.
//! - A connection that closes counts as a failure of its slot, so an
//!   endpoint that keeps dropping connections is redialled with growing
//!   delays; one that stayed up for `reset_after` first resets its slot's
//!   failure count. Closing a connection this node retired is no failure.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;

use super::backoff::RetryPolicy;
use super::conn::{Closed, Conn, ConnKey};
use super::limit::{self, Admission, ConnRank};
pub(crate) use super::slot::AfterFailure;
use super::slot::Slot;
use super::state::EndpointState;
use super::time::Time;

/// Where an endpoint came from, which decides whether it is dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// In the peer's address set (configured or resolved): dialled.
    Listed,
    /// Was listed, is no longer: its connections drain, it is not dialled.
    Vanished,
    /// Known only from connections it made to this node: never dialled.
    Inbound,
}

/// An endpoint's ejection by passive outlier detection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ejection {
    /// Ejected until then; `None` when taking traffic.
    pub(crate) until: Option<Time>,
    /// Times ejected so far (the next ejection lasts this + 1 times the base).
    pub(crate) times: u32,
}

/// One endpoint: `H` is the caller's handle per connection, `E` per
/// endpoint; the core stores them and never looks inside.
#[derive(Debug)]
pub(crate) struct Endpoint<H, E> {
    pub(crate) handle: E,
    pub(crate) origin: Origin,
    /// The peer process said it drains: no new streams, no dials until its
    /// connections are gone.
    pub(crate) announced_drain: bool,
    pub(crate) ejection: Ejection,
    policy: RetryPolicy,
    reset_after: Duration,
    slots: Vec<Slot>,
    conns: BTreeMap<ConnKey, Conn<H>>,
    total_attempts: u64,
}

impl<H, E> Endpoint<H, E> {
    /// An endpoint of N slots; a listed one dials its lead slot at `now`.
    pub(crate) fn new(
        handle: E,
        origin: Origin,
        policy: RetryPolicy,
        reset_after: Duration,
        target: usize,
        now: Time,
    ) -> Endpoint<H, E> {
        let mut slots = vec![Slot::parked(); target.max(1)];
        slots[0].next_at = Some(now);
        Endpoint {
            handle,
            origin,
            announced_drain: false,
            ejection: Ejection::default(),
            policy,
            reset_after,
            slots,
            conns: BTreeMap::new(),
            total_attempts: 0,
        }
    }

    /// N.
    pub(crate) fn target(&self) -> usize {
        self.slots.len()
    }

    /// Dialled by this node: listed, and not draining by its own word.
    pub(crate) fn dialable(&self) -> bool {
        self.origin == Origin::Listed && !self.announced_drain
    }

    /// Takes new streams at all (its connections may): not vanished, not
    /// drained by the peer.
    pub(crate) fn routable(&self) -> bool {
        self.origin != Origin::Vanished && !self.announced_drain
    }

    pub(crate) fn ejected(&self) -> bool {
        self.ejection.until.is_some()
    }

    /// Every connection held, usable or being retired.
    pub(crate) fn held(&self) -> usize {
        self.conns.len()
    }

    /// Connections that take new streams.
    pub(crate) fn usable(&self) -> usize {
        if !self.routable() {
            return 0;
        }
        self.conns.values().filter(|c| c.usable()).count()
    }

    pub(crate) fn conns(&self) -> impl Iterator<Item = (ConnKey, &Conn<H>)> {
        self.conns.iter().map(|(k, c)| (*k, c))
    }

    pub(crate) fn conns_mut(&mut self) -> impl Iterator<Item = (ConnKey, &mut Conn<H>)> {
        self.conns.iter_mut().map(|(k, c)| (*k, c))
    }

    pub(crate) fn has(&self, key: ConnKey) -> bool {
        self.conns.contains_key(&key)
    }

    /// Attempts started since the endpoint was made.
    pub(crate) fn total_attempts(&self) -> u64 {
        self.total_attempts
    }

    /// No connection, a dial ran out of attempts and no dial with attempts
    /// left is under way or scheduled.
    pub(crate) fn unreachable(&self) -> bool {
        self.conns.is_empty()
            && self.slots.iter().any(|s| s.exhausted)
            && !self.slots.iter().any(Slot::pending)
    }

    /// No connection, and a dial ran out of attempts (an explicit dial
    /// then starts afresh).
    pub(crate) fn exhausted(&self) -> bool {
        self.conns.is_empty() && self.slots.iter().any(|s| s.exhausted)
    }

    pub(crate) fn state(&self) -> EndpointState {
        let usable = self.usable();
        if !self.routable() {
            EndpointState::Draining
        } else if self.ejected() {
            EndpointState::Ejected
        } else if usable >= self.target() {
            EndpointState::Healthy
        } else if usable > 0 {
            EndpointState::Degraded
        } else if self.unreachable() {
            EndpointState::Unreachable
        } else {
            EndpointState::Connecting
        }
    }

    fn occupied(&self, slot: usize) -> bool {
        self.conns.values().any(|c| c.slot == Some(slot))
    }

    fn idle(&self, slot: usize) -> bool {
        !self.slots[slot].dialing && !self.occupied(slot)
    }

    pub(crate) fn dialing(&self) -> usize {
        self.slots.iter().filter(|s| s.dialing).count()
    }

    /// The earliest time an idle slot may dial, if any is scheduled.
    pub(crate) fn next_dial(&self) -> Option<Time> {
        if !self.dialable() || self.held() >= self.target() {
            return None;
        }
        (0..self.slots.len())
            .filter(|&i| self.idle(i))
            .filter_map(|i| self.slots[i].next_at)
            .min()
    }

    /// The backoff now being waited out, zero when nothing waits.
    pub(crate) fn current_backoff(&self) -> Duration {
        if self.next_dial().is_none() {
            return Duration::ZERO;
        }
        (0..self.slots.len())
            .filter(|&i| self.idle(i) && self.slots[i].next_at.is_some())
            .map(|i| self.slots[i].delay)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Nothing is dialling and nothing will soon: every free slot is either
    /// waiting for the endpoint to answer or probing after running out of
    /// attempts.
    pub(crate) fn settled(&self) -> bool {
        (0..self.slots.len()).all(|i| {
            let s = &self.slots[i];
            self.occupied(i) || (!s.dialing && (s.exhausted || s.next_at.is_none()))
        })
    }

    /// Starts every dial that is due at `now`; returns their slot numbers.
    pub(crate) fn due(&mut self, now: Time) -> Vec<usize> {
        let mut started = Vec::new();
        if !self.dialable() {
            return started;
        }
        for i in 0..self.slots.len() {
            let (held, dialing) = (self.held(), self.dialing());
            if held + dialing >= self.target() || (held == 0 && dialing > 0) {
                break;
            }
            if self.idle(i) && self.slots[i].next_at.is_some_and(|t| t <= now) {
                let slot = &mut self.slots[i];
                slot.dialing = true;
                slot.attempts = slot.attempts.saturating_add(1);
                self.total_attempts += 1;
                started.push(i);
            }
        }
        started
    }

    /// The dial of `slot` produced connection `key`.
    pub(crate) fn dial_succeeded(
        &mut self,
        slot: usize,
        key: ConnKey,
        mut conn: Conn<H>,
        now: Time,
    ) {
        let was_unanswered = self.conns.is_empty();
        if let Some(s) = self.slots.get_mut(slot) {
            s.filled();
            conn.slot = Some(slot);
        }
        conn.bound_at = now;
        self.conns.insert(key, conn);
        self.answered(was_unanswered, now);
    }

    /// The dial of `slot` failed at `now`.
    pub(crate) fn dial_failed<R: Rng + ?Sized>(
        &mut self,
        slot: usize,
        now: Time,
        rng: &mut R,
    ) -> AfterFailure {
        let attempts_per_dial = self.policy.attempts_per_dial();
        let Some(s) = self.slots.get_mut(slot) else {
            return AfterFailure::Exhausted(Duration::ZERO);
        };
        s.dialing = false;
        s.failures = s.failures.saturating_add(1);
        let outcome = if s.exhausted || s.attempts >= attempts_per_dial {
            s.exhausted = true;
            AfterFailure::Exhausted(self.policy.probe_delay(rng))
        } else {
            AfterFailure::Retry(self.policy.delay(s.failures, rng))
        };
        let delay = match outcome {
            AfterFailure::Retry(d) | AfterFailure::Exhausted(d) => d,
        };
        s.next_at = Some(now + delay);
        s.delay = delay;
        outcome
    }

    /// A dial finished after its result stopped mattering (a drain): its
    /// connection is not kept and the slot stops dialling.
    pub(crate) fn dial_abandoned(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.dialing = false;
        }
    }

    /// What to do with an inbound connection of this rank (see
    /// [`limit::admit`]): usable connections are ranked, retiring ones are
    /// already on their way out.
    pub(crate) fn admission(&self, rank: ConnRank) -> Admission {
        limit::admit(&self.usable_ranks().1, rank, self.target())
    }

    /// An inbound connection came up. Returns whether a slot took it (an
    /// unslotted connection is over the target and awaits retirement).
    pub(crate) fn add_inbound(&mut self, key: ConnKey, mut conn: Conn<H>, now: Time) -> bool {
        let was_unanswered = self.conns.is_empty();
        // The free slot whose own dial is furthest off (a parked one first):
        // the dials scheduled soonest keep their schedule.
        let free = (0..self.slots.len())
            .filter(|&i| self.idle(i))
            .min_by_key(|&i| std::cmp::Reverse(self.slots[i].next_at.unwrap_or(Time::MAX)));
        if let Some(i) = free {
            self.slots[i].filled();
            conn.slot = Some(i);
        }
        conn.bound_at = now;
        self.conns.insert(key, conn);
        self.answered(was_unanswered, now);
        free.is_some()
    }

    /// The usable connections beyond N, worst-ranked first (see
    /// [`limit::excess`]).
    pub(crate) fn excess(&self) -> Vec<ConnKey> {
        let (keys, ranks) = self.usable_ranks();
        limit::excess(&ranks, self.target())
            .into_iter()
            .map(|i| keys[i])
            .collect()
    }

    /// The connection to replace for its age now, if any: the longest
    /// expired usable one, but only while this endpoint holds all N usable
    /// and retires nothing else, so replacing never takes it below N - 1.
    pub(crate) fn aged(&self, now: Time) -> Option<ConnKey> {
        if self.conns.values().any(|c| c.retiring) || self.usable() < self.target() {
            return None;
        }
        let expired =
            |(k, c): (&ConnKey, &Conn<H>)| Some((c.expires_at.filter(|&t| t <= now)?, *k));
        self.conns.iter().filter_map(expired).min().map(|(_, k)| k)
    }

    /// Usable connections that reach another instance of the peer than
    /// `instance`: they lead to a process that is gone.
    pub(crate) fn stale(&self, instance: u64) -> Vec<ConnKey> {
        self.conns
            .iter()
            .filter(|(_, c)| c.usable() && c.instance != instance)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Usable connections (the ones a vanished endpoint must retire).
    pub(crate) fn usable_keys(&self) -> Vec<ConnKey> {
        self.usable_ranks().0
    }

    fn usable_ranks(&self) -> (Vec<ConnKey>, Vec<ConnRank>) {
        self.conns
            .iter()
            .filter(|(_, c)| c.usable())
            .map(|(k, c)| (*k, c.rank))
            .unzip()
    }

    /// Starts retiring `key`: it takes no new streams from now on. Returns
    /// its handle, or `None` if it is unknown or already retiring.
    pub(crate) fn retire(&mut self, key: ConnKey) -> Option<&H> {
        let c = self.conns.get_mut(&key)?;
        if c.retiring {
            return None;
        }
        c.retiring = true;
        Some(&c.handle)
    }

    /// Connection `key` closed at `now`. `failure` says whether the way it
    /// ended is worth backing off for; a connection this node was retiring
    /// never is.
    pub(crate) fn closed<R: Rng + ?Sized>(
        &mut self,
        key: ConnKey,
        failure: bool,
        now: Time,
        rng: &mut R,
    ) -> Option<Closed<H>> {
        let conn = self.conns.remove(&key)?;
        let failure = failure && !conn.retiring;
        let closed = Closed {
            handle: conn.handle,
            failure,
        };
        if self.conns.is_empty() {
            // The process that announced its drain is gone with its last
            // connection; what answers next is dialled as usual.
            self.announced_drain = false;
        }
        let Some(i) = conn.slot else {
            return Some(closed);
        };
        let reset_after = self.reset_after;
        let s = &mut self.slots[i];
        s.attempts = 0;
        if failure {
            if now.saturating_sub(conn.bound_at) >= reset_after {
                s.failures = 0;
            }
            s.failures = s.failures.saturating_add(1);
        }
        let delay = self.policy.delay(s.failures.max(1), rng);
        s.next_at = Some(now + delay);
        s.delay = delay;
        // A connection held over the target takes the freed slot: the most
        // recent one, as the one least likely to be retired by the peer.
        let unslotted = self
            .conns
            .iter_mut()
            .rev()
            .find(|(_, c)| c.slot.is_none())
            .map(|(_, c)| c);
        if let Some(other) = unslotted {
            other.slot = Some(i);
            other.bound_at = now;
            let s = &mut self.slots[i];
            s.next_at = None;
            s.delay = Duration::ZERO;
        }
        if self.conns.is_empty() {
            self.keep_one_lead();
        }
        Some(closed)
    }

    /// Dial now, whatever the backoff says (an explicit `dial_peer`): the
    /// dial starts afresh with all its attempts.
    pub(crate) fn redial_now(&mut self, now: Time) {
        let unanswered = self.conns.is_empty();
        let mut lead_chosen = false;
        for i in 0..self.slots.len() {
            if self.occupied(i) {
                continue;
            }
            let s = &mut self.slots[i];
            s.exhausted = false;
            s.attempts = 0;
            if s.dialing {
                // A probe under way becomes the fresh dial's first attempt.
                lead_chosen = true;
            } else if unanswered && lead_chosen {
                s.next_at = None;
            } else {
                s.next_at = Some(now);
                lead_chosen = true;
            }
        }
    }

    /// Lets go of every connection (the owner is going away).
    pub(crate) fn take_all(&mut self) -> Vec<H> {
        std::mem::take(&mut self.conns)
            .into_values()
            .map(|c| c.handle)
            .collect()
    }

    fn answered(&mut self, was_unanswered: bool, now: Time) {
        for i in 0..self.slots.len() {
            if !self.idle(i) {
                continue;
            }
            let s = &mut self.slots[i];
            // Waiting and probing slots go now; a slot backing off from its
            // own failures while the endpoint answered keeps its backoff.
            if was_unanswered || s.exhausted || s.next_at.is_none() {
                s.exhausted = false;
                s.attempts = 0;
                s.next_at = Some(now);
                s.delay = Duration::ZERO;
            }
        }
    }

    /// With no connection left only the slot due first keeps its schedule;
    /// the others wait for the endpoint to answer.
    fn keep_one_lead(&mut self) {
        let lead = (0..self.slots.len())
            .filter(|&i| self.idle(i) && self.slots[i].next_at.is_some())
            .min_by_key(|&i| self.slots[i].next_at);
        for i in 0..self.slots.len() {
            if self.idle(i) && Some(i) != lead {
                self.slots[i].next_at = None;
            }
        }
    }
}
