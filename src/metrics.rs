//! Every metric peerpool exports: name, help, unit, labels and buckets, in
//! this one file.
//!
//! Labels are bounded: `peer` (a configured name), `direction`, `result`,
//! `reason`, `strategy`, `state`, `forward`, `service`, `actor`, `version`.
//! Never a connection or stream id.
//!
//! Hot paths hold pre-registered handles ([`PeerMetrics`]) instead of
//! looking a metric up by name on every stream.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

pub const BUILD_INFO: &str = "peerpool_build_info";
pub const PEERS: &str = "peerpool_peers";
pub const CONNECTIONS: &str = "peerpool_connections";
pub const CONNECTION_TARGET: &str = "peerpool_connection_target";
pub const DIAL_ATTEMPTS: &str = "peerpool_dial_attempts_total";
pub const DIAL_DURATION: &str = "peerpool_dial_duration_seconds";
pub const CONNECTION_RESTARTS: &str = "peerpool_connection_restarts_total";
pub const CONNECTION_CLOSED: &str = "peerpool_connection_closed_total";
pub const BACKOFF: &str = "peerpool_backoff_seconds";
pub const HANDSHAKE_FAILURES: &str = "peerpool_handshake_failures_total";
pub const INBOUND_REFUSED: &str = "peerpool_inbound_refused_total";
pub const STREAMS_OPENED: &str = "peerpool_streams_opened_total";
pub const STREAM_OPEN_FAILURES: &str = "peerpool_stream_open_failures_total";
pub const STREAM_OPEN_DURATION: &str = "peerpool_stream_open_duration_seconds";
pub const ACTIVE_STREAMS: &str = "peerpool_active_streams";
pub const RTT: &str = "peerpool_connection_rtt_seconds";
pub const LOST_PACKETS: &str = "peerpool_lost_packets_total";
pub const BYTES: &str = "peerpool_bytes_total";
pub const FORWARD_CONNECTIONS: &str = "peerpool_forward_connections_total";
pub const SERVICE_STREAMS: &str = "peerpool_service_streams_total";
pub const FORWARD_DURATION: &str = "peerpool_forward_duration_seconds";
pub const ACTOR_RESTARTS: &str = "peerpool_actor_restarts_total";
pub const PEER_STATE: &str = "peerpool_peer_state";
pub const READY: &str = "peerpool_ready";

/// Buckets of `peerpool_stream_open_duration_seconds`: 10 µs to 10 s, two
/// per decade (every bucket is a series per peer, and series cost render
/// time at every scrape: see BENCHMARKS.md).
pub const STREAM_OPEN_BUCKETS: &[f64] = &[
    0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0,
];
/// Buckets of dial and forward durations: 1 ms to 60 s.
pub const LONG_BUCKETS: &[f64] = &[
    0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 60.0,
];

/// Series not touched for this long are dropped: that is how a removed
/// peer's series disappear. Live peers re-touch their counters and gauges
/// every [`TOUCH_INTERVAL`], so nothing that exists goes missing; a
/// histogram without samples for this long is dropped and starts again at
/// its next sample (Prometheus treats that as a counter reset).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(1);

