//! The gate in front of inbound handshakes: what an unauthenticated client
//! may cost before it has proven who it is (`[handshake]`).
//!
//! - [`Gate::admit`] decides, per Initial and before any cryptography,
//!   whether to ignore it (its source failed too often and cools off), to
//!   refuse it (too many handshakes under way), to ask for a Retry (the
//!   source address is unproven and handshakes arrive fast, or always), or
//!   to let it start.
//! - [`Gate::failed`] and [`Gate::succeeded`] record how a handshake from
//!   a source ended: `failures_per_source` failures in a row start a
//!   cooling-off period that doubles with each repeat, up to an hour; a
//!   source that then keeps quiet as long as its last period starts from
//!   the first again. [`Gate::forgive_all`] forgets every source when what
//!   they failed against changes.
//!
//! Pure: time is handed in, the table of sources is bounded.

use std::collections::HashMap;
// An address is data here (`core::net`): the gate does no IO.
use core::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::time::Time;

/// When inbound handshakes must first prove their source address with a
/// QUIC Retry (a round trip, no state kept until then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressValidation {
    /// Once new handshakes arrive faster than `validate_above` per second.
    Auto,
    Always,
    Never,
}

/// The gate's rules (`[handshake]`, see `config::HandshakeConfig`).
#[derive(Debug, Clone)]
pub struct GateRules {
    pub max_pending: usize,
    pub address_validation: AddressValidation,
    pub validate_above: u32,
    pub failures_per_source: u32,
    pub cooloff: Duration,
}

/// Sources remembered at once; past it, sources that are not cooling off
/// are forgotten first, and new ones are not tracked while the table is
/// full of cooling-off ones (a flood from that many addresses is past what
/// per-source counting can stop).
const MAX_SOURCES: usize = 16 * 1024;
/// The longest cooling-off period.
const MAX_COOLOFF: Duration = Duration::from_secs(3600);
/// The window over which the rate of new handshakes is measured.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// What to do with one Initial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Drop it without an answer: its source is cooling off.
    Ignore,
    /// Refuse it (a CONNECTION_CLOSE, no state): too many under way.
    Refuse,
    /// Answer with a Retry: the client must prove its address first.
    Retry,
    Accept,
}

/// A source cooling off (`Gate::cooling_off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cooling {
    pub source: IpAddr,
    /// When its Initials are let through again.
    pub until: Time,
    /// Its cooling-off periods in a row, this one included.
    pub periods: u32,
}

#[derive(Debug, Default, Clone, Copy)]
struct Source {
    failures: u32,
    /// Cooling-off periods served so far (the next one lasts 2^strikes
    /// times `cooloff`).
    strikes: u32,
    until: Option<Time>,
}

#[derive(Debug)]
pub struct Gate {
    config: GateRules,
    sources: HashMap<IpAddr, Source>,
    /// Handshakes let through in the current rate window, and its start.
    window: (Time, u32),
    /// Handshakes let through and not finished.
    pending: usize,
}

impl Gate {
    pub fn new(config: GateRules) -> Gate {
        Gate {
            config,
            sources: HashMap::new(),
            window: (Time::ZERO, 0),
            pending: 0,
        }
    }

    /// The verdict for an Initial from `from`; `validated` says whether
    /// it carries a valid Retry token. `Accept` counts it as pending until
    /// [`Gate::finished`].
    pub fn admit(&mut self, from: IpAddr, validated: bool, now: Time) -> Verdict {
        if self.cooling(from, now) {
            return Verdict::Ignore;
        }
        if self.pending >= self.config.max_pending {
            return Verdict::Refuse;
        }
        if now.saturating_sub(self.window.0) >= RATE_WINDOW {
            self.window = (now, 0);
        }
        let fast = self.window.1 >= self.config.validate_above;
        let retry = !validated
            && match self.config.address_validation {
                AddressValidation::Always => true,
                AddressValidation::Never => false,
                AddressValidation::Auto => fast,
            };
        if retry {
            return Verdict::Retry;
        }
        self.window.1 = self.window.1.saturating_add(1);
        self.pending += 1;
        Verdict::Accept
    }

    /// Whether `from` cools off at `now`: its Initials are dropped unread.
    pub fn cooling(&self, from: IpAddr, now: Time) -> bool {
        self.sources
            .get(&from)
            .and_then(|s| s.until)
            .is_some_and(|until| now < until)
    }

    /// The sources cooling off at `now`, in address order.
    pub fn cooling_off(&self, now: Time) -> Vec<Cooling> {
        let mut cooling: Vec<Cooling> = self
            .sources
            .iter()
            .filter_map(|(addr, s)| {
                Some(Cooling {
                    source: *addr,
                    until: s.until.filter(|&until| now < until)?,
                    periods: s.strikes,
                })
            })
            .collect();
        cooling.sort_unstable_by_key(|c| c.source);
        cooling
    }

