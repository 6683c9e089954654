//! `PeerMetrics`: the handles of one peer's series, registered once when
//! the peer is added.

use std::sync::Mutex;
use std::time::Duration;

use metrics::{Counter, Gauge};

use super::labels::{CloseReason, DialResult, DnsResult, FailureReason, Flow, Label};
use super::series::LabelledCounter;
use super::*;
use crate::pool::{Direction, EndpointState, PeerState, Strategy};

pub(crate) struct PeerMetrics {
    connections: [Gauge; 2],
    pub(crate) target: Gauge,
    pub(crate) backoff: Gauge,
    pub(crate) streams_opened: Counter,
    active: [Gauge; 2],
    pub(crate) rtt: Gauge,
    pub(crate) lost_packets: Counter,
    bytes: [Counter; 2],
    open_failures: LabelledCounter<FailureReason>,
    dials: LabelledCounter<DialResult>,
    closed: LabelledCounter<CloseReason>,
    restarts: LabelledCounter<CloseReason>,
    /// Created at the first resolution (peers with a host name) and the
    /// first ejection: no series for what a peer never does.
    dns: std::sync::OnceLock<LabelledCounter<DnsResult>>,
    ejections: std::sync::OnceLock<Counter>,
    /// `peerpool_endpoints` by state, created when a state first occurs.
    endpoints: [std::sync::OnceLock<Gauge>; EndpointState::ALL.len()],
    /// The `peerpool_peer_state` series of the current state.
    state: Mutex<Option<Gauge>>,
    peer: String,
    dial_duration: HistogramKey,
    open_duration: HistogramKey,
}