/// Installs the Prometheus recorder for this process (once; later calls
/// return the same handle) and describes every metric.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::ALL, Some(IDLE_TIMEOUT))
                .set_buckets_for_metric(
                    Matcher::Full(STREAM_OPEN_DURATION.into()),
                    STREAM_OPEN_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LONG_BUCKETS)
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                // Only reachable with an empty bucket list, which the
                // constants above are not; fall back to summaries.
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Histogram samples pile up until upkeep folds them in; a process
            // that is never scraped must not grow without bound.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                });
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label is the peerpool version."
    );
    describe_gauge!(
        PEERS,
        "Peers by state (connecting, healthy, degraded, unreachable, draining)."
    );
    describe_gauge!(CONNECTIONS, "Open QUIC connections per peer and direction.");
    describe_gauge!(
        CONNECTION_TARGET,
        "Connections the pool aims to hold per peer (N)."
    );
    describe_counter!(
        DIAL_ATTEMPTS,
        "Dial attempts by result (ok, timeout, refused, tls, unreachable, error)."
    );
    describe_histogram!(
        DIAL_DURATION,
        Unit::Seconds,
        "Time of successful dials: QUIC + TLS handshake + hello."
    );
    describe_counter!(
        CONNECTION_RESTARTS,
        "Connections redialled after a failure, by the reason the old one ended."
    );
    describe_counter!(CONNECTION_CLOSED, "Connections closed, by reason.");
    describe_gauge!(
        BACKOFF,
        Unit::Seconds,
        "The backoff now being waited out before a redial; 0 when nothing waits."
    );
    describe_counter!(HANDSHAKE_FAILURES, "Handshakes refused, by reason (wrong_id, unknown_peer, bad_cert, expired, bad_signature, no_client_cert, alpn, version, tls, timeout).");
    describe_counter!(INBOUND_REFUSED, "Inbound connections refused after the handshake, by reason (over_limit, unknown, draining).");
    describe_counter!(
        STREAMS_OPENED,
        "Streams opened through the pool, by peer and strategy (refreshed every second)."
    );
    describe_counter!(STREAM_OPEN_FAILURES, "Stream opens that failed, by reason.");
    describe_histogram!(
        STREAM_OPEN_DURATION,
        Unit::Seconds,
        "Time to open a stream through the pool."
    );
    describe_gauge!(
        ACTIVE_STREAMS,
        "Streams open now, by peer and direction (outbound: opened by this node; refreshed every second)."
    );
    describe_gauge!(
        RTT,
        Unit::Seconds,
        "Smoothed RTT: the minimum over the peer's connections."
    );
    describe_counter!(
        LOST_PACKETS,
        "Packets declared lost on the peer's connections."
    );
    describe_counter!(
        BYTES,
        Unit::Bytes,
        "UDP bytes on the peer's connections, by direction (sent, received)."
    );
    describe_counter!(
        FORWARD_CONNECTIONS,
        "TCP connections accepted by a forward, by result."
    );
    describe_counter!(SERVICE_STREAMS, "Inbound streams for a service, by result.");
    describe_histogram!(
        FORWARD_DURATION,
        Unit::Seconds,
        "Lifetime of forwarded TCP connections."
    );
    describe_counter!(
        ACTOR_RESTARTS,
        "Actors restarted by the supervisor after a panic or an unexpected stop."
    );
    describe_gauge!(
        PEER_STATE,
        "1 for the state each peer is in (a state left reads 0 until it expires)."
    );
    describe_gauge!(
        READY,
        "1 when every peer with an address has a usable connection (as GET /readyz), else 0."
    );
}

/// Counts a handshake refused for `reason` (one of [`HANDSHAKE_REASONS`]).
pub fn handshake_failure(reason: &'static str) {
    metrics::counter!(HANDSHAKE_FAILURES, "reason" => reason).increment(1);
}

/// Counts an inbound connection refused after its handshake (one of
/// [`INBOUND_REFUSED_REASONS`]).
pub fn inbound_refused(reason: &'static str) {
    metrics::counter!(INBOUND_REFUSED, "reason" => reason).increment(1);
}

/// Counts an actor restart.
pub fn actor_restart(actor: &'static str) {
    metrics::counter!(ACTOR_RESTARTS, "actor" => actor).increment(1);
}

/// Moves one peer from one state's gauge to another's.
pub fn peer_state_change(from: Option<&'static str>, to: Option<&'static str>) {
    if let Some(from) = from {
        metrics::gauge!(PEERS, "state" => from).decrement(1.0);
    }
    if let Some(to) = to {
        metrics::gauge!(PEERS, "state" => to).increment(1.0);
    }
}

// In the per-peer label sets below, the first value is created at zero with
// the peer (so dashboards find the metric); the others appear at their first
// occurrence: each series costs render time at every scrape.

/// Why a stream open failed, as a label.
pub const OPEN_FAILURE_REASONS: [&str; 5] = [
    "timeout",
    "unreachable",
    "no_connection",
    "draining",
    "connection",
];
/// How a dial attempt ended.
pub const DIAL_RESULTS: [&str; 5] = ["ok", "timeout", "refused", "tls", "error"];
/// Why a connection closed (and, for restarts, why the old one ended).
pub const CLOSE_REASONS: [&str; 8] = [
    "timeout",
    "reset",
    "going_away",
    "excess",
    "refused",
    "peer_closed",
    "local",
    "error",
];
/// Why a handshake was refused.
pub const HANDSHAKE_REASONS: [&str; 10] = [
    "wrong_id",
    "unknown_peer",
    "bad_cert",
    "expired",
    "bad_signature",
    "no_client_cert",
    "alpn",
    "version",
    "tls",
    "timeout",
];
/// Why an inbound connection was refused after its handshake.
pub const INBOUND_REFUSED_REASONS: [&str; 3] = ["over_limit", "unknown", "draining"];

