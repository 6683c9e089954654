//! What an operator looks at first: `GET /status` (one JSON snapshot of the
//! peers, forwards and services), the page at `GET /` that draws it every
//! second, and the rates and quantiles `peerpool status` derives from two
//! snapshots. Counters come from the recorder's own rendering, so the
//! snapshot and `GET /metrics` never disagree.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::actors::PeerStatus;
use crate::metrics::scrape::{self, Sample};
use crate::metrics::{
    EJECTIONS, FORWARD_ACTIVE, FORWARD_CONNECTIONS, RETRIES, SERVICE_STREAMS, STREAM_OPEN_DURATION,
};

/// The page at `GET /`: self-contained (no external asset), it polls
/// `GET /status` every second.
pub const PAGE: &str = include_str!("status.html");

/// One snapshot of the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_seconds: f64,
    /// Every peer with an address has a usable connection (`/readyz`).
    pub ready: bool,
    pub peers: Vec<PeerView>,
    pub forwards: Vec<Flow>,
    pub services: Vec<Flow>,
}

/// A peer: its status plus what only the metrics hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    #[serde(flatten)]
    pub status: PeerStatus,
    /// Endpoint ejections by outlier detection, ever.
    pub ejections: u64,
    /// Stream-open latency histogram: (upper bound in seconds, cumulative
    /// count), ascending, finite bounds only (JSON has no infinity).
    pub open_buckets: Vec<(f64, u64)>,
    /// Stream opens timed, ever (the `+Inf` bucket).
    pub opens: u64,
}

/// A forward (named by its listen address) or a service: counts by result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    pub name: String,
    /// Connections held now (forwards only).
    pub active: Option<u64>,
    /// Connections or streams ever, by result (`ok`, `refused`, ...).
    pub results: BTreeMap<String, u64>,
    /// Connections retried on another endpoint (forwards only).
    pub retries: u64,
}

impl Flow {
    pub fn total(&self) -> u64 {
        self.results.values().sum()
    }

    /// Everything that did not end `ok`.
    pub fn failed(&self) -> u64 {
        self.total() - self.results.get("ok").copied().unwrap_or(0)
    }
}