    /// A handshake let through by `admit` ended, either way.
    pub fn finished(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    /// A handshake from `from` failed to authenticate. Returns the
    /// cooling-off period it starts, if it starts one.
    pub fn failed(&mut self, from: IpAddr, now: Time) -> Option<Duration> {
        let k = self.config.failures_per_source;
        if k == 0 {
            return None;
        }
        if !self.sources.contains_key(&from) && self.sources.len() >= MAX_SOURCES {
            self.sources
                .retain(|_, s| s.until.is_some_and(|until| until > now));
            if self.sources.len() >= MAX_SOURCES {
                return None;
            }
        }
        let cooloff = self.config.cooloff;
        let s = self.sources.entry(from).or_default();
        if let Some(until) = s.until.filter(|&until| now >= until) {
            // Served its period: counts again from zero. It remembers its
            // strikes unless it then kept quiet as long as that period.
            let served = period(cooloff, s.strikes.saturating_sub(1));
            if now >= until + served {
                s.strikes = 0;
            }
            s.until = None;
            s.failures = 0;
        }
        s.failures += 1;
        if s.failures < k {
            return None;
        }
        let period = period(cooloff, s.strikes);
        s.strikes = s.strikes.saturating_add(1);
        s.failures = 0;
        s.until = Some(now + period);
        Some(period)
    }

    /// Forgets every source: what they failed against (the peers, the
    /// trusted CAs) changed. Returns how many were cooling off at `now`.
    pub fn forgive_all(&mut self, now: Time) -> usize {
        let cooling = self.cooling_off(now).len();
        self.sources.clear();
        cooling
    }

    /// A handshake from `from` authenticated: its record is cleared.
    pub fn succeeded(&mut self, from: IpAddr) {
        self.sources.remove(&from);
    }

    /// Sources remembered now (bounded by `MAX_SOURCES`).
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

/// The cooling-off period after `strikes` earlier ones: `cooloff` doubled
/// that often, at most [`MAX_COOLOFF`].
fn period(cooloff: Duration, strikes: u32) -> Duration {
    cooloff
        .checked_mul(1u32 << strikes.min(20))
        .unwrap_or(MAX_COOLOFF)
        .min(MAX_COOLOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: f64) -> Time {
        Duration::from_secs_f64(s)
    }

    fn gate(tune: impl FnOnce(&mut GateRules)) -> Gate {
        // `[handshake]`'s defaults (config::HandshakeConfig).
        let mut c = GateRules {
            max_pending: 256,
            address_validation: AddressValidation::Auto,
            validate_above: 100,
            failures_per_source: 5,
            cooloff: Duration::from_secs(10),
        };
        tune(&mut c);
        Gate::new(c)
    }

    const BAD: IpAddr = IpAddr::V4(core::net::Ipv4Addr::new(127, 0, 0, 2));
    const GOOD: IpAddr = IpAddr::V4(core::net::Ipv4Addr::new(127, 0, 0, 1));

    #[test]
    fn k_failures_start_a_cooloff_that_doubles_and_spares_other_sources() {
        let mut g = gate(|c| {
            c.failures_per_source = 3;
            c.cooloff = Duration::from_secs(10);
        });
        let mut now = secs(0.0);
        for round in 0..3u32 {
            for i in 0..3 {
                assert_eq!(
                    g.admit(BAD, true, now),
                    Verdict::Accept,
                    "round {round}, try {i}"
                );
                g.finished();
                let period = g.failed(BAD, now);
                if i < 2 {
                    assert_eq!(period, None);
                } else {
                    assert_eq!(period, Some(Duration::from_secs(10 << round)));
                }
            }
            assert_eq!(g.admit(BAD, true, now), Verdict::Ignore);
            assert_eq!(g.admit(GOOD, true, now), Verdict::Accept);
            g.finished();
            let period = Duration::from_secs(10 << round);
            assert_eq!(
                g.admit(BAD, true, now + period - secs(0.001)),
                Verdict::Ignore
            );
            now += period;
        }
        // A success forgets the source's record.
        g.succeeded(BAD);
        assert_eq!(g.sources(), 0);
    }

    #[test]
    fn the_cooling_list_names_each_source_until_its_period_ends() {
        let mut g = gate(|c| {
            c.failures_per_source = 1;
            c.cooloff = Duration::from_secs(10);
        });
        let sources = |g: &Gate, now| -> Vec<(IpAddr, Time, u32)> {
            g.cooling_off(now)
                .iter()
                .map(|c| (c.source, c.until, c.periods))
                .collect()
        };
        assert_eq!(sources(&g, secs(0.0)), vec![]);
        g.failed(BAD, secs(0.0));
        g.failed(GOOD, secs(4.0));
        // A failure below the threshold starts nothing.
        let mut h = gate(|c| c.failures_per_source = 2);
        h.failed(BAD, secs(0.0));
        assert_eq!(sources(&h, secs(0.0)), vec![]);

        assert_eq!(
            sources(&g, secs(5.0)),
            vec![(GOOD, secs(14.0), 1), (BAD, secs(10.0), 1)],
            "address order"
        );
        assert_eq!(sources(&g, secs(10.0)), vec![(GOOD, secs(14.0), 1)]);
        assert_eq!(sources(&g, secs(14.0)), vec![]);
        g.failed(GOOD, secs(14.0));
        assert_eq!(sources(&g, secs(14.0)), vec![(GOOD, secs(34.0), 2)]);
    }

    #[test]
    fn strikes_are_forgotten_after_a_quiet_period_and_all_on_a_change() {
        let mut g = gate(|c| {
            c.failures_per_source = 1;
            c.cooloff = Duration::from_secs(10);
        });
        assert_eq!(g.failed(BAD, secs(0.0)), Some(Duration::from_secs(10)));
        // Back right after its period: doubled.
        assert_eq!(g.failed(BAD, secs(10.0)), Some(Duration::from_secs(20)));
        // Quiet for the 20 s after its 20 s period ended (at 30): the
        // next period is the first one again.
        assert_eq!(g.failed(BAD, secs(49.9)), Some(Duration::from_secs(40)));
        assert_eq!(
            g.failed(BAD, secs(89.9 + 40.0)),
            Some(Duration::from_secs(10))
        );

        g.failed(GOOD, secs(200.0));
        assert_eq!(g.forgive_all(secs(205.0)), 1, "GOOD was cooling off");
        assert_eq!(g.sources(), 0);
        assert_eq!(g.admit(GOOD, true, secs(205.0)), Verdict::Accept);
    }

    #[test]
    fn pending_handshakes_are_capped() {
        let mut g = gate(|c| c.max_pending = 2);
        let now = secs(0.0);
        assert_eq!(g.admit(GOOD, true, now), Verdict::Accept);
        assert_eq!(g.admit(GOOD, true, now), Verdict::Accept);
        assert_eq!(g.admit(GOOD, true, now), Verdict::Refuse);
        g.finished();
        assert_eq!(g.admit(GOOD, true, now), Verdict::Accept);
        assert_eq!(g.pending(), 2);
    }

    #[test]
    fn retry_is_asked_past_the_rate_or_always_and_never_twice() {
        let mut g = gate(|c| c.validate_above = 3);
        let now = secs(5.0);
        for _ in 0..3 {
            assert_eq!(g.admit(GOOD, false, now), Verdict::Accept);
            g.finished();
        }
        assert_eq!(g.admit(GOOD, false, now), Verdict::Retry);
        // A validated client gets in however fast handshakes arrive.
        assert_eq!(g.admit(GOOD, true, now), Verdict::Accept);
        g.finished();
        // The next window starts over.
        assert_eq!(g.admit(GOOD, false, now + RATE_WINDOW), Verdict::Accept);
        let mut always = gate(|c| c.address_validation = AddressValidation::Always);
        assert_eq!(always.admit(GOOD, false, now), Verdict::Retry);
        assert_eq!(always.admit(GOOD, true, now), Verdict::Accept);
        let mut never = gate(|c| {
            c.address_validation = AddressValidation::Never;
            c.validate_above = 1;
        });
        for _ in 0..10 {
            assert_eq!(never.admit(GOOD, false, now), Verdict::Accept);
            never.finished();
        }
    }

    #[test]
    fn zero_failures_per_source_turns_cooling_off_off() {
        let mut g = gate(|c| c.failures_per_source = 0);
        for _ in 0..100 {
            assert_eq!(g.failed(BAD, secs(0.0)), None);
        }
        assert_eq!(g.admit(BAD, true, secs(0.0)), Verdict::Accept);
    }

    proptest! {
        /// However many sources fail, the table stays bounded, and a
        /// cooling-off period never exceeds an hour.
        #[test]
        fn the_table_is_bounded(ips in proptest::collection::vec(any::<u32>(), 1..2000), k in 1u32..4) {
            let mut g = gate(|c| { c.failures_per_source = k; c.cooloff = Duration::from_secs(1000); });
            for (i, ip) in ips.iter().enumerate() {
                let ip = IpAddr::V4(core::net::Ipv4Addr::from(*ip));
                if let Some(p) = g.failed(ip, secs(i as f64)) {
                    prop_assert!(p <= MAX_COOLOFF);
                }
                prop_assert!(g.sources() <= MAX_SOURCES);
            }
        }
    }
}