/// The position of `label` in `set`, or the last entry (the catch-all).
fn index_of(set: &[&str], label: &str) -> usize {
    set.iter()
        .position(|r| *r == label)
        .unwrap_or(set.len().saturating_sub(1))
}

type KeptKey = (&'static str, &'static str, String, &'static str, String);

fn kept() -> std::sync::MutexGuard<'static, std::collections::HashMap<KeptKey, Counter>> {
    static KEPT: OnceLock<std::sync::Mutex<std::collections::HashMap<KeptKey, Counter>>> =
        OnceLock::new();
    KEPT.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// A counter with two labels whose series must live as long as the node
/// (forwards and services exist until it stops): cached, and touched with
/// the node's series so the idle timeout never drops it.
pub fn kept_counter(
    name: &'static str,
    (k1, v1): (&'static str, &str),
    (k2, v2): (&'static str, &str),
) -> Counter {
    let key = (name, k1, v1.to_string(), k2, v2.to_string());
    kept()
        .entry(key)
        .or_insert_with(|| metrics::counter!(name, k1 => v1.to_string(), k2 => v2.to_string()))
        .clone()
}

/// Node-wide series with known label values, created at zero so that
/// dashboards and alerts see them before the first event.
pub struct NodeMetrics {
    handshake: Vec<Counter>,
    refused: Vec<Counter>,
    restarts: Counter,
    peers: Vec<Gauge>,
    pub ready: Gauge,
}

impl NodeMetrics {
    pub fn new() -> NodeMetrics {
        NodeMetrics {
            handshake: HANDSHAKE_REASONS
                .iter()
                .map(|r| metrics::counter!(HANDSHAKE_FAILURES, "reason" => *r))
                .collect(),
            refused: INBOUND_REFUSED_REASONS
                .iter()
                .map(|r| metrics::counter!(INBOUND_REFUSED, "reason" => *r))
                .collect(),
            restarts: metrics::counter!(ACTOR_RESTARTS, "actor" => "peer"),
            peers: crate::pool::PeerState::ALL
                .iter()
                .map(|s| metrics::gauge!(PEERS, "state" => s.as_str()))
                .collect(),
            ready: metrics::gauge!(READY),
        }
    }

    pub fn touch(&self) {
        for c in self.handshake.iter().chain(&self.refused) {
            c.increment(0);
        }
        self.restarts.increment(0);
        for g in &self.peers {
            g.increment(0.0);
        }
        self.ready.increment(0.0);
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        for c in kept().values() {
            c.increment(0);
        }
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics::new()
    }
}

/// Pre-registered handles for one peer's metrics.
/// A counter labelled by peer and one more label from a fixed set, whose
/// series are created on first use (the first value of the set up front).
struct LabelledCounter {
    name: &'static str,
    peer: String,
    key: &'static str,
    set: &'static [&'static str],
    cells: Vec<OnceLock<Counter>>,
}

impl LabelledCounter {
    fn new(
        name: &'static str,
        peer: &str,
        key: &'static str,
        set: &'static [&'static str],
    ) -> Self {
        let c = LabelledCounter {
            name,
            peer: peer.to_string(),
            key,
            set,
            cells: set.iter().map(|_| OnceLock::new()).collect(),
        };
        c.get(0);
        c
    }

    fn get(&self, i: usize) -> &Counter {
        let v = self.set[i];
        self.cells[i].get_or_init(
            || metrics::counter!(self.name, "peer" => self.peer.clone(), self.key => v),
        )
    }

    fn increment(&self, label: &str) {
        self.get(index_of(self.set, label)).increment(1);
    }

    fn touch(&self) {
        for c in self.cells.iter().filter_map(OnceLock::get) {
            c.increment(0);
        }
    }
}

pub struct PeerMetrics {
    pub connections_in: Gauge,
    pub connections_out: Gauge,
    pub target: Gauge,
    pub backoff: Gauge,
    pub streams_opened: Counter,
    pub active_out: Gauge,
    pub active_in: Gauge,
    pub rtt: Gauge,
    pub lost_packets: Counter,
    pub bytes_sent: Counter,
    pub bytes_received: Counter,
    open_failures: LabelledCounter,
    dials: LabelledCounter,
    closed: LabelledCounter,
    restarts: LabelledCounter,
    /// The `peerpool_peer_state` series of the current state.
    state: std::sync::Mutex<Option<Gauge>>,
    peer: String,
    // Histogram keys built once (their hash is cached), looked up per sample.
    dial_key: metrics::Key,
    open_key: metrics::Key,
}

impl PeerMetrics {
    pub fn new(peer: &str, strategy: &'static str) -> PeerMetrics {
        let p = peer.to_string();
        PeerMetrics {
            connections_in: metrics::gauge!(CONNECTIONS, "peer" => p.clone(), "direction" => "inbound"),
            connections_out: metrics::gauge!(CONNECTIONS, "peer" => p.clone(), "direction" => "outbound"),
            target: metrics::gauge!(CONNECTION_TARGET, "peer" => p.clone()),
            backoff: metrics::gauge!(BACKOFF, "peer" => p.clone()),
            streams_opened: metrics::counter!(STREAMS_OPENED, "peer" => p.clone(), "strategy" => strategy),
            active_out: metrics::gauge!(ACTIVE_STREAMS, "peer" => p.clone(), "direction" => "outbound"),
            active_in: metrics::gauge!(ACTIVE_STREAMS, "peer" => p.clone(), "direction" => "inbound"),
            rtt: metrics::gauge!(RTT, "peer" => p.clone()),
            lost_packets: metrics::counter!(LOST_PACKETS, "peer" => p.clone()),
            bytes_sent: metrics::counter!(BYTES, "peer" => p.clone(), "direction" => "sent"),
            bytes_received: metrics::counter!(BYTES, "peer" => p.clone(), "direction" => "received"),
            open_failures: LabelledCounter::new(
                STREAM_OPEN_FAILURES,
                peer,
                "reason",
                &OPEN_FAILURE_REASONS,
            ),
            dials: LabelledCounter::new(DIAL_ATTEMPTS, peer, "result", &DIAL_RESULTS),
            closed: LabelledCounter::new(CONNECTION_CLOSED, peer, "reason", &CLOSE_REASONS),
            restarts: LabelledCounter::new(CONNECTION_RESTARTS, peer, "reason", &CLOSE_REASONS),
            state: std::sync::Mutex::new(None),
            dial_key: metrics::Key::from_parts(
                DIAL_DURATION,
                vec![metrics::Label::new("peer", p.clone())],
            ),
            open_key: metrics::Key::from_parts(
                STREAM_OPEN_DURATION,
                vec![metrics::Label::new("peer", p.clone())],
            ),
            peer: p,
        }
    }

    fn histogram(key: &metrics::Key) -> metrics::Histogram {
        static META: metrics::Metadata<'static> =
            metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        metrics::with_recorder(|r| r.register_histogram(key, &META))
    }

    // Histograms are looked up on every sample instead of held: an idle
    // histogram is dropped after IDLE_TIMEOUT (that is how a removed peer's
    // series go), and a held handle would then record into nothing.

    /// Records a successful dial's duration.
    pub fn record_dial(&self, took: Duration) {
        Self::histogram(&self.dial_key).record(took.as_secs_f64());
    }

    /// Records a stream open's duration.
    pub fn record_open(&self, took: Duration) {
        Self::histogram(&self.open_key).record(took.as_secs_f64());
    }

    /// Sets `peerpool_peer_state`: the current state's series to 1. The
    /// previous state's series drops to 0 and, no longer touched, goes after
    /// IDLE_TIMEOUT: one series per peer instead of one per state, since
    /// every series costs render time at each scrape.
    pub fn set_state(&self, state: crate::pool::PeerState) {
        let mut current = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = current.take() {
            old.set(0.0);
        }
        let g = metrics::gauge!(PEER_STATE, "peer" => self.peer.clone(), "state" => state.as_str());
        g.set(1.0);
        *current = Some(g);
    }

    pub fn open_failure(&self, reason: &str) {
        self.open_failures.increment(reason);
    }

    pub fn dial_attempt(&self, result: &str) {
        self.dials.increment(result);
    }

    pub fn connection_closed(&self, reason: &str) {
        self.closed.increment(reason);
    }

    pub fn connection_restart(&self, reason: &str) {
        self.restarts.increment(reason);
    }

    /// Marks every counter and gauge of this peer as alive so the idle
    /// timeout keeps them.
    pub fn touch(&self) {
        for g in [
            &self.connections_in,
            &self.connections_out,
            &self.target,
            &self.backoff,
            &self.active_out,
            &self.active_in,
            &self.rtt,
        ] {
            g.increment(0.0);
        }
        if let Some(g) = &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            g.increment(0.0);
        }
        let singles = [
            &self.streams_opened,
            &self.lost_packets,
            &self.bytes_sent,
            &self.bytes_received,
        ];
        for c in singles {
            c.increment(0);
        }
        for l in [
            &self.open_failures,
            &self.dials,
            &self.closed,
            &self.restarts,
        ] {
            l.touch();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn peer_handles_render_exact_values_under_their_labels() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let m = PeerMetrics::new("b", "p2c");
            m.dial_attempt("timeout");
            m.dial_attempt("timeout");
            m.dial_attempt("ok");
            // An unknown label value lands on the catch-all, not a new series.
            m.dial_attempt("made_up");
            m.streams_opened.increment(3);
            m.open_failure("unreachable");
            m.connection_closed("going_away");
            m.connection_restart("going_away");
            m.set_state(crate::pool::PeerState::Degraded);
            m.connections_out.set(2.0);
        });
        let t = handle.render();
        let v = |s: &str| line_value(&t, s).unwrap_or_else(|| panic!("no {s} in\n{t}"));
        assert_eq!(
            v("peerpool_dial_attempts_total{peer=\"b\",result=\"timeout\"}"),
            2.0
        );
        assert_eq!(
            v("peerpool_dial_attempts_total{peer=\"b\",result=\"ok\"}"),
            1.0
        );
        assert_eq!(
            v("peerpool_dial_attempts_total{peer=\"b\",result=\"error\"}"),
            1.0
        );
        // Values that never occurred have no series.
        assert!(!t.contains("result=\"refused\""));
        assert!(!t.contains("made_up"));
        assert_eq!(
            v("peerpool_streams_opened_total{peer=\"b\",strategy=\"p2c\"}"),
            3.0
        );
        assert_eq!(
            v("peerpool_stream_open_failures_total{peer=\"b\",reason=\"unreachable\"}"),
            1.0
        );
        assert_eq!(
            v("peerpool_connection_closed_total{peer=\"b\",reason=\"going_away\"}"),
            1.0
        );
        assert_eq!(
            v("peerpool_connection_restarts_total{peer=\"b\",reason=\"going_away\"}"),
            1.0
        );
        assert_eq!(v("peerpool_peer_state{peer=\"b\",state=\"degraded\"}"), 1.0);
        assert!(
            !t.contains("state=\"healthy\""),
            "only the current state has a series"
        );
        assert_eq!(
            v("peerpool_connections{peer=\"b\",direction=\"outbound\"}"),
            2.0
        );
    }

    #[test]
    fn every_metric_name_follows_prometheus_conventions() {
        let counters = [
            DIAL_ATTEMPTS,
            CONNECTION_RESTARTS,
            CONNECTION_CLOSED,
            HANDSHAKE_FAILURES,
            INBOUND_REFUSED,
            STREAMS_OPENED,
            STREAM_OPEN_FAILURES,
            LOST_PACKETS,
            BYTES,
            FORWARD_CONNECTIONS,
            SERVICE_STREAMS,
            ACTOR_RESTARTS,
        ];
        for c in counters {
            assert!(c.starts_with("peerpool_") && c.ends_with("_total"), "{c}");
        }
        for h in [
            DIAL_DURATION,
            STREAM_OPEN_DURATION,
            FORWARD_DURATION,
            BACKOFF,
            RTT,
        ] {
            assert!(h.ends_with("_seconds"), "{h}");
        }
        assert_eq!(STREAM_OPEN_BUCKETS.first(), Some(&0.00001));
        assert_eq!(STREAM_OPEN_BUCKETS.last(), Some(&10.0));
        assert!(STREAM_OPEN_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}