/// Builds a snapshot from the pool's peers and the rendered metrics.
pub fn snapshot(
    peers: Vec<PeerStatus>,
    ready: bool,
    uptime_seconds: f64,
    rendered: &str,
) -> Status {
    let bucket = format!("{STREAM_OPEN_DURATION}_bucket");
    let samples = scrape::parse(
        rendered,
        &[
            EJECTIONS,
            FORWARD_ACTIVE,
            FORWARD_CONNECTIONS,
            RETRIES,
            SERVICE_STREAMS,
            &bucket,
        ],
    );
    // Grouped once, so that a snapshot stays linear in the peers (looking
    // each peer's samples up in the whole list is quadratic).
    let mut by_peer: HashMap<&str, Vec<&Sample>> = HashMap::new();
    for sample in &samples {
        if sample.name == bucket || sample.name == EJECTIONS {
            if let Some(peer) = sample.label("peer") {
                by_peer.entry(peer).or_default().push(sample);
            }
        }
    }
    let peers = peers
        .into_iter()
        .map(|status| {
            let mine = by_peer
                .get(status.name.as_str())
                .map_or(&[][..], Vec::as_slice);
            let mut open_buckets: Vec<(f64, u64)> = mine
                .iter()
                .filter(|s| s.name == bucket)
                .filter_map(|s| Some((le(s)?, s.value as u64)))
                .collect();
            open_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let opens = match open_buckets.last() {
                Some(&(le, n)) if le.is_infinite() => {
                    open_buckets.pop();
                    n
                }
                _ => 0,
            };
            PeerView {
                opens,
                ejections: mine
                    .iter()
                    .filter(|s| s.name == EJECTIONS)
                    .map(|s| s.value as u64)
                    .sum(),
                open_buckets,
                status,
            }
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds,
        ready,
        peers,
        forwards: flows(&samples, "forward", FORWARD_CONNECTIONS),
        services: flows(&samples, "service", SERVICE_STREAMS),
    }
}

fn le(s: &Sample) -> Option<f64> {
    match s.label("le")? {
        "+Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

fn flows(samples: &[Sample], key: &str, results: &str) -> Vec<Flow> {
    let mut out: BTreeMap<String, Flow> = BTreeMap::new();
    for s in samples {
        let Some(name) = s.label(key) else { continue };
        let flow = out.entry(name.to_string()).or_insert_with(|| Flow {
            name: name.to_string(),
            active: None,
            results: BTreeMap::new(),
            retries: 0,
        });
        if s.name == results {
            if let Some(r) = s.label("result") {
                *flow.results.entry(r.to_string()).or_default() += s.value as u64;
            }
        } else if s.name == RETRIES {
            flow.retries += s.value as u64;
        } else if s.name == FORWARD_ACTIVE {
            flow.active = Some(s.value.max(0.0) as u64);
        }
    }
    out.into_values().collect()
}

/// What changed between two snapshots of one peer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerRates {
    pub streams_per_sec: f64,
    pub failures_per_sec: f64,
    /// Quantiles of the opens in between (None without any), seconds: the
    /// upper bound of the bucket that holds the quantile, as Prometheus'
    /// `histogram_quantile` would interpolate it.
    pub open_p50: Option<f64>,
    pub open_p99: Option<f64>,
}

impl PeerRates {
    pub fn between(before: &PeerView, after: &PeerView, seconds: f64) -> PeerRates {
        let per_sec = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds.max(1e-9);
        let delta: Vec<(f64, u64)> = after
            .open_buckets
            .iter()
            .map(|&(le, n)| {
                let was = before
                    .open_buckets
                    .iter()
                    .find(|b| b.0 == le)
                    .map_or(0, |b| b.1);
                (le, n.saturating_sub(was))
            })
            .collect();
        PeerRates {
            streams_per_sec: per_sec(before.status.streams_opened, after.status.streams_opened),
            failures_per_sec: per_sec(
                before.status.stream_open_failures,
                after.status.stream_open_failures,
            ),
            open_p50: quantile(&delta, after.opens.saturating_sub(before.opens), 0.5),
            open_p99: quantile(&delta, after.opens.saturating_sub(before.opens), 0.99),
        }
    }
}

/// `histogram_quantile` over cumulative finite buckets and the count of
/// everything (`total`): linear within the bucket that holds rank `q`; the
/// highest finite bound when it lies above them all.
pub fn quantile(buckets: &[(f64, u64)], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(le, n) in buckets {
        if n as f64 >= rank {
            let in_bucket = (n - lower.1) as f64;
            let share = if in_bucket > 0.0 {
                (rank - lower.1 as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, n);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket_like_prometheus() {
        // 10 opens under 1 ms, 10 more between 1 and 2 ms.
        let b = [(0.001, 10), (0.002, 20)];
        assert_eq!(quantile(&b, 20, 0.5), Some(0.001));
        let p75 = quantile(&b, 20, 0.75).expect("some");
        assert!((p75 - 0.0015).abs() < 1e-12, "{p75}");
        assert_eq!(quantile(&[(0.001, 0)], 0, 0.5), None);
        // Everything above the last finite bound: that bound.
        assert_eq!(quantile(&[(0.001, 0)], 4, 0.99), Some(0.001));
    }

    #[test]
    fn flows_group_results_retries_and_held_connections_by_name() {
        let text = format!(
            "{FORWARD_CONNECTIONS}{{forward=\"127.0.0.1:1\",result=\"ok\"}} 5\n\
             {FORWARD_CONNECTIONS}{{forward=\"127.0.0.1:1\",result=\"refused\"}} 2\n\
             {RETRIES}{{forward=\"127.0.0.1:1\",reason=\"connect\"}} 1\n\
             {FORWARD_ACTIVE}{{forward=\"127.0.0.1:1\"}} 3\n\
             {SERVICE_STREAMS}{{service=\"echo\",result=\"ok\"}} 7\n"
        );
        let s = snapshot(Vec::new(), true, 1.0, &text);
        assert_eq!(s.forwards.len(), 1);
        let f = &s.forwards[0];
        assert_eq!(
            (f.total(), f.failed(), f.retries, f.active),
            (7, 2, 1, Some(3))
        );
        assert_eq!(s.services[0].name, "echo");
        assert_eq!((s.services[0].total(), s.services[0].active), (7, None));
    }
}
