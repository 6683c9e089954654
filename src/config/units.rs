//! How values are written in the file: durations as seconds (floats or
//! integers) that become `Duration`s, addresses as `IP:PORT`. Each helper
//! refuses what it cannot represent with a message that says what is
//! expected; serde puts the key in front.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Durations above this are surely typos (and would overflow timers).
pub const MAX_SECS: f64 = 7.0 * 24.0 * 3600.0;

fn serialize_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Seconds to a `Duration`, rounded to the nanosecond (so that `0.1` is
/// exactly 100 ms), if `v` is finite and within `[min, MAX_SECS]`.
fn to_duration(v: f64, allow_zero: bool) -> Option<Duration> {
    let in_range = v.is_finite() && v <= MAX_SECS && (v > 0.0 || (allow_zero && v == 0.0));
    // In range, v * 1e9 is below 2^53: the cast is exact.
    in_range.then(|| Duration::from_nanos((v * 1e9).round() as u64))
}

/// A duration that must be above zero (timeouts, intervals, delays).
pub(crate) mod positive_secs {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        serialize_secs(d, s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        to_duration(v, false).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "must be a number of seconds above 0 and at most {MAX_SECS}, got {v}"
            ))
        })
    }
}

/// A duration that may be zero (a drain that does not wait).
pub(crate) mod non_negative_secs {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        serialize_secs(d, s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        to_duration(v, true).ok_or_else(|| {
            serde::de::Error::custom(format!("must be between 0 and {MAX_SECS} seconds, got {v}"))
        })
    }
}

/// `IP:PORT`, or a message that says that is what is expected.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!(
            "{:?} is not an IP:PORT address (e.g. \"127.0.0.1:4433\" or \"[::1]:4433\"); host names are not resolved",
            s.chars().take(80).collect::<String>()
        )
    })
}

/// For `skip_serializing_if`: an empty path means "not set".
pub(crate) fn path_is_empty(p: &std::path::Path) -> bool {
    p.as_os_str().is_empty()
}

/// `SocketAddr` as `IP:PORT` text.
pub(crate) mod addr {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = String::deserialize(d)?;
        parse_addr(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_to_the_nanosecond_and_refuse_what_no_timer_holds() {
        assert_eq!(to_duration(0.1, false), Some(Duration::from_millis(100)));
        assert_eq!(to_duration(5.0, false), Some(Duration::from_secs(5)));
        assert_eq!(to_duration(0.0, false), None);
        assert_eq!(to_duration(0.0, true), Some(Duration::ZERO));
        for bad in [-1.0, -0.0001, f64::NAN, f64::INFINITY, MAX_SECS + 1.0] {
            assert_eq!(to_duration(bad, true), None, "{bad}");
        }
        assert_eq!(
            to_duration(MAX_SECS, false),
            Some(Duration::from_secs(MAX_SECS as u64))
        );
    }
}
