//! `PeerCore`: the one authoritative record of a peer. It owns the peer's
//! endpoints (each with its connections, dial plan and ejection, see
//! `endpoint`) and the drain; the peer's state, its usable count,
//! "draining" and "next retry" are computed from them on demand.
//!
//! The core is told what happened (the address set changed, a dial failed,
//! a connection arrived, closed or is being retired, an endpoint failed too
//! often) and at what time, and answers which endpoints and slots to dial
//! now and when to wake up next. It does no IO; the peer actor carries out
//! its answers and publishes what it derives. `H` is the caller's handle
//! per connection, `E` per endpoint (made with `E::default()`), `A` the
//! name of an endpoint (its address); the core stores them and never looks
//! inside.
//!
//! `pool.max_connections_per_peer` (N) applies per endpoint. Endpoints come
//! from the peer's address set (`set_addrs`: configured or resolved) and
//! from inbound connections (named by their remote address: a node dials
//! from the socket it listens on, so both ends name a pair of processes
//! alike). An endpoint that leaves the address set drains and goes with
//! its last connection.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::Rng;

use super::backoff::RetryPolicy;
use super::conn::{Closed, Conn, ConnKey};
use super::endpoint::{AfterFailure, Endpoint, Origin};
use super::limit::{Admission, ConnRank};
use super::state::{PeerState, StateFacts};
use super::time::Time;

/// Passive outlier detection, as Envoy's: an endpoint that fails
/// `consecutive_failures` times in a row is ejected for `base_time` times
/// the number of times it has been ejected, but never more than
/// `max_percent` of a peer's endpoints at once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EjectionPolicy {
    pub(crate) consecutive_failures: u32,
    pub(crate) base_time: Duration,
    pub(crate) max_percent: u32,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        EjectionPolicy {
            consecutive_failures: 5,
            base_time: Duration::from_secs(10),
            max_percent: 50,
        }
    }
}

/// The one record of a peer: endpoints and the drain.
#[derive(Debug)]
pub(crate) struct PeerCore<H, E, A> {
    policy: RetryPolicy,
    reset_after: Duration,
    target: usize,
    ejection: EjectionPolicy,
    endpoints: BTreeMap<A, Endpoint<H, E>>,
    draining: bool,
    /// Dial attempts of endpoints that are gone.
    attempts_of_gone: u64,
}

impl<H, E: Default, A: Ord + Clone> PeerCore<H, E, A> {
    /// A core with no endpoint yet, N = `target` connections per endpoint.
    pub(crate) fn new(
        policy: RetryPolicy,
        reset_after: Duration,
        target: usize,
        ejection: EjectionPolicy,
    ) -> PeerCore<H, E, A> {
        PeerCore {
            policy,
            reset_after,
            target: target.max(1),
            ejection,
            endpoints: BTreeMap::new(),
            draining: false,
            attempts_of_gone: 0,
        }
    }

    fn endpoint(&self, origin: Origin, now: Time) -> Endpoint<H, E> {
        Endpoint::new(
            E::default(),
            origin,
            self.policy.clone(),
            self.reset_after,
            self.target,
            now,
        )
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining
    }

    /// The peer's address set is now `addrs`: new ones are dialled from
    /// `now`, ones that left it drain. Returns the connections to retire
    /// (the usable ones of endpoints that left).
    pub(crate) fn set_addrs(&mut self, addrs: &BTreeSet<A>, now: Time) -> Vec<ConnKey> {
        let mut retire = Vec::new();
        for (addr, e) in self.endpoints.iter_mut() {
            let listed = addrs.contains(addr);
            match (e.origin, listed) {
                (Origin::Listed, false) => {
                    e.origin = Origin::Vanished;
                    retire.extend(e.usable_keys());
                }
                (Origin::Vanished | Origin::Inbound, true) => e.origin = Origin::Listed,
                _ => {}
            }
        }
        for addr in addrs {
            if !self.endpoints.contains_key(addr) {
                let e = self.endpoint(Origin::Listed, now);
                self.endpoints.insert(addr.clone(), e);
            }
        }
        self.forget_empty();
        retire
    }

