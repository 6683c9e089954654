//! When to dial: N slots per peer, each with its own backoff.
//!
//! The planner is told what happened (a dial failed, a connection arrived or
//! closed) and at what time, and answers which slots to dial now and when to
//! wake up next. It does no IO; the peer actor carries out its answers.
//!
//! Rules (README "Retries and states" explains them to users):
//! - A slot dials only while `live + dialling < N`.
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
//!   failure count.

use std::time::Duration;

use rand::Rng;

use super::backoff::RetryPolicy;
use super::Time;

/// The pool's number for a connection, unique per node.
pub type ConnKey = u64;

#[derive(Debug, Clone, PartialEq)]
struct Slot {
    conn: Option<ConnKey>,
    connected_at: Time,
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
    fn empty(next_at: Option<Time>) -> Slot {
        Slot {
            conn: None,
            connected_at: Time::ZERO,
            dialing: false,
            failures: 0,
            attempts: 0,
            exhausted: false,
            next_at,
            delay: Duration::ZERO,
        }
    }

    fn idle(&self) -> bool {
        self.conn.is_none() && !self.dialing
    }
}

/// How a failed attempt left its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// The dial goes on: the next attempt waits this long.
    Retry(Duration),
    /// The dial has used all its attempts: probing in this long.
    Exhausted(Duration),
}

/// The dialling plan of one peer.
#[derive(Debug, Clone)]
pub struct DialPlanner {
    policy: RetryPolicy,
    reset_after: Duration,
    can_dial: bool,
    slots: Vec<Slot>,
    unbound: Vec<ConnKey>,
    total_attempts: u64,
}

