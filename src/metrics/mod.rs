//! Every metric peerpool exports: name, help, unit, labels and buckets, in
//! this one module.
//!
//! - this file: the names, help texts, buckets, the recorder;
//! - `labels`: every label value, as enums;
//! - `series`: counters labelled by one of those enums, created on first
//!   use and kept alive while their owner lives;
//! - `peer`, `node`, `sidecar`: the pre-registered handles of a peer, of
//!   the node, of a forward and of a service, so that no hot path looks a
//!   metric up by name.
//!
//! Labels are bounded: `peer` (a configured name), `direction`, `result`,
//! `reason`, `strategy`, `state`, `forward`, `service`, `actor`, `version`.
//! Never a connection or stream id.

pub mod labels;
pub(crate) mod node;
pub(crate) mod peer;
pub mod scrape;
mod series;
pub(crate) mod sidecar;

use std::sync::OnceLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use labels::{
    list, ActorKind, CloseReason, DialResult, DnsResult, FailureReason, GateVerdict,
    HandshakeReason, InboundRefused, Label, ReloadResult, RetryReason, TransferResult,
};

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
pub const FORWARD_ACTIVE: &str = "peerpool_forward_active_connections";
pub const ACTOR_RESTARTS: &str = "peerpool_actor_restarts_total";
pub const PEER_STATE: &str = "peerpool_peer_state";
pub const READY: &str = "peerpool_ready";
pub const ENDPOINTS: &str = "peerpool_endpoints";
pub const EJECTIONS: &str = "peerpool_ejections_total";
pub const DNS_RESOLUTIONS: &str = "peerpool_dns_resolutions_total";
pub const RETRIES: &str = "peerpool_retries_total";
pub const CONFIG_RELOADS: &str = "peerpool_config_reloads_total";
pub const HANDSHAKE_GATE: &str = "peerpool_handshake_gate_total";
pub const HANDSHAKES_PENDING: &str = "peerpool_handshakes_pending";
pub const HANDSHAKE_SOURCES_COOLING: &str = "peerpool_handshake_sources_cooling";
pub const STREAM_MEMORY: &str = "peerpool_stream_memory_bytes";
pub const STREAMS_BACKLOGGED: &str = "peerpool_streams_backlogged";
pub const STREAM_MEMORY_LIMIT: &str = "peerpool_stream_memory_limit_bytes";
pub const ACCESS_LOG_LINES: &str = "peerpool_access_log_lines_total";

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
            build_info().set(1.0);
            handle
        })
        .clone()
}

fn build_info() -> metrics::Gauge {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"))
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label is the peerpool version."
    );
    describe_gauge!(
        PEERS,
        format!("Peers by state ({}).", list::<crate::pool::PeerState>())
    );
    describe_gauge!(CONNECTIONS, "Open QUIC connections per peer and direction.");
    describe_gauge!(
        CONNECTION_TARGET,
        "Connections the pool aims to hold per peer (N)."
    );
    describe_counter!(
        DIAL_ATTEMPTS,
        format!("Dial attempts by result ({}).", list::<DialResult>())
    );
    describe_histogram!(
        DIAL_DURATION,
        Unit::Seconds,
        "Time of successful dials: QUIC + TLS handshake + hello."
    );
    describe_counter!(
        CONNECTION_RESTARTS,
        format!(
            "Connections redialled after a failure, by the reason the old one ended ({}).",
            list::<CloseReason>()
        )
    );
    describe_counter!(
        CONNECTION_CLOSED,
        format!("Connections closed, by reason ({}).", list::<CloseReason>())
    );
    describe_gauge!(
        BACKOFF,
        Unit::Seconds,
        "The backoff now being waited out before a redial; 0 when nothing waits."
    );
    describe_counter!(
        HANDSHAKE_FAILURES,
        format!(
            "Handshakes refused, by reason ({}).",
            list::<HandshakeReason>()
        )
    );
    describe_counter!(
        INBOUND_REFUSED,
        format!(
            "Inbound connections refused after the handshake, by reason ({}).",
            list::<InboundRefused>()
        )
    );
    describe_counter!(
        STREAMS_OPENED,
        "Streams opened through the pool, by peer and strategy (refreshed every second)."
    );
    describe_counter!(
        STREAM_OPEN_FAILURES,
        format!(
            "Stream opens that failed, by reason ({}).",
            list::<FailureReason>()
        )
    );
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
        format!(
            "TCP connections accepted by a forward, by result ({}).",
            list::<TransferResult>()
        )
    );
    describe_counter!(
        SERVICE_STREAMS,
        "Inbound streams for a service, by result (as forwards)."
    );
    describe_histogram!(
        FORWARD_DURATION,
        Unit::Seconds,
        "Lifetime of forwarded TCP connections."
    );
    describe_gauge!(
        FORWARD_ACTIVE,
        "TCP connections a forward holds now; at forward.max_connections it stops accepting."
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
    describe_gauge!(
        ENDPOINTS,
        format!(
            "A peer's endpoints by state ({}).",
            list::<crate::pool::EndpointState>()
        )
    );
    describe_counter!(
        EJECTIONS,
        "Endpoints ejected by outlier detection (outlier.consecutive_failures in a row)."
    );
    describe_counter!(
        DNS_RESOLUTIONS,
        format!(
            "Resolutions of a peer's host name, by result ({}).",
            list::<DnsResult>()
        )
    );
    describe_counter!(
        RETRIES,
        format!(
            "Forwarded connections retried on another endpoint, by reason ({}).",
            list::<RetryReason>()
        )
    );
    describe_counter!(
        HANDSHAKE_GATE,
        format!(
            "Inbound Initials not let through to a handshake, by verdict ({}).",
            list::<GateVerdict>()
        )
    );
    describe_gauge!(
        HANDSHAKES_PENDING,
        "Inbound handshakes under way (handshake.max_pending caps them)."
    );
    describe_gauge!(
        HANDSHAKE_SOURCES_COOLING,
        "Source addresses cooling off after handshake.failures_per_source failed handshakes; the kernel drops their Initials (up to 1024 IPv4 and 160 IPv6 sources; past that the node does, counted as verdict=\"ignored\")."
    );
    describe_gauge!(
        STREAMS_BACKLOGGED,
        "Streams whose received data may wait for its reader: not piped yet, or their local reader has kept a write waiting over 5 ms. While any is, the node hands quinn one datagram per receive buffer (bounded memory) instead of whole batches (speed)."
    );
    describe_gauge!(
        STREAM_MEMORY,
        Unit::Bytes,
        "Stream memory reserved by the sidecar streams alive now (each stream_receive_window + 64 KiB)."
    );
    describe_gauge!(
        STREAM_MEMORY_LIMIT,
        Unit::Bytes,
        "node.stream_memory: past it forwards wait and services refuse with 0x09 overloaded."
    );
    describe_counter!(
        ACCESS_LOG_LINES,
        "Access log lines, by result (written; dropped: the writer's queue, access_log.queue, was full, or the write failed)."
    );
    describe_counter!(
        CONFIG_RELOADS,
        format!(
            "Config reloads (SIGHUP, POST /reload), by result ({}).",
            list::<ReloadResult>()
        )
    );
}