    /// Endpoints that are neither listed nor holding a connection go (once
    /// no dial of theirs is under way: its result names them).
    fn forget_empty(&mut self) {
        let gone: Vec<A> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.origin != Origin::Listed && e.held() == 0 && e.dialing() == 0)
            .map(|(a, _)| a.clone())
            .collect();
        for a in gone {
            if let Some(e) = self.endpoints.remove(&a) {
                self.attempts_of_gone += e.total_attempts();
            }
        }
    }

    pub(crate) fn endpoints(&self) -> impl Iterator<Item = (&A, &Endpoint<H, E>)> {
        self.endpoints.iter()
    }

    pub(crate) fn endpoints_mut(&mut self) -> impl Iterator<Item = (&A, &mut Endpoint<H, E>)> {
        self.endpoints.iter_mut()
    }

    /// Every connection, with its endpoint.
    pub(crate) fn conns(&self) -> impl Iterator<Item = (&A, ConnKey, &Conn<H>)> {
        self.endpoints
            .iter()
            .flat_map(|(a, e)| e.conns().map(move |(k, c)| (a, k, c)))
    }

    /// Every connection held, usable or being retired.
    pub(crate) fn held(&self) -> usize {
        self.endpoints.values().map(Endpoint::held).sum()
    }

    /// Connections that take new streams.
    pub(crate) fn usable(&self) -> usize {
        self.endpoints.values().map(Endpoint::usable).sum()
    }

    /// The endpoint a connection belongs to.
    pub(crate) fn endpoint_of(&self, key: ConnKey) -> Option<&A> {
        self.endpoints
            .iter()
            .find(|(_, e)| e.has(key))
            .map(|(a, _)| a)
    }

    fn holder_mut(&mut self, key: ConnKey) -> Option<&mut Endpoint<H, E>> {
        self.endpoints.values_mut().find(|e| e.has(key))
    }

    /// Dial attempts since the core was made.
    pub(crate) fn total_attempts(&self) -> u64 {
        self.attempts_of_gone
            + self
                .endpoints
                .values()
                .map(Endpoint::total_attempts)
                .sum::<u64>()
    }

    pub(crate) fn state(&self) -> PeerState {
        let routable: Vec<&Endpoint<H, E>> =
            self.endpoints.values().filter(|e| e.routable()).collect();
        let listed: Vec<&Endpoint<H, E>> =
            self.endpoints.values().filter(|e| e.dialable()).collect();
        PeerState::derive(StateFacts {
            draining: self.draining,
            usable: self.usable(),
            all_full: !routable.is_empty() && routable.iter().all(|e| e.usable() >= self.target),
            unreachable: self.held() == 0
                && !listed.is_empty()
                && listed.iter().all(|e| e.unreachable()),
        })
    }

    /// Some endpoint this node dials is dialled no more for now: an
    /// explicit dial then starts afresh.
    pub(crate) fn exhausted(&self) -> bool {
        self.endpoints
            .values()
            .any(|e| e.dialable() && e.exhausted())
    }

    /// Whether any endpoint is dialled at all.
    pub(crate) fn can_dial(&self) -> bool {
        self.endpoints.values().any(Endpoint::dialable)
    }

    /// The earliest time something is due: a dial, or the end of an
    /// ejection. Never while draining.
    pub(crate) fn next_wakeup(&self) -> Option<Time> {
        if self.draining {
            return None;
        }
        self.endpoints
            .values()
            .flat_map(|e| [e.next_dial(), e.ejection.until])
            .flatten()
            .min()
    }

    /// The next dial (not an ejection's end), when one is scheduled.
    pub(crate) fn next_dial(&self) -> Option<Time> {
        if self.draining {
            return None;
        }
        self.endpoints
            .values()
            .filter_map(Endpoint::next_dial)
            .min()
    }

    /// The longest backoff now being waited out, zero when nothing waits.
    pub(crate) fn current_backoff(&self) -> Duration {
        if self.draining {
            return Duration::ZERO;
        }
        self.endpoints
            .values()
            .map(Endpoint::current_backoff)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Nothing is dialling and nothing will soon, on any endpoint.
    pub(crate) fn settled(&self) -> bool {
        self.endpoints
            .values()
            .filter(|e| e.dialable())
            .all(Endpoint::settled)
    }

    /// Starts every dial that is due at `now`: (endpoint, slot) pairs.
    pub(crate) fn due(&mut self, now: Time) -> Vec<(A, usize)> {
        if self.draining {
            return Vec::new();
        }
        self.endpoints
            .iter_mut()
            .flat_map(|(a, e)| e.due(now).into_iter().map(move |s| (a.clone(), s)))
            .collect()
    }

    /// The dial of `slot` at `addr` produced connection `key`. Returns
    /// false when `addr` left the address set while the dial ran: the
    /// connection is held, and the caller retires it.
    pub(crate) fn dial_succeeded(
        &mut self,
        addr: &A,
        slot: usize,
        key: ConnKey,
        conn: Conn<H>,
        now: Time,
    ) -> bool {
        let e = match self.endpoints.get_mut(addr) {
            Some(e) => e,
            None => {
                let e = self.endpoint(Origin::Vanished, now);
                self.endpoints.entry(addr.clone()).or_insert(e)
            }
        };
        e.dial_succeeded(slot, key, conn, now);
        e.origin == Origin::Listed
    }

    /// The dial of `slot` at `addr` failed at `now`.
    pub(crate) fn dial_failed<R: Rng + ?Sized>(
        &mut self,
        addr: &A,
        slot: usize,
        now: Time,
        rng: &mut R,
    ) -> AfterFailure {
        let after = match self.endpoints.get_mut(addr) {
            Some(e) => e.dial_failed(slot, now, rng),
            None => AfterFailure::Exhausted(Duration::ZERO),
        };
        self.forget_empty();
        after
    }

    /// A dial finished after its result stopped mattering.
    pub(crate) fn dial_abandoned(&mut self, addr: &A, slot: usize) {
        if let Some(e) = self.endpoints.get_mut(addr) {
            e.dial_abandoned(slot);
        }
        self.forget_empty();
    }

    /// What to do with an inbound connection from `addr` of this rank.
    pub(crate) fn admission(&self, addr: &A, rank: ConnRank) -> Admission {
        match self.endpoints.get(addr) {
            Some(e) => e.admission(rank),
            None => Admission::Admit,
        }
    }

    /// An inbound connection from `addr` came up (an endpoint not in the
    /// address set becomes one known from its connections).
    pub(crate) fn add_inbound(&mut self, addr: &A, key: ConnKey, conn: Conn<H>, now: Time) {
        if !self.endpoints.contains_key(addr) {
            let e = self.endpoint(Origin::Inbound, now);
            self.endpoints.insert(addr.clone(), e);
        }
        if let Some(e) = self.endpoints.get_mut(addr) {
            e.add_inbound(key, conn, now);
        }
    }

    /// The usable connections beyond N on each endpoint, worst first.
    pub(crate) fn excess(&self) -> Vec<ConnKey> {
        self.endpoints.values().flat_map(Endpoint::excess).collect()
    }

    /// Connections to replace for their age now, at most one per endpoint
    /// (see [`Endpoint::aged`]).
    pub(crate) fn aged(&self, now: Time) -> Vec<ConnKey> {
        self.endpoints
            .values()
            .filter_map(|e| e.aged(now))
            .collect()
    }

    /// Usable connections of `addr` that reach another instance of the
    /// peer than `instance`: they lead to a process that is gone.
    pub(crate) fn stale(&self, addr: &A, instance: u64) -> Vec<ConnKey> {
        self.endpoints
            .get(addr)
            .map(|e| e.stale(instance))
            .unwrap_or_default()
    }

    /// Starts retiring `key`. Returns its handle, or `None` if it is
    /// unknown or already retiring.
    pub(crate) fn retire(&mut self, key: ConnKey) -> Option<&H> {
        self.holder_mut(key)?.retire(key)
    }

    /// Connection `key` closed at `now` (see [`Endpoint::closed`]).
    pub(crate) fn closed<R: Rng + ?Sized>(
        &mut self,
        key: ConnKey,
        failure: bool,
        now: Time,
        rng: &mut R,
    ) -> Option<Closed<H>> {
        let closed = self.holder_mut(key)?.closed(key, failure, now, rng);
        self.forget_empty();
        closed
    }

    /// The peer process behind connection `key` announced its drain: its
    /// endpoint takes no new streams and is not dialled until its
    /// connections are gone. Returns that endpoint.
    pub(crate) fn announced_drain(&mut self, key: ConnKey) -> Option<A> {
        let (addr, e) = self.endpoints.iter_mut().find(|(_, e)| e.has(key))?;
        e.announced_drain = true;
        Some(addr.clone())
    }

    /// `addr` failed `consecutive_failures` times in a row: eject it, unless
    /// that would eject more than `max_percent` of the endpoints. Returns
    /// for how long.
    pub(crate) fn eject(&mut self, addr: &A, now: Time) -> Option<Duration> {
        let routable = self.endpoints.values().filter(|e| e.routable()).count();
        let ejected = self.endpoints.values().filter(|e| e.ejected()).count();
        let allowed = routable * self.ejection.max_percent as usize / 100;
        let e = self.endpoints.get_mut(addr)?;
        if e.ejected() || !e.routable() || ejected + 1 > allowed {
            return None;
        }
        e.ejection.times = e.ejection.times.saturating_add(1);
        let time = self.ejection.base_time * e.ejection.times;
        e.ejection.until = Some(now + time);
        Some(time)
    }

    /// Ends the ejections that are over at `now`; returns the endpoints
    /// back in the balancing.
    pub(crate) fn end_ejections(&mut self, now: Time) -> Vec<A> {
        let mut back = Vec::new();
        for (a, e) in self.endpoints.iter_mut() {
            if e.ejection.until.is_some_and(|t| t <= now) {
                e.ejection.until = None;
                back.push(a.clone());
            }
        }
        back
    }

    /// Dial now every dialled endpoint that ran out of attempts, whatever
    /// the backoff says (an explicit `dial_peer`).
    pub(crate) fn redial_now(&mut self, now: Time) {
        for e in self.endpoints.values_mut() {
            if e.dialable() && e.exhausted() {
                e.redial_now(now);
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
        let all = self
            .endpoints
            .values_mut()
            .flat_map(Endpoint::take_all)
            .collect();
        self.forget_empty();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::balance::PeakEwma;
    use crate::pool::conn::Direction;
    use crate::pool::state::EndpointState;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    type Core = PeerCore<(), (), u16>;
    const A: u16 = 1;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            jitter,
            ..RetryPolicy::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn addrs(list: &[u16]) -> BTreeSet<u16> {
        list.iter().copied().collect()
    }

    /// A peer with one listed endpoint, `A`.
    fn core(target: usize, jitter: f64) -> Core {
        let mut p = Core::new(
            policy(jitter),
            ms(10_000),
            target,
            EjectionPolicy::default(),
        );
        p.set_addrs(&addrs(&[A]), Time::ZERO);
        p
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

    fn slots(due: Vec<(u16, usize)>) -> Vec<usize> {
        due.into_iter().map(|(_, s)| s).collect()
    }

    /// Fails every dial of a silent endpoint until it is exhausted; returns
    /// the time of the next probe.
    fn fail_until_exhausted(p: &mut Core, rng: &mut SmallRng) -> Time {
        let mut now = Time::ZERO;
        while !p.exhausted() {
            let s = slots(p.due(now));
            p.dial_failed(&A, s[0], now, rng);
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
            let started = slots(p.due(now));
            assert_eq!(started.len(), 1, "only the lead dials a silent peer");
            assert_eq!(p.state(), PeerState::Connecting);
            attempt_times.push(now);
            let after = p.dial_failed(&A, started[0], now, &mut rng);
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
        let probe = slots(p.due(now));
        assert_eq!(probe.len(), 1);
        assert_eq!(
            p.state(),
            PeerState::Unreachable,
            "probing stays unreachable"
        );
        assert!(matches!(
            p.dial_failed(&A, probe[0], now, &mut rng),
            AfterFailure::Exhausted(_)
        ));
        // A successful probe brings the other slots in at once.
        let later = now + Duration::from_secs(30);
        let probe = slots(p.due(later));
        p.dial_succeeded(&A, probe[0], 1, conn(1), later);
        assert!(!p.exhausted());
        assert_eq!(p.state(), PeerState::Degraded);
        assert_eq!(p.due(later).len(), 2);
    }

    #[test]
    fn closes_back_off_until_a_connection_stays_up() {
        let mut p = core(1, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        let mut now = Time::ZERO;
        let s = slots(p.due(now))[0];
        p.dial_succeeded(&A, s, 1, conn(1), now);
        let mut waits = Vec::new();
        for key in 1..=4 {
            now += ms(50);
            let closed = p.closed(key, true, now, &mut rng).unwrap();
            assert!(closed.failure);
            let at = p.next_wakeup().unwrap();
            waits.push(at - now);
            now = at;
            let s = slots(p.due(now))[0];
            p.dial_succeeded(&A, s, key + 1, conn(key + 1), now);
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
        let first = slots(p.due(now));
        p.dial_succeeded(&A, first[0], 1, conn(1), now);
        assert_eq!(p.due(now).len(), 2);
        assert!(p.due(now + Duration::from_secs(100)).is_empty());
        p.add_inbound(&A, 9, conn(9), now);
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
        let s = slots(p.due(Time::ZERO))[0];
        p.dial_failed(&A, s, Time::ZERO, &mut rng);
        p.add_inbound(&A, 7, conn(7), ms(10));
        // The peer answered: the other slot dials now.
        assert_eq!(p.due(ms(10)).len(), 1);
        // Over the target: held unslotted until retired.
        p.add_inbound(&A, 8, conn(8), ms(20));
        assert_eq!(p.held(), 2);
        let closed = p.closed(8, false, ms(30), &mut rng).unwrap();
        assert!(!closed.failure);
        assert_eq!(p.held(), 1);
    }

    #[test]
    fn closing_a_slotted_connection_rebinds_an_unslotted_one() {
        let mut p = core(1, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        p.add_inbound(&A, 1, conn(1), Time::ZERO);
        p.add_inbound(&A, 2, conn(2), Time::ZERO);
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
        let probe = slots(p.due(now));
        assert_eq!(p.state(), PeerState::Unreachable);
        p.redial_now(now);
        assert_eq!(p.state(), PeerState::Connecting);
        // The probe fails: a retry follows after a backoff, not a probe.
        assert!(matches!(
            p.dial_failed(&A, probe[0], now, &mut rng),
            AfterFailure::Retry(_)
        ));
    }

    #[test]
    fn an_accept_only_peer_is_never_dialled() {
        let mut p = Core::new(policy(0.1), ms(1), 3, EjectionPolicy::default());
        assert!(p.due(Time::ZERO).is_empty());
        assert_eq!(p.next_wakeup(), None);
        assert_eq!(p.state(), PeerState::Connecting);
        p.add_inbound(&A, 1, conn(1), Time::ZERO);
        assert!(p.due(Time::MAX).is_empty());
        assert_eq!(p.state(), PeerState::Degraded);
        // Its only connection gone, the endpoint known from it goes too.
        let mut rng = SmallRng::seed_from_u64(0);
        p.closed(1, true, ms(1), &mut rng);
        assert_eq!(p.endpoints().count(), 0);
        assert_eq!(p.state(), PeerState::Connecting);
    }

    #[test]
    fn retiring_leaves_the_slot_held_and_its_close_is_no_failure() {
        let mut p = core(2, 0.0);
        let mut rng = SmallRng::seed_from_u64(0);
        let s = slots(p.due(Time::ZERO));
        p.dial_succeeded(&A, s[0], 1, conn(1), Time::ZERO);
        let s = slots(p.due(Time::ZERO));
        p.dial_succeeded(&A, s[0], 2, conn(2), Time::ZERO);
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
            p.add_inbound(&A, seq, conn(seq), Time::ZERO);
        }
        assert_eq!(p.excess(), vec![3]);
        let worse = ConnRank {
            dialed_by_smaller_id: true,
            seq: 9,
        };
        assert_eq!(p.admission(&A, worse), Admission::Refuse);
        p.retire(3);
        assert!(p.excess().is_empty());
        assert_eq!(p.admission(&A, worse), Admission::Refuse, "2 usable = N");
        p.retire(2);
        assert_eq!(p.admission(&A, worse), Admission::Admit);
        assert_eq!(p.admission(&7, worse), Admission::Admit, "another endpoint");
    }

    #[test]
    fn aged_connections_are_replaced_one_at_a_time_and_only_at_full_strength() {
        let mut p = core(2, 0.0);
        p.add_inbound(&A, 1, conn(1).expiring_at(Some(ms(1_000))), Time::ZERO);
        p.add_inbound(&A, 2, conn(2).expiring_at(Some(ms(900))), Time::ZERO);
        assert!(p.aged(ms(899)).is_empty(), "none expired yet");
        assert_eq!(p.aged(ms(950)), vec![2]);
        assert_eq!(
            p.aged(ms(5_000)),
            vec![2],
            "the longest expired first, one only"
        );
        p.retire(2);
        assert!(
            p.aged(ms(5_000)).is_empty(),
            "not while another connection of the endpoint is being retired"
        );
        let mut rng = SmallRng::seed_from_u64(3);
        p.closed(2, false, ms(5_000), &mut rng);
        assert!(
            p.aged(ms(5_000)).is_empty(),
            "not below N: its replacement comes first"
        );
        p.add_inbound(&A, 3, conn(3), ms(5_000));
        assert_eq!(p.aged(ms(5_000)), vec![1]);
        // No limit, or a connection the peer dialled: never aged.
        let mut q = core(1, 0.0);
        q.add_inbound(&A, 1, conn(1), Time::ZERO);
        assert!(q.aged(Time::MAX).is_empty());
    }

    #[test]
    fn connection_lifetimes_spread_over_plus_minus_ten_percent() {
        use crate::pool::conn::expiry;
        let mut rng = SmallRng::seed_from_u64(11);
        assert_eq!(expiry(ms(5), Duration::ZERO, &mut rng), None);
        let age = Duration::from_secs(100);
        let lives: Vec<f64> = (0..2_000)
            .map(|_| (expiry(ms(5), age, &mut rng).unwrap() - ms(5)).as_secs_f64())
            .collect();
        let (lo, hi) = lives
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        assert!(lo >= 90.0 && hi <= 110.0, "{lo}..{hi}");
        assert!(
            lo < 91.0 && hi > 109.0,
            "spread over the whole band: {lo}..{hi}"
        );
    }

    #[test]
    fn stale_names_the_connections_to_another_instance_of_that_endpoint() {
        let mut p = core(3, 0.0);
        p.add_inbound(&A, 1, conn_of(1, 7), Time::ZERO);
        p.add_inbound(&A, 2, conn_of(2, 8), Time::ZERO);
        // Another endpoint is another process, whatever its instance.
        p.add_inbound(&9, 3, conn_of(3, 5), Time::ZERO);
        assert_eq!(p.stale(&A, 8), vec![1]);
        p.retire(1);
        assert!(p.stale(&A, 8).is_empty(), "already going");
    }

    #[test]
    fn draining_stops_dials_and_is_final() {
        let mut p = core(2, 0.0);
        let s = slots(p.due(Time::ZERO));
        assert!(p.drain());
        assert!(!p.drain());
        assert_eq!(p.state(), PeerState::Draining);
        p.dial_abandoned(&A, s[0]);
        assert!(p.due(Time::MAX).is_empty());
        assert_eq!(p.next_wakeup(), None);
        assert_eq!(p.current_backoff(), Duration::ZERO);
        p.add_inbound(&A, 1, conn(1), Time::ZERO);
        assert_eq!(p.state(), PeerState::Draining);
    }

    /// Three endpoints, each holding N = 2 connections.
    fn three_endpoints() -> Core {
        let mut p = Core::new(policy(0.0), ms(10_000), 2, EjectionPolicy::default());
        p.set_addrs(&addrs(&[1, 2, 3]), Time::ZERO);
        let mut key = 0;
        for _ in 0..2 {
            for (a, s) in p.due(Time::ZERO) {
                key += 1;
                p.dial_succeeded(&a, s, key, conn(key), Time::ZERO);
            }
        }
        assert_eq!(p.held(), 6);
        p
    }

    #[test]
    fn each_endpoint_gets_n_connections_and_the_peer_is_healthy_when_all_have() {
        let mut p = Core::new(policy(0.0), ms(10_000), 2, EjectionPolicy::default());
        p.set_addrs(&addrs(&[1, 2, 3]), Time::ZERO);
        let first = p.due(Time::ZERO);
        assert_eq!(first.len(), 3, "one lead per endpoint: {first:?}");
        for (i, (a, s)) in first.into_iter().enumerate() {
            p.dial_succeeded(&a, s, i as u64, conn(i as u64), Time::ZERO);
        }
        assert_eq!(p.state(), PeerState::Degraded);
        for (i, (a, s)) in p.due(Time::ZERO).into_iter().enumerate() {
            p.dial_succeeded(&a, s, 10 + i as u64, conn(10 + i as u64), Time::ZERO);
        }
        assert_eq!(p.state(), PeerState::Healthy);
        assert!(p
            .endpoints()
            .all(|(_, e)| e.state() == EndpointState::Healthy && e.held() == 2));
    }

    #[test]
    fn an_endpoint_that_leaves_the_address_set_drains_and_goes_with_its_last_connection() {
        let mut p = three_endpoints();
        let mut rng = SmallRng::seed_from_u64(0);
        let retire = p.set_addrs(&addrs(&[1, 2, 4]), ms(5));
        let of_3: Vec<ConnKey> = p
            .conns()
            .filter(|(a, _, _)| **a == 3)
            .map(|(_, k, _)| k)
            .collect();
        assert_eq!(retire, of_3, "the vanished endpoint's connections retire");
        for k in &retire {
            assert!(p.retire(*k).is_some());
        }
        let state_of = |p: &Core, a: u16| {
            p.endpoints()
                .find(|(x, _)| **x == a)
                .map(|(_, e)| e.state())
        };
        assert_eq!(state_of(&p, 3), Some(EndpointState::Draining));
        assert_eq!(state_of(&p, 4), Some(EndpointState::Connecting));
        assert_eq!(
            p.state(),
            PeerState::Degraded,
            "the new endpoint has nothing yet"
        );
        let due = p.due(ms(5));
        assert!(
            due.iter().all(|(a, _)| *a == 4),
            "only the new one dials: {due:?}"
        );
        for k in retire {
            p.closed(k, false, ms(6), &mut rng);
        }
        assert_eq!(state_of(&p, 3), None, "gone with its last connection");
        // Back in the set later: dialled again from scratch.
        p.set_addrs(&addrs(&[1, 2, 3, 4]), ms(7));
        assert!(p.due(ms(7)).iter().any(|(a, _)| *a == 3));
    }

    #[test]
    fn ejection_is_bounded_by_max_percent_and_grows_with_each_ejection() {
        let mut p = three_endpoints();
        // 50 % of 3 endpoints is 1.
        assert_eq!(p.eject(&1, ms(0)), Some(Duration::from_secs(10)));
        assert_eq!(p.eject(&2, ms(0)), None, "a second would pass 50 %");
        assert_eq!(p.eject(&1, ms(0)), None, "already ejected");
        assert_eq!(p.next_wakeup(), Some(Duration::from_secs(10)));
        assert!(p.end_ejections(Duration::from_secs(9)).is_empty());
        assert_eq!(p.end_ejections(Duration::from_secs(10)), vec![1]);
        assert_eq!(
            p.eject(&1, Duration::from_secs(11)),
            Some(Duration::from_secs(20)),
            "the second ejection lasts twice the base"
        );
        let e1 = p.endpoints().find(|(a, _)| **a == 1).unwrap().1;
        assert_eq!(e1.state(), EndpointState::Ejected);
        assert_eq!(
            e1.usable(),
            2,
            "its connections stay; the balancer skips it"
        );
        // One endpoint alone is never ejected (50 % of 1 is 0).
        let mut lone = core(1, 0.0);
        assert_eq!(lone.eject(&A, ms(0)), None);
    }

    #[test]
    fn an_announced_drain_stops_routing_and_dialling_until_the_connections_are_gone() {
        let mut p = three_endpoints();
        let mut rng = SmallRng::seed_from_u64(0);
        let key = p
            .conns()
            .find(|(a, _, _)| **a == 2)
            .map(|(_, k, _)| k)
            .unwrap();
        assert_eq!(p.announced_drain(key), Some(2));
        let e2 = |p: &Core| {
            p.endpoints()
                .find(|(a, _)| **a == 2)
                .map(|(_, e)| (e.state(), e.usable()))
        };
        assert_eq!(e2(&p), Some((EndpointState::Draining, 0)));
        assert_eq!(p.usable(), 4);
        assert_eq!(p.state(), PeerState::Healthy, "the others still hold N");
        let keys: Vec<ConnKey> = p
            .conns()
            .filter(|(a, _, _)| **a == 2)
            .map(|(_, k, _)| k)
            .collect();
        p.closed(keys[0], true, ms(1), &mut rng);
        assert!(p.due(Time::MAX).is_empty(), "not redialled while it drains");
        p.closed(keys[1], true, ms(1), &mut rng);
        assert_eq!(e2(&p).map(|s| s.0), Some(EndpointState::Connecting));
        assert!(
            p.due(Time::MAX).iter().any(|(a, _)| *a == 2),
            "redialled once its connections are gone"
        );
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Advance(u64),
        Fail(usize),
        Succeed(usize),
        Inbound(u16),
        Close(usize, bool),
        Retire(usize),
        Redial,
        Addrs(Vec<u16>),
    }

    fn ev(endpoints: u16) -> impl Strategy<Value = Ev> {
        prop_oneof![
            (0u64..40_000).prop_map(Ev::Advance),
            (0usize..8).prop_map(Ev::Fail),
            (0usize..8).prop_map(Ev::Succeed),
            (1u16..=endpoints).prop_map(Ev::Inbound),
            ((0usize..16), any::<bool>()).prop_map(|(i, f)| Ev::Close(i, f)),
            (0usize..16).prop_map(Ev::Retire),
            Just(Ev::Redial),
            proptest::collection::vec(1u16..=endpoints, 0..3).prop_map(Ev::Addrs),
        ]
    }

    /// The derived states agree with the connections they come from.
    fn states_agree(p: &Core, target: usize) -> Result<(), TestCaseError> {
        for (_, e) in p.endpoints() {
            let usable = e.usable();
            match e.state() {
                EndpointState::Healthy => prop_assert!(usable >= target),
                EndpointState::Degraded => prop_assert!(usable > 0 && usable < target),
                EndpointState::Unreachable | EndpointState::Connecting => {
                    prop_assert_eq!(usable, 0)
                }
                EndpointState::Draining => prop_assert_eq!(usable, 0),
                EndpointState::Ejected => prop_assert!(false, "never ejected here"),
            }
        }
        let usable = p.usable();
        match p.state() {
            PeerState::Healthy => prop_assert!(usable >= target),
            PeerState::Degraded => prop_assert!(usable > 0),
            PeerState::Unreachable => prop_assert!(p.held() == 0 && p.exhausted()),
            PeerState::Connecting => prop_assert_eq!(usable, 0),
            PeerState::Draining => prop_assert!(false, "never drained here"),
        }
        Ok(())
    }

    proptest! {
        /// One endpoint, under any sequence of events: no dial starts at or
        /// beyond N, a silent peer gets no second dial in flight, and
        /// between two successes a slot makes at most `attempts_per_dial`
        /// attempts spaced by the backoff, then probes no faster than
        /// max_delay·(1-j); the derived state agrees with the connections.
        #[test]
        fn the_retry_rules_hold(events in proptest::collection::vec(ev(1), 1..200), target in 1usize..5, seed in any::<u64>()) {
            let pol = policy(0.1);
            let mut p = Core::new(pol.clone(), ms(5_000), target, EjectionPolicy::default());
            p.set_addrs(&addrs(&[A]), Time::ZERO);
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
                        if let AfterFailure::Exhausted(_) = p.dial_failed(&A, slot, now, &mut rng) {
                            probing[slot] = true;
                        }
                    }
                    Ev::Succeed(i) if !in_flight.is_empty() => {
                        let slot = in_flight.remove(i % in_flight.len());
                        next_conn += 1;
                        p.dial_succeeded(&A, slot, next_conn, conn(next_conn), now);
                        live.push(next_conn);
                        since_success.iter_mut().for_each(|a| *a = 0);
                        probing.iter_mut().for_each(|x| *x = false);
                    }
                    Ev::Inbound(_) => {
                        next_conn += 1;
                        p.add_inbound(&A, next_conn, conn(next_conn), now);
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
                let before_dialing = in_flight.len();
                for (_, slot) in p.due(now) {
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
                prop_assert_eq!(p.held(), live.len());
                if before_held == 0 {
                    // A silent peer gets one dial at a time (dials started
                    // while it still answered may be finishing).
                    prop_assert!(before_dialing == 0 || in_flight.len() == before_dialing);
                    prop_assert!(in_flight.len() <= before_dialing.max(1));
                }
                states_agree(&p, target)?;
            }
        }

        /// Several endpoints coming and going: N per endpoint, one dial at a
        /// time to a silent endpoint, states that agree with the
        /// connections, endpoints gone once unlisted and empty.
        #[test]
        fn endpoints_keep_their_own_rules(events in proptest::collection::vec(ev(3), 1..200), target in 1usize..4, seed in any::<u64>()) {
            let mut p = Core::new(policy(0.1), ms(5_000), target, EjectionPolicy::default());
            p.set_addrs(&addrs(&[1, 2]), Time::ZERO);
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut now = Time::ZERO;
            let mut next_conn = 100;
            let mut in_flight: Vec<(u16, usize)> = Vec::new();
            let mut live: Vec<ConnKey> = Vec::new();
            let mut listed = addrs(&[1, 2]);
            for e in events {
                match e {
                    Ev::Advance(d) => now += ms(d),
                    Ev::Fail(i) if !in_flight.is_empty() => {
                        let (a, s) = in_flight.remove(i % in_flight.len());
                        p.dial_failed(&a, s, now, &mut rng);
                    }
                    Ev::Succeed(i) if !in_flight.is_empty() => {
                        let (a, s) = in_flight.remove(i % in_flight.len());
                        next_conn += 1;
                        if !p.dial_succeeded(&a, s, next_conn, conn(next_conn), now) {
                            prop_assert!(!listed.contains(&a));
                            prop_assert!(p.retire(next_conn).is_some());
                        }
                        live.push(next_conn);
                    }
                    Ev::Inbound(a) => {
                        next_conn += 1;
                        p.add_inbound(&a, next_conn, conn(next_conn), now);
                        live.push(next_conn);
                    }
                    Ev::Close(i, failure) if !live.is_empty() => {
                        let c = live.remove(i % live.len());
                        prop_assert!(p.closed(c, failure, now, &mut rng).is_some());
                    }
                    Ev::Retire(i) if !live.is_empty() => {
                        let _ = p.retire(live[i % live.len()]);
                    }
                    Ev::Redial if p.exhausted() => p.redial_now(now),
                    Ev::Addrs(list) => {
                        listed = addrs(&list);
                        for k in p.set_addrs(&listed, now) {
                            prop_assert!(p.retire(k).is_some());
                        }
                    }
                    _ => {}
                }
                let before: BTreeMap<u16, (usize, usize)> = p
                    .endpoints()
                    .map(|(a, e)| (*a, (e.held(), in_flight.iter().filter(|(x, _)| x == a).count())))
                    .collect();
                let mut started: BTreeMap<u16, usize> = BTreeMap::new();
                for (a, s) in p.due(now) {
                    prop_assert!(listed.contains(&a), "dialled unlisted endpoint {}", a);
                    *started.entry(a).or_default() += 1;
                    in_flight.push((a, s));
                }
                for (a, n) in started {
                    let (held, dialing) = before.get(&a).copied().unwrap_or((0, 0));
                    prop_assert!(held + dialing + n <= target, "endpoint {} dialled past N", a);
                    if held == 0 {
                        prop_assert!(dialing + n <= 1, "a silent endpoint got a second dial");
                    }
                }
                prop_assert_eq!(p.held(), live.len());
                for (a, e) in p.endpoints() {
                    prop_assert!(listed.contains(a) || e.held() > 0 || e.dialing() > 0, "endpoint {} lingers", a);
                }
                states_agree(&p, target)?;
            }
        }
    }
}