impl PeerMetrics {
    pub(crate) fn new(peer: &str, strategy: Strategy) -> PeerMetrics {
        let p = peer.to_string();
        let by_direction = |name: &'static str| {
            Direction::ALL
                .map(|d| metrics::gauge!(name, "peer" => p.clone(), "direction" => d.as_str()))
        };
        let family = || vec![metrics::Label::new("peer", p.clone())];
        PeerMetrics {
            connections: by_direction(CONNECTIONS),
            target: metrics::gauge!(CONNECTION_TARGET, "peer" => p.clone()),
            backoff: metrics::gauge!(BACKOFF, "peer" => p.clone()),
            streams_opened: metrics::counter!(STREAMS_OPENED, "peer" => p.clone(), "strategy" => strategy.as_str()),
            active: by_direction(ACTIVE_STREAMS),
            rtt: metrics::gauge!(RTT, "peer" => p.clone()),
            lost_packets: metrics::counter!(LOST_PACKETS, "peer" => p.clone()),
            bytes: [Flow::Sent, Flow::Received]
                .map(|f| metrics::counter!(BYTES, "peer" => p.clone(), "direction" => f.as_str())),
            open_failures: LabelledCounter::new(STREAM_OPEN_FAILURES, family(), "reason"),
            dials: LabelledCounter::new(DIAL_ATTEMPTS, family(), "result"),
            closed: LabelledCounter::new(CONNECTION_CLOSED, family(), "reason"),
            restarts: LabelledCounter::new(CONNECTION_RESTARTS, family(), "reason"),
            dns: std::sync::OnceLock::new(),
            ejections: std::sync::OnceLock::new(),
            endpoints: Default::default(),
            state: Mutex::new(None),
            dial_duration: HistogramKey::new(DIAL_DURATION, "peer", peer),
            open_duration: HistogramKey::new(STREAM_OPEN_DURATION, "peer", peer),
            peer: p,
        }
    }

    pub(crate) fn connections(&self, d: Direction) -> &Gauge {
        &self.connections[d.index()]
    }

    pub(crate) fn active_streams(&self, d: Direction) -> &Gauge {
        &self.active[d.index()]
    }

    pub(crate) fn bytes(&self, f: Flow) -> &Counter {
        &self.bytes[f.index()]
    }

    /// Records a successful dial's duration.
    pub(crate) fn record_dial(&self, took: Duration) {
        self.dial_duration.record(took);
    }

    /// Records a stream open's duration.
    pub(crate) fn record_open(&self, took: Duration) {
        self.open_duration.record(took);
    }

    /// Sets `peerpool_peer_state`: the current state's series to 1. The
    /// previous state's series drops to 0 and, no longer touched, goes after
    /// IDLE_TIMEOUT: one series per peer instead of one per state, since
    /// every series costs render time at each scrape.
    pub(crate) fn set_state(&self, state: PeerState) {
        let mut current = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = current.take() {
            old.set(0.0);
        }
        let g = metrics::gauge!(PEER_STATE, "peer" => self.peer.clone(), "state" => state.as_str());
        g.set(1.0);
        *current = Some(g);
    }

    pub(crate) fn open_failure(&self, reason: FailureReason) {
        self.open_failures.increment(reason);
    }

    pub(crate) fn dial_attempt(&self, result: DialResult) {
        self.dials.increment(result);
    }

    pub(crate) fn connection_closed(&self, reason: CloseReason) {
        self.closed.increment(reason);
    }

    pub(crate) fn connection_restart(&self, reason: CloseReason) {
        self.restarts.increment(reason);
    }

    pub(crate) fn dns_resolution(&self, result: DnsResult) {
        self.dns
            .get_or_init(|| {
                let family = vec![metrics::Label::new("peer", self.peer.clone())];
                LabelledCounter::new(DNS_RESOLUTIONS, family, "result")
            })
            .increment(result);
    }

    pub(crate) fn ejection(&self) {
        self.ejections
            .get_or_init(|| metrics::counter!(EJECTIONS, "peer" => self.peer.clone()))
            .increment(1);
    }

    /// Sets `peerpool_endpoints`: how many endpoints are in each state (a
    /// state's series exists from the first time it occurs).
    pub(crate) fn set_endpoints(&self, by_state: &[usize; EndpointState::ALL.len()]) {
        for s in EndpointState::ALL {
            let n = by_state[s.index()];
            let cell = &self.endpoints[s.index()];
            if n > 0 || cell.get().is_some() {
                cell.get_or_init(|| {
                    metrics::gauge!(ENDPOINTS, "peer" => self.peer.clone(), "state" => s.as_str())
                })
                .set(n as f64);
            }
        }
    }

    /// Marks every counter and gauge of this peer as alive so the idle
    /// timeout keeps them.
    pub(crate) fn touch(&self) {
        let gauges = self.connections.iter().chain(&self.active).chain([
            &self.target,
            &self.backoff,
            &self.rtt,
        ]);
        for g in gauges {
            g.increment(0.0);
        }
        if let Some(g) = &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            g.increment(0.0);
        }
        for c in self
            .bytes
            .iter()
            .chain([&self.streams_opened, &self.lost_packets])
        {
            c.increment(0);
        }
        self.open_failures.touch();
        self.dials.touch();
        self.closed.touch();
        self.restarts.touch();
        if let Some(d) = self.dns.get() {
            d.touch();
        }
        if let Some(e) = self.ejections.get() {
            e.increment(0);
        }
        for g in self.endpoints.iter().filter_map(std::sync::OnceLock::get) {
            g.increment(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

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
            let m = PeerMetrics::new("b", Strategy::P2c);
            m.dial_attempt(DialResult::Timeout);
            m.dial_attempt(DialResult::Timeout);
            m.dial_attempt(DialResult::Ok);
            m.dial_attempt(DialResult::Error);
            m.streams_opened.increment(3);
            m.open_failure(FailureReason::Unreachable);
            m.connection_closed(CloseReason::GoingAway);
            m.connection_restart(CloseReason::GoingAway);
            m.set_state(PeerState::Degraded);
            m.connections(Direction::Outbound).set(2.0);
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
        assert_eq!(
            v("peerpool_streams_opened_total{peer=\"b\",strategy=\"p2c\"}"),
            3.0
        );
        assert_eq!(
            v("peerpool_stream_open_failures_total{peer=\"b\",reason=\"unreachable\"}"),
            1.0
        );
        // The first value of each family exists from the start, at zero.
        assert_eq!(
            v("peerpool_stream_open_failures_total{peer=\"b\",reason=\"timeout\"}"),
            0.0
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
}
