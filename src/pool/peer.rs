//! `PeerCore`: the one authoritative record of a peer. It owns the
//! connection set, the dial plan (N slots with their backoff) and the drain;
//! the peer's state, its usable count, "draining" and "next retry" are
//! computed from them on demand.
//!
//! The core is told what happened (a dial failed, a connection arrived,
//! closed or is being retired) and at what time, and answers which slots to
//! dial now and when to wake up next. It does no IO; the peer actor carries
//! out its answers and publishes what it derives. `H` is whatever handle the
//! caller keeps per connection: the core stores it and never looks inside.
//!
//! Dial rules (README "Retries and states" explains them to users):
//! - A slot dials only while `held + dialling < N` (connections being
//!   retired still count: they hold their slot until they close).
//! - A dial is the first attempt plus `max_retries` retries; retry `k` waits
//!   the backoff of [`RetryPolicy::delay`] for the slot's `k`-th consecutive
//!   failure. When a dial runs out of attempts the slot probes once every
//!   `max_delay` (jittered) until it succeeds.
//! - While the peer has no connection only one slot dials (the lead); the
//!   others wait for the peer to answer, so a dead peer sees one dial
//!   sequence, not N. When any connection comes up, waiting and probing slots
//!   dial at once.
//! - A connection that closes counts as a failure of its slot, so a peer
//!   that keeps dropping connections is redialled with growing delays; a
//!   connection that stayed up for `reset_after` first resets its slot's
//!   failure count. Closing a connection this node retired is no failure.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;

use super::backoff::RetryPolicy;
use super::conn::{Closed, Conn, ConnKey};
use super::limit::{self, Admission, ConnRank};
use super::state::{PeerState, StateFacts};
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
struct Slot {
    dialing: bool,
    /// Consecutive failures: the `k` of the next backoff.
    failures: u32,
    /// Attempts in the current dial.
    attempts: u32,
    exhausted: bool,
    /// When this slot may dial next; `None` waits for the peer to answer.
    next_at: Option<Time>,
    /// The backoff that set `next_at`, for the backoff gauge.
    delay: Duration,
}

impl Slot {
    fn parked() -> Slot {
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
    fn filled(&mut self) {
        self.dialing = false;
        self.attempts = 0;
        self.exhausted = false;
        self.next_at = None;
        self.delay = Duration::ZERO;
    }

    /// A dial with attempts left is under way or scheduled.
    fn pending(&self) -> bool {
        !self.exhausted && (self.dialing || self.next_at.is_some())
    }
}

/// The one record of a peer: connections, dial plan, drain.
#[derive(Debug)]
pub(crate) struct PeerCore<H> {
    policy: RetryPolicy,
    reset_after: Duration,
    can_dial: bool,
    slots: Vec<Slot>,
    conns: BTreeMap<ConnKey, Conn<H>>,
    draining: bool,
    total_attempts: u64,
}

impl<H> PeerCore<H> {
    /// A core for `target` connections. Without `can_dial` (the peer has no
    /// address) it only keeps inbound connections.
    pub(crate) fn new(
        policy: RetryPolicy,
        reset_after: Duration,
        target: usize,
        can_dial: bool,
        now: Time,
    ) -> PeerCore<H> {
        let mut slots = vec![Slot::parked(); target.max(1)];
        slots[0].next_at = Some(now);
        PeerCore {
            policy,
            reset_after,
            can_dial,
            slots,
            conns: BTreeMap::new(),
            draining: false,
            total_attempts: 0,
        }
    }

    /// N.
    pub(crate) fn target(&self) -> usize {
        self.slots.len()
    }

    /// Whether this peer is dialled at all.
    pub(crate) fn can_dial(&self) -> bool {
        self.can_dial
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining
    }

    /// Every connection held, usable or being retired.
    pub(crate) fn held(&self) -> usize {
        self.conns.len()
    }

    /// Connections that take new streams.
    pub(crate) fn usable(&self) -> usize {
        self.conns.values().filter(|c| c.usable()).count()
    }

