//! Exponential backoff with jitter.
//!
//! Retry `k` (k = 1 after the first failed attempt) waits
//! `min(initial_delay * backoff_multiplier^(k-1), max_delay)`, multiplied by a
//! factor drawn uniformly from `[1 - jitter_factor, 1 + jitter_factor]`.
//! A dial is the first attempt plus `max_retries` retries.

use std::time::Duration;

use rand::Rng;

/// The retry rules of a dial, in the units the pool uses.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub multiplier: f64,
    pub jitter: f64,
}

impl RetryPolicy {
    /// Attempts one dial may make before the peer counts as unreachable.
    pub fn attempts_per_dial(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }

    /// The delay before retry `k` without jitter. `k = 0` means "no failure
    /// yet" and waits nothing.
    pub fn base_delay(&self, k: u32) -> Duration {
        if k == 0 {
            return Duration::ZERO;
        }
        let max = self.max_delay.as_secs_f64();
        // powi saturates to infinity for huge k, which min() then caps.
        let exp = i32::try_from(k - 1).unwrap_or(i32::MAX);
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.powi(exp);
        let capped = if secs.is_finite() { secs.min(max) } else { max };
        Duration::try_from_secs_f64(capped).unwrap_or(self.max_delay)
    }

    /// The delay before retry `k`, jittered with `rng`.
    pub fn delay<R: Rng + ?Sized>(&self, k: u32, rng: &mut R) -> Duration {
        self.jittered(self.base_delay(k), rng)
    }

    /// The delay between probes of an unreachable peer: `max_delay`, jittered.
    pub fn probe_delay<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        self.jittered(self.max_delay, rng)
    }

    fn jittered<R: Rng + ?Sized>(&self, base: Duration, rng: &mut R) -> Duration {
        let j = self.jitter.clamp(0.0, 1.0);
        if j == 0.0 || base.is_zero() {
            return base;
        }
        let factor = rng.random_range((1.0 - j)..=(1.0 + j));
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
    }
}

impl Default for RetryPolicy {
    /// The seed's defaults; `config::RetryConfig::default()` converts to this.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn the_defaults_make_four_attempts_with_these_delays() {
        let p = RetryPolicy::default();
        assert_eq!(p.attempts_per_dial(), 4);
        let got: Vec<_> = (1..=3).map(|k| p.base_delay(k)).collect();
        assert_eq!(
            got,
            [100, 200, 400].map(Duration::from_millis).to_vec(),
            "retries 1..=3 of the default policy"
        );
        assert_eq!(p.base_delay(20), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_inside_its_band() {
        let p = RetryPolicy::default();
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..10_000 {
            let d = p.delay(1, &mut rng).as_secs_f64();
            assert!((0.09..=0.11).contains(&d), "{d}");
        }
    }

    #[test]
    fn jitter_actually_spreads_delays() {
        // Without spread, N slots of many peers would retry in lockstep.
        let p = RetryPolicy::default();
        let mut rng = SmallRng::seed_from_u64(1);
        let delays: Vec<_> = (0..1000).map(|_| p.delay(3, &mut rng)).collect();
        let min = delays.iter().min().unwrap().as_secs_f64();
        let max = delays.iter().max().unwrap().as_secs_f64();
        assert!(max - min > 0.06, "spread {min}..{max}");
    }

    fn policy() -> impl Strategy<Value = RetryPolicy> {
        (
            0u32..20,
            1u64..5_000,
            1u64..120_000,
            1.0f64..10.0,
            0.0f64..=1.0,
        )
            .prop_map(|(max_retries, initial_ms, extra_ms, multiplier, jitter)| {
                RetryPolicy {
                    max_retries,
                    initial_delay: Duration::from_millis(initial_ms),
                    max_delay: Duration::from_millis(initial_ms + extra_ms),
                    multiplier,
                    jitter,
                }
            })
    }

    proptest! {
        #[test]
        fn delay_stays_between_the_bounds(p in policy(), k in 1u32..200, seed in any::<u64>()) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let d = p.delay(k, &mut rng).as_secs_f64();
            let hi = p.max_delay.as_secs_f64() * (1.0 + p.jitter) + 1e-9;
            let lo = p.initial_delay.as_secs_f64() * (1.0 - p.jitter) - 1e-9;
            prop_assert!(d <= hi, "{} > {}", d, hi);
            prop_assert!(d >= lo, "{} < {}", d, lo);
        }

        #[test]
        fn without_jitter_delay_grows_until_the_cap(mut p in policy(), k in 1u32..60) {
            p.jitter = 0.0;
            let mut rng = SmallRng::seed_from_u64(0);
            let a = p.delay(k, &mut rng);
            let b = p.delay(k + 1, &mut rng);
            prop_assert!(b >= a);
            if b < p.max_delay {
                // Strictly growing below the cap whenever the multiplier grows.
                prop_assert!(p.multiplier == 1.0 || b > a || a == p.max_delay);
            }
            prop_assert!(b <= p.max_delay);
        }

        #[test]
        fn probes_wait_about_max_delay(p in policy(), seed in any::<u64>()) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let d = p.probe_delay(&mut rng).as_secs_f64();
            let m = p.max_delay.as_secs_f64();
            prop_assert!(d >= m * (1.0 - p.jitter) - 1e-9 && d <= m * (1.0 + p.jitter) + 1e-9);
        }
    }
}