impl DialPlanner {
    /// A planner for `target` connections. Without `can_dial` (the peer has
    /// no address) it only keeps count of inbound connections.
    pub fn new(
        policy: RetryPolicy,
        reset_after: Duration,
        target: usize,
        can_dial: bool,
        now: Time,
    ) -> DialPlanner {
        let mut slots = vec![Slot::empty(None); target.max(1)];
        slots[0].next_at = Some(now);
        DialPlanner {
            policy,
            reset_after,
            can_dial,
            slots,
            unbound: Vec::new(),
            total_attempts: 0,
        }
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub fn target(&self) -> usize {
        self.slots.len()
    }

    /// Connections held, whether or not a slot owns them.
    pub fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.conn.is_some()).count() + self.unbound.len()
    }

    pub fn dialing(&self) -> usize {
        self.slots.iter().filter(|s| s.dialing).count()
    }

    /// Attempts started since the planner was made.
    pub fn total_attempts(&self) -> u64 {
        self.total_attempts
    }

    /// No connection, and the (lead) dial ran out of attempts.
    pub fn exhausted(&self) -> bool {
        self.live() == 0 && self.slots.iter().any(|s| s.exhausted)
    }

    /// The earliest time an idle slot may dial, if any is scheduled.
    pub fn next_wakeup(&self) -> Option<Time> {
        if !self.can_dial || self.live() >= self.target() {
            return None;
        }
        self.slots
            .iter()
            .filter(|s| s.idle())
            .filter_map(|s| s.next_at)
            .min()
    }

    /// The backoff now being waited out, zero when nothing waits.
    pub fn current_backoff(&self) -> Duration {
        if self.next_wakeup().is_none() {
            return Duration::ZERO;
        }
        self.slots
            .iter()
            .filter(|s| s.idle() && s.next_at.is_some())
            .map(|s| s.delay)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Starts every dial that is due at `now`; returns their slot numbers.
    pub fn due(&mut self, now: Time) -> Vec<usize> {
        let mut started = Vec::new();
        if !self.can_dial {
            return started;
        }
        for i in 0..self.slots.len() {
            let (live, dialing) = (self.live(), self.dialing());
            if live + dialing >= self.target() || (live == 0 && dialing > 0) {
                break;
            }
            let slot = &mut self.slots[i];
            if slot.idle() && slot.next_at.is_some_and(|t| t <= now) {
                slot.dialing = true;
                slot.attempts = slot.attempts.saturating_add(1);
                self.total_attempts += 1;
                started.push(i);
            }
        }
        started
    }

    /// The dial of `slot` produced connection `conn`.
    pub fn dial_succeeded(&mut self, slot: usize, conn: ConnKey, now: Time) {
        let was_unanswered = self.live() == 0;
        if let Some(s) = self.slots.get_mut(slot) {
            s.dialing = false;
            s.conn = Some(conn);
            s.connected_at = now;
            s.attempts = 0;
            s.exhausted = false;
            s.next_at = None;
            s.delay = Duration::ZERO;
        }
        self.peer_answered(was_unanswered, now);
    }

    /// The dial of `slot` failed at `now`.
    pub fn dial_failed<R: Rng + ?Sized>(
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

    /// An inbound connection came up. Returns whether a slot took it (an
    /// unslotted connection is over the target and awaits retirement).
    pub fn connection_added(&mut self, conn: ConnKey, now: Time) -> bool {
        let was_unanswered = self.live() == 0;
        // Prefer a slot that is only waiting, so its pending dial is cancelled.
        let free = self.slots.iter_mut().filter(|s| s.idle()).min_by_key(|s| {
            // Waiting the longest first: a parked slot (None) sorts last.
            std::cmp::Reverse(s.next_at.unwrap_or(Time::MAX))
        });
        let bound = match free {
            Some(s) => {
                s.conn = Some(conn);
                s.connected_at = now;
                s.attempts = 0;
                s.exhausted = false;
                s.next_at = None;
                s.delay = Duration::ZERO;
                true
            }
            None => {
                self.unbound.push(conn);
                false
            }
        };
        self.peer_answered(was_unanswered, now);
        bound
    }

    /// Connection `conn` closed at `now`. `failure` is false when this node
    /// retired it on purpose (limit, drain): that is no reason to back off.
    pub fn connection_closed<R: Rng + ?Sized>(
        &mut self,
        conn: ConnKey,
        failure: bool,
        now: Time,
        rng: &mut R,
    ) {
        if let Some(pos) = self.unbound.iter().position(|&c| c == conn) {
            self.unbound.swap_remove(pos);
            return;
        }
        let reset_after = self.reset_after;
        let Some(s) = self.slots.iter_mut().find(|s| s.conn == Some(conn)) else {
            return;
        };
        s.conn = None;
        s.attempts = 0;
        if failure {
            if now.saturating_sub(s.connected_at) >= reset_after {
                s.failures = 0;
            }
            s.failures = s.failures.saturating_add(1);
        }
        let delay = self.policy.delay(s.failures.max(1), rng);
        s.next_at = Some(now + delay);
        s.delay = delay;
        if let Some(other) = self.unbound.pop() {
            s.conn = Some(other);
            s.connected_at = now;
            s.next_at = None;
            s.delay = Duration::ZERO;
        }
        if self.live() == 0 {
            self.keep_one_lead();
        }
    }

    /// Dial now, whatever the backoff says (an explicit `dial_peer`): the
    /// dial starts afresh with all its attempts.
    pub fn redial_now(&mut self, now: Time) {
        let unanswered = self.live() == 0;
        let mut lead_chosen = false;
        for s in self.slots.iter_mut().filter(|s| s.idle()) {
            s.exhausted = false;
            s.attempts = 0;
            if unanswered && lead_chosen {
                s.next_at = None;
            } else {
                s.next_at = Some(now);
                lead_chosen = true;
            }
        }
    }

    /// Nothing is dialling and nothing will soon: every free slot is either
    /// waiting for the peer to answer or probing after running out of attempts.
    pub fn settled(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.conn.is_some() || (!s.dialing && (s.exhausted || s.next_at.is_none())))
    }

    /// Whether this peer is dialled at all.
    pub fn can_dial(&self) -> bool {
        self.can_dial
    }

    fn peer_answered(&mut self, was_unanswered: bool, now: Time) {
        for s in self.slots.iter_mut().filter(|s| s.idle()) {
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
            .filter(|&i| self.slots[i].idle() && self.slots[i].next_at.is_some())
            .min_by_key(|&i| self.slots[i].next_at);
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.idle() && Some(i) != lead {
                s.next_at = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn planner(target: usize, jitter: f64) -> DialPlanner {
        DialPlanner::new(policy(jitter), ms(10_000), target, true, Time::ZERO)
    }

    #[test]
    fn a_dead_peer_gets_one_dial_of_four_attempts_then_probes() {
        let mut p = planner(3, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        let mut now = Time::ZERO;
        let mut attempt_times = Vec::new();
        for _ in 0..4 {
            let started = p.due(now);
            assert_eq!(started.len(), 1, "only the lead dials a silent peer");
            attempt_times.push(now);
            let after = p.dial_failed(started[0], now, &mut rng);
            now = p.next_wakeup().unwrap();
            assert!(!matches!(after, AfterFailure::Exhausted(_)) || attempt_times.len() == 4);
        }
        assert_eq!(attempt_times, [0, 100, 300, 700].map(ms).to_vec());
        assert!(p.exhausted());
        assert_eq!(p.total_attempts(), 4);
        // The probe comes max_delay after the last attempt.
        assert_eq!(now, ms(700) + Duration::from_secs(30));
        assert!(p.due(now - ms(1)).is_empty());
        let probe = p.due(now);
        assert_eq!(probe.len(), 1);
        assert!(matches!(
            p.dial_failed(probe[0], now, &mut rng),
            AfterFailure::Exhausted(_)
        ));
        // A successful probe brings the other slots in at once.
        let later = now + Duration::from_secs(30);
        let probe = p.due(later);
        p.dial_succeeded(probe[0], 1, later);
        assert!(!p.exhausted());
        assert_eq!(p.due(later).len(), 2);
    }

    #[test]
    fn closes_back_off_until_a_connection_stays_up() {
        let mut p = planner(1, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        let mut now = Time::ZERO;
        let s = p.due(now)[0];
        p.dial_succeeded(s, 1, now);
        let mut waits = Vec::new();
        for conn in 1..=4 {
            now += ms(50);
            p.connection_closed(conn, true, now, &mut rng);
            let at = p.next_wakeup().unwrap();
            waits.push(at - now);
            now = at;
            let s = p.due(now)[0];
            p.dial_succeeded(s, conn + 1, now);
        }
        assert_eq!(waits, [100, 200, 400, 800].map(ms).to_vec());
        // Up for longer than reset_after: the next close starts over.
        now += Duration::from_secs(11);
        p.connection_closed(5, true, now, &mut rng);
        assert_eq!(p.next_wakeup().unwrap() - now, ms(100));
    }

    #[test]
    fn never_dials_past_the_target() {
        let mut p = planner(3, 0.1);
        let now = Time::ZERO;
        let first = p.due(now);
        p.dial_succeeded(first[0], 1, now);
        let rest = p.due(now);
        assert_eq!(rest.len(), 2);
        assert!(p.due(now + Duration::from_secs(100)).is_empty());
        p.connection_added(9, now);
        assert_eq!(p.live(), 2);
        assert!(
            p.due(now + Duration::from_secs(100)).is_empty(),
            "2 live + 2 dialling"
        );
    }

    #[test]
    fn an_inbound_connection_takes_a_waiting_slot_and_cancels_its_dial() {
        let mut p = planner(2, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        let s = p.due(Time::ZERO)[0];
        p.dial_failed(s, Time::ZERO, &mut rng);
        assert!(p.connection_added(7, ms(10)));
        // The peer answered: the other slot dials now.
        assert_eq!(p.due(ms(10)).len(), 1);
        // Over the target: held unslotted until retired.
        assert!(!p.connection_added(8, ms(20)));
        assert_eq!(p.live(), 2);
        p.connection_closed(8, false, ms(30), &mut rng);
        assert_eq!(p.live(), 1);
    }

    #[test]
    fn closing_a_slotted_connection_rebinds_an_unslotted_one() {
        let mut p = planner(1, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        p.connection_added(1, Time::ZERO);
        p.connection_added(2, Time::ZERO);
        p.connection_closed(1, false, ms(5), &mut rng);
        assert_eq!(p.live(), 1);
        assert_eq!(p.next_wakeup(), None, "at target: nothing to dial");
    }

    #[test]
    fn redial_now_restarts_an_exhausted_dial() {
        let mut p = planner(2, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        let mut now = Time::ZERO;
        while !p.exhausted() {
            let s = p.due(now);
            p.dial_failed(s[0], now, &mut rng);
            now = p.next_wakeup().unwrap();
        }
        p.redial_now(ms(800));
        assert_eq!(p.due(ms(800)).len(), 1, "still one lead");
        assert!(!p.exhausted());
    }

    #[test]
    fn an_accept_only_peer_is_never_dialled() {
        let mut p = DialPlanner::new(policy(0.1), ms(1), 3, false, Time::ZERO);
        assert!(p.due(Time::ZERO).is_empty());
        assert_eq!(p.next_wakeup(), None);
        p.connection_added(1, Time::ZERO);
        assert!(p.due(Time::MAX).is_empty());
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Advance(u64),
        Fail(usize),
        Succeed(usize),
        Inbound,
        Close(usize, bool),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            (0u64..40_000).prop_map(Ev::Advance),
            (0usize..8).prop_map(Ev::Fail),
            (0usize..8).prop_map(Ev::Succeed),
            Just(Ev::Inbound),
            ((0usize..16), any::<bool>()).prop_map(|(i, f)| Ev::Close(i, f)),
        ]
    }

    proptest! {
        /// Under any sequence of events: no dial starts at or beyond the
        /// target, a silent peer gets no second dial in flight, and between
        /// two successes a slot makes at most `attempts_per_dial` attempts
        /// spaced by the backoff, then probes no faster than max_delay·(1-j).
        #[test]
        fn the_retry_rules_hold(events in proptest::collection::vec(ev(), 1..200), target in 1usize..5, seed in any::<u64>()) {
            let pol = policy(0.1);
            let mut p = DialPlanner::new(pol.clone(), ms(5_000), target, true, Time::ZERO);
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
                        p.dial_succeeded(slot, next_conn, now);
                        live.push(next_conn);
                        since_success.iter_mut().for_each(|a| *a = 0);
                        probing.iter_mut().for_each(|x| *x = false);
                    }
                    Ev::Inbound => {
                        next_conn += 1;
                        p.connection_added(next_conn, now);
                        live.push(next_conn);
                        since_success.iter_mut().for_each(|a| *a = 0);
                        probing.iter_mut().for_each(|x| *x = false);
                    }
                    Ev::Close(i, failure) if !live.is_empty() => {
                        let c = live.remove(i % live.len());
                        p.connection_closed(c, failure, now, &mut rng);
                        since_success.iter_mut().for_each(|a| *a = 0);
                    }
                    _ => {}
                }
                let before_live = p.live();
                let before_dialing = p.dialing();
                for slot in p.due(now) {
                    prop_assert!(before_live + before_dialing < target);
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
                prop_assert_eq!(p.live(), live.len());
                if before_live == 0 {
                    // A silent peer gets one dial at a time (dials started
                    // while it still answered may be finishing).
                    prop_assert!(before_dialing == 0 || p.dialing() == before_dialing);
                    prop_assert!(p.dialing() <= before_dialing.max(1));
                }
            }
        }
    }
}