    pub(crate) fn conns(&self) -> impl Iterator<Item = (ConnKey, &Conn<H>)> {
        self.conns.iter().map(|(k, c)| (*k, c))
    }

    pub(crate) fn conns_mut(&mut self) -> impl Iterator<Item = (ConnKey, &mut Conn<H>)> {
        self.conns.iter_mut().map(|(k, c)| (*k, c))
    }

    /// Attempts started since the core was made.
    pub(crate) fn total_attempts(&self) -> u64 {
        self.total_attempts
    }

    pub(crate) fn state(&self) -> PeerState {
        PeerState::derive(StateFacts {
            draining: self.draining,
            usable: self.usable(),
            target: self.target(),
            unreachable: self.conns.is_empty()
                && self.slots.iter().any(|s| s.exhausted)
                && !self.slots.iter().any(Slot::pending),
        })
    }

    /// No connection, and a dial ran out of attempts (an explicit dial
    /// then starts afresh).
    pub(crate) fn exhausted(&self) -> bool {
        self.conns.is_empty() && self.slots.iter().any(|s| s.exhausted)
    }

    fn occupied(&self, slot: usize) -> bool {
        self.conns.values().any(|c| c.slot == Some(slot))
    }

    fn idle(&self, slot: usize) -> bool {
        !self.slots[slot].dialing && !self.occupied(slot)
    }

    fn dialing(&self) -> usize {
        self.slots.iter().filter(|s| s.dialing).count()
    }

    /// The earliest time an idle slot may dial, if any is scheduled; never
    /// while draining.
    pub(crate) fn next_wakeup(&self) -> Option<Time> {
        if !self.can_dial || self.draining || self.held() >= self.target() {
            return None;
        }
        (0..self.slots.len())
            .filter(|&i| self.idle(i))
            .filter_map(|i| self.slots[i].next_at)
            .min()
    }