/// Counts a handshake refused for `reason`.
pub(crate) fn handshake_failure(reason: HandshakeReason) {
    metrics::counter!(HANDSHAKE_FAILURES, "reason" => reason.as_str()).increment(1);
}

/// Counts an Initial the handshake gate did not let through.
pub(crate) fn handshake_gate(verdict: GateVerdict) {
    metrics::counter!(HANDSHAKE_GATE, "verdict" => verdict.as_str()).increment(1);
}

/// Inbound handshakes under way.
pub(crate) fn handshakes_pending(n: usize) {
    metrics::gauge!(HANDSHAKES_PENDING).set(n as f64);
}

/// Sources cooling off now.
pub(crate) fn handshake_sources_cooling(n: usize) {
    metrics::gauge!(HANDSHAKE_SOURCES_COOLING).set(n as f64);
}

/// Counts an inbound connection refused after its handshake.
pub(crate) fn inbound_refused(reason: InboundRefused) {
    metrics::counter!(INBOUND_REFUSED, "reason" => reason.as_str()).increment(1);
}

/// Counts a config reload.
pub(crate) fn config_reload(result: ReloadResult) {
    metrics::counter!(CONFIG_RELOADS, "result" => result.as_str()).increment(1);
}

/// Counts an actor restart.
pub(crate) fn actor_restart(actor: ActorKind) {
    metrics::counter!(ACTOR_RESTARTS, "actor" => actor.as_str()).increment(1);
}

/// Moves one peer from one state's gauge to another's.
pub(crate) fn peer_state_change(
    from: Option<crate::pool::PeerState>,
    to: Option<crate::pool::PeerState>,
) {
    if let Some(from) = from {
        metrics::gauge!(PEERS, "state" => from.as_str()).decrement(1.0);
    }
    if let Some(to) = to {
        metrics::gauge!(PEERS, "state" => to.as_str()).increment(1.0);
    }
}

/// A histogram looked up on every sample by a key built once (its hash is
/// cached). Histograms are not held: an idle one is dropped after
/// IDLE_TIMEOUT (that is how a removed peer's series go), and a held handle
/// would then record into nothing.
#[derive(Debug)]
pub(crate) struct HistogramKey(metrics::Key);

impl HistogramKey {
    pub(crate) fn new(name: &'static str, label: &'static str, value: &str) -> HistogramKey {
        HistogramKey(metrics::Key::from_parts(
            name,
            vec![metrics::Label::new(label, value.to_string())],
        ))
    }

    pub(crate) fn record(&self, took: Duration) {
        static META: metrics::Metadata<'static> =
            metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        metrics::with_recorder(|r| r.register_histogram(&self.0, &META)).record(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            EJECTIONS,
            DNS_RESOLUTIONS,
            RETRIES,
            CONFIG_RELOADS,
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