    /// The backoff now being waited out, zero when nothing waits.
    pub(crate) fn current_backoff(&self) -> Duration {
        if self.next_wakeup().is_none() {
            return Duration::ZERO;
        }
        (0..self.slots.len())
            .filter(|&i| self.idle(i) && self.slots[i].next_at.is_some())
            .map(|i| self.slots[i].delay)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Nothing is dialling and nothing will soon: every free slot is either
    /// waiting for the peer to answer or probing after running out of attempts.
    pub(crate) fn settled(&self) -> bool {
        (0..self.slots.len()).all(|i| {
            let s = &self.slots[i];
            self.occupied(i) || (!s.dialing && (s.exhausted || s.next_at.is_none()))
        })
    }

    /// Starts every dial that is due at `now`; returns their slot numbers.
    pub(crate) fn due(&mut self, now: Time) -> Vec<usize> {
        let mut started = Vec::new();
        if !self.can_dial || self.draining {
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
        self.peer_answered(was_unanswered, now);
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

    /// A dial finished after the drain began: its connection is not kept
    /// and the slot stops dialling.
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
        self.peer_answered(was_unanswered, now);
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

    /// Usable connections that reach another instance of the peer than
    /// `instance`: they lead to a process that is gone.
    pub(crate) fn stale(&self, instance: u64) -> Vec<ConnKey> {
        self.conns
            .iter()
            .filter(|(_, c)| c.usable() && c.instance != instance)
            .map(|(k, _)| *k)
            .collect()
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

    /// The peer is being removed or the node shuts down: no new dials, no
    /// new streams. Returns false if it was draining already.
    pub(crate) fn drain(&mut self) -> bool {
        !std::mem::replace(&mut self.draining, true)
    }

    /// Lets go of every connection (the owner is going away).
    pub(crate) fn take_all(&mut self) -> Vec<H> {
        std::mem::take(&mut self.conns)
            .into_values()
            .map(|c| c.handle)
            .collect()
    }

    fn peer_answered(&mut self, was_unanswered: bool, now: Time) {
        for i in 0..self.slots.len() {
            if !self.idle(i) {
                continue;
            }
            let s = &mut self.slots[i];
            // Waiting and probing slots go now; a slot backing off from its
            // own failures while the peer was reachable keeps its backoff.
            if was_unanswered || s.exhausted || s.next_at.is_none() {
                s.exhausted = false;
                s.attempts = 0;
                s.next_at = Some(now);
                s.delay = Duration::ZERO;
            }
        }
    }

    /// With no connection left only the slot due first keeps its schedule;
    /// the others wait for the peer to answer.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::balance::PeakEwma;
    use crate::pool::conn::Direction;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            jitter,
            ..RetryPolicy::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn core(target: usize, jitter: f64) -> PeerCore<()> {
        PeerCore::new(policy(jitter), ms(10_000), target, true, Time::ZERO)
    }

    /// A connection dialled by the smaller id with sequence number `seq`.
    fn conn(seq: u64) -> Conn<()> {
        conn_of(seq, 1)
    }

    fn conn_of(seq: u64, instance: u64) -> Conn<()> {
        Conn::new(
            (),
            Direction::Outbound,
            ConnRank {
                dialed_by_smaller_id: true,
                seq,
            },
            instance,
            PeakEwma::new(Duration::from_secs(10)),
        )
    }

    /// Fails every dial of a silent peer until it is exhausted; returns the
    /// time of the next probe.
    fn fail_until_exhausted(p: &mut PeerCore<()>, rng: &mut SmallRng) -> Time {
        let mut now = Time::ZERO;
        while !p.exhausted() {
            let s = p.due(now);
            p.dial_failed(s[0], now, rng);
            now = p.next_wakeup().unwrap();
        }
        now
    }

    #[test]
    fn a_dead_peer_gets_one_dial_of_four_attempts_then_probes() {
        let mut p = core(3, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        let mut now = Time::ZERO;
        let mut attempt_times = Vec::new();
        for _ in 0..4 {
            let started = p.due(now);
            assert_eq!(started.len(), 1, "only the lead dials a silent peer");
            assert_eq!(p.state(), PeerState::Connecting);
            attempt_times.push(now);
            let after = p.dial_failed(started[0], now, &mut rng);
            now = p.next_wakeup().unwrap();
            assert!(!matches!(after, AfterFailure::Exhausted(_)) || attempt_times.len() == 4);
        }
        assert_eq!(attempt_times, [0, 100, 300, 700].map(ms).to_vec());
        assert!(p.exhausted());
        assert_eq!(p.state(), PeerState::Unreachable);
        assert_eq!(p.total_attempts(), 4);
        // The probe comes max_delay after the last attempt.
        assert_eq!(now, ms(700) + Duration::from_secs(30));
        assert!(p.due(now - ms(1)).is_empty());
        let probe = p.due(now);
        assert_eq!(probe.len(), 1);
        assert_eq!(
            p.state(),
            PeerState::Unreachable,
            "probing stays unreachable"
        );
        assert!(matches!(
            p.dial_failed(probe[0], now, &mut rng),
            AfterFailure::Exhausted(_)
        ));
        // A successful probe brings the other slots in at once.
        let later = now + Duration::from_secs(30);
        let probe = p.due(later);
        p.dial_succeeded(probe[0], 1, conn(1), later);
        assert!(!p.exhausted());
        assert_eq!(p.state(), PeerState::Degraded);
        assert_eq!(p.due(later).len(), 2);
    }

    #[test]
    fn closes_back_off_until_a_connection_stays_up() {
        let mut p = core(1, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        let mut now = Time::ZERO;
        let s = p.due(now)[0];
        p.dial_succeeded(s, 1, conn(1), now);
        let mut waits = Vec::new();
        for key in 1..=4 {
            now += ms(50);
            let closed = p.closed(key, true, now, &mut rng).unwrap();
            assert!(closed.failure);
            let at = p.next_wakeup().unwrap();
            waits.push(at - now);
            now = at;
            let s = p.due(now)[0];
            p.dial_succeeded(s, key + 1, conn(key + 1), now);
        }
        assert_eq!(waits, [100, 200, 400, 800].map(ms).to_vec());
        // Up for longer than reset_after: the next close starts over.
        now += Duration::from_secs(11);
        p.closed(5, true, now, &mut rng);
        assert_eq!(p.next_wakeup().unwrap() - now, ms(100));
    }

    #[test]
    fn never_dials_past_the_target() {
        let mut p = core(3, 0.1);
        let now = Time::ZERO;
        let first = p.due(now);
        p.dial_succeeded(first[0], 1, conn(1), now);
        let rest = p.due(now);
        assert_eq!(rest.len(), 2);
        assert!(p.due(now + Duration::from_secs(100)).is_empty());
        p.add_inbound(9, conn(9), now);
        assert_eq!(p.held(), 2);
        assert!(
            p.due(now + Duration::from_secs(100)).is_empty(),
            "2 held + 2 dialling"
        );
    }

    #[test]
    fn an_inbound_connection_takes_a_waiting_slot_and_cancels_its_dial() {
        let mut p = core(2, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        let s = p.due(Time::ZERO)[0];
        p.dial_failed(s, Time::ZERO, &mut rng);
        assert!(p.add_inbound(7, conn(7), ms(10)));
        // The peer answered: the other slot dials now.
        assert_eq!(p.due(ms(10)).len(), 1);
        // Over the target: held unslotted until retired.
        assert!(!p.add_inbound(8, conn(8), ms(20)));
        assert_eq!(p.held(), 2);
        let closed = p.closed(8, false, ms(30), &mut rng).unwrap();
        assert!(!closed.failure);
        assert_eq!(p.held(), 1);
    }

    #[test]
    fn closing_a_slotted_connection_rebinds_an_unslotted_one() {
        let mut p = core(1, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        p.add_inbound(1, conn(1), Time::ZERO);
        p.add_inbound(2, conn(2), Time::ZERO);
        p.closed(1, false, ms(5), &mut rng);
        assert_eq!(p.held(), 1);
        assert_eq!(p.next_wakeup(), None, "at target: nothing to dial");
    }

    #[test]
    fn redial_now_restarts_an_exhausted_dial() {
        let mut p = core(2, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        fail_until_exhausted(&mut p, &mut rng);
        assert_eq!(p.state(), PeerState::Unreachable);
        p.redial_now(ms(800));
        assert_eq!(p.state(), PeerState::Connecting);
        assert_eq!(p.due(ms(800)).len(), 1, "still one lead");
        assert!(!p.exhausted());
    }

    #[test]
    fn redial_now_during_a_probe_makes_it_the_first_attempt() {
        let mut p = core(1, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        let now = fail_until_exhausted(&mut p, &mut rng);
        let probe = p.due(now);
        assert_eq!(p.state(), PeerState::Unreachable);
        p.redial_now(now);
        assert_eq!(p.state(), PeerState::Connecting);
        // The probe fails: a retry follows after a backoff, not a probe.
        assert!(matches!(
            p.dial_failed(probe[0], now, &mut rng),
            AfterFailure::Retry(_)
        ));
    }

    #[test]
    fn an_accept_only_peer_is_never_dialled() {
        let mut p: PeerCore<()> = PeerCore::new(policy(0.1), ms(1), 3, false, Time::ZERO);
        assert!(p.due(Time::ZERO).is_empty());
        assert_eq!(p.next_wakeup(), None);
        assert_eq!(p.state(), PeerState::Connecting);
        p.add_inbound(1, conn(1), Time::ZERO);
        assert!(p.due(Time::MAX).is_empty());
        assert_eq!(p.state(), PeerState::Degraded);
    }

    #[test]
    fn retiring_leaves_the_slot_held_and_its_close_is_no_failure() {
        let mut p = core(2, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        let s = p.due(Time::ZERO);
        p.dial_succeeded(s[0], 1, conn(1), Time::ZERO);
        let s = p.due(Time::ZERO);
        p.dial_succeeded(s[0], 2, conn(2), Time::ZERO);
        assert_eq!(p.state(), PeerState::Healthy);
        assert!(p.retire(2).is_some());
        assert!(p.retire(2).is_none(), "retiring twice does nothing");
        assert_eq!((p.usable(), p.held()), (1, 2));
        assert_eq!(p.state(), PeerState::Degraded);
        assert!(
            p.due(Time::MAX).is_empty(),
            "a retiring connection keeps its slot"
        );
        let closed = p.closed(2, true, ms(5), &mut rng).unwrap();
        assert!(!closed.failure, "retired on purpose");
        assert_eq!(
            p.current_backoff(),
            ms(100),
            "the slot redials after one backoff"
        );
    }

    #[test]
    fn excess_and_admission_rank_only_usable_connections() {
        let mut p = core(2, 0.0);
        for seq in 1..=3 {
            p.add_inbound(seq, conn(seq), Time::ZERO);
        }
        assert_eq!(p.excess(), vec![3]);
        let worse = ConnRank {
            dialed_by_smaller_id: true,
            seq: 9,
        };
        assert_eq!(p.admission(worse), Admission::Refuse);
        p.retire(3);
        assert!(p.excess().is_empty());
        assert_eq!(p.admission(worse), Admission::Refuse, "2 usable = N");
        p.retire(2);
        assert_eq!(p.admission(worse), Admission::Admit);
    }

    #[test]
    fn stale_names_the_connections_to_another_instance() {
        let mut p = core(3, 0.0);
        p.add_inbound(1, conn_of(1, 7), Time::ZERO);
        p.add_inbound(2, conn_of(2, 8), Time::ZERO);
        assert_eq!(p.stale(8), vec![1]);
        p.retire(1);
        assert!(p.stale(8).is_empty(), "already going");
    }

    #[test]
    fn draining_stops_dials_and_is_final() {
        let mut p = core(2, 0.0);
        let s = p.due(Time::ZERO);
        assert!(p.drain());
        assert!(!p.drain());
        assert_eq!(p.state(), PeerState::Draining);
        p.dial_abandoned(s[0]);
        assert!(p.due(Time::MAX).is_empty());
        assert_eq!(p.next_wakeup(), None);
        assert_eq!(p.current_backoff(), Duration::ZERO);
        p.add_inbound(1, conn(1), Time::ZERO);
        assert_eq!(p.state(), PeerState::Draining);
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Advance(u64),
        Fail(usize),
        Succeed(usize),
        Inbound,
        Close(usize, bool),
        Retire(usize),
        Redial,
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            (0u64..40_000).prop_map(Ev::Advance),
            (0usize..8).prop_map(Ev::Fail),
            (0usize..8).prop_map(Ev::Succeed),
            Just(Ev::Inbound),
            ((0usize..16), any::<bool>()).prop_map(|(i, f)| Ev::Close(i, f)),
            (0usize..16).prop_map(Ev::Retire),
            Just(Ev::Redial),
        ]
    }

    proptest! {
        /// Under any sequence of events: no dial starts at or beyond the
        /// target, a silent peer gets no second dial in flight, between two
        /// successes a slot makes at most `attempts_per_dial` attempts, then
        /// probes no faster than max_delay·(1-j); and the derived state
        /// always agrees with the connections it is derived from.
        #[test]
        fn the_retry_rules_hold(events in proptest::collection::vec(ev(), 1..200), target in 1usize..5, seed in any::<u64>()) {
            let pol = policy(0.1);
            let mut p: PeerCore<()> = PeerCore::new(pol.clone(), ms(5_000), target, true, Time::ZERO);
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut now = Time::ZERO;
            let mut next_conn = 100;
            let mut in_flight: Vec<usize> = Vec::new();
            let mut live: Vec<ConnKey> = Vec::new();
            // Per slot: attempts since the last success, last attempt time, exhausted.
            let mut since_success = vec![0u32; target];
            let mut last_attempt: Vec<Option<Time>> = vec![None; target];
            let mut probing = vec![false; target];
            for e in events {
                match e {
                    Ev::Advance(d) => now += ms(d),
                    Ev::Fail(i) if !in_flight.is_empty() => {
                        let slot = in_flight.remove(i % in_flight.len());
                        if let AfterFailure::Exhausted(_) = p.dial_failed(slot, now, &mut rng) {
                            probing[slot] = true;
                        }
                    }
                    Ev::Succeed(i) if !in_flight.is_empty() => {
                        let slot = in_flight.remove(i % in_flight.len());
                        next_conn += 1;
                        p.dial_succeeded(slot, next_conn, conn(next_conn), now);
                        live.push(next_conn);
                        since_success.iter_mut().for_each(|a| *a = 0);
                        probing.iter_mut().for_each(|x| *x = false);
                    }
                    Ev::Inbound => {
                        next_conn += 1;
                        p.add_inbound(next_conn, conn(next_conn), now);
                        live.push(next_conn);
                        since_success.iter_mut().for_each(|a| *a = 0);
                        probing.iter_mut().for_each(|x| *x = false);
                    }
                    Ev::Close(i, failure) if !live.is_empty() => {
                        let c = live.remove(i % live.len());
                        prop_assert!(p.closed(c, failure, now, &mut rng).is_some());
                        since_success.iter_mut().for_each(|a| *a = 0);
                    }
                    Ev::Retire(i) if !live.is_empty() => {
                        let _ = p.retire(live[i % live.len()]);
                    }
                    Ev::Redial if p.exhausted() => {
                        p.redial_now(now);
                        since_success.iter_mut().for_each(|a| *a = 0);
                        probing.iter_mut().for_each(|x| *x = false);
                    }
                    _ => {}
                }
                let before_held = p.held();
                let before_dialing = p.dialing();
                for slot in p.due(now) {
                    prop_assert!(before_held + before_dialing < target);
                    since_success[slot] += 1;
                    if probing[slot] {
                        if let Some(t) = last_attempt[slot] {
                            let gap = (now - t).as_secs_f64();
                            prop_assert!(gap >= pol.max_delay.as_secs_f64() * 0.9 - 1e-6, "probe after {}s", gap);
                        }
                    } else {
                        prop_assert!(since_success[slot] <= pol.attempts_per_dial(), "{} attempts", since_success[slot]);
                    }
                    last_attempt[slot] = Some(now);
                    in_flight.push(slot);
                }
                prop_assert_eq!(p.dialing(), in_flight.len());
                prop_assert_eq!(p.held(), live.len());
                if before_held == 0 {
                    // A silent peer gets one dial at a time (dials started
                    // while it still answered may be finishing).
                    prop_assert!(before_dialing == 0 || p.dialing() == before_dialing);
                    prop_assert!(p.dialing() <= before_dialing.max(1));
                }
                // The state is what the connections say.
                let usable = p.conns().filter(|(_, c)| c.usable()).count();
                let state = p.state();
                match state {
                    PeerState::Healthy => prop_assert!(usable >= target),
                    PeerState::Degraded => prop_assert!(usable > 0 && usable < target),
                    PeerState::Unreachable => prop_assert!(p.held() == 0 && p.exhausted()),
                    PeerState::Connecting => prop_assert_eq!(usable, 0),
                    PeerState::Draining => prop_assert!(false, "never drained here"),
                }
                // At most N slots are held; every slotted connection names a distinct slot.
                let mut slots: Vec<usize> = p.conns().filter_map(|(_, c)| c.slot).collect();
                slots.sort_unstable();
                let n = slots.len();
                slots.dedup();
                prop_assert_eq!(slots.len(), n);
                prop_assert!(n <= target);
            }
        }
    }
}
