//! A peer's telemetry: traffic counters that keep growing across
//! reconnects and actor restarts, RTT estimates, and the gauges and
//! counters set from them once a second (not per stream: see
//! BENCHMARKS.md, "The stream-open hot path").

use std::sync::atomic::{AtomicU64, Ordering};

use super::conn::ConnMeta;
use crate::metrics::labels::Flow;
use crate::metrics::peer::PeerMetrics;
use crate::pool::Direction;

/// UDP traffic of a connection, or of a peer over all its connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Traffic {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) lost: u64,
}

impl Traffic {
    /// What quinn has counted on a connection so far.
    pub(crate) fn of(stats: &quinn::ConnectionStats) -> Traffic {
        Traffic {
            sent: stats.udp_tx.bytes,
            received: stats.udp_rx.bytes,
            lost: stats.path.lost_packets,
        }
    }

    /// What grew from `earlier` to `self`.
    pub(crate) fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            sent: self.sent.saturating_sub(earlier.sent),
            received: self.received.saturating_sub(earlier.received),
            lost: self.lost.saturating_sub(earlier.lost),
        }
    }
}

/// A peer's traffic over every connection it has had, as of the actor's
/// last tick. It outlives the actor, so the counters never go back.
#[derive(Debug, Default)]
pub(crate) struct TrafficTotals {
    sent: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
}

impl TrafficTotals {
    pub(crate) fn add(&self, t: Traffic) {
        self.sent.fetch_add(t.sent, Ordering::Relaxed);
        self.received.fetch_add(t.received, Ordering::Relaxed);
        self.lost.fetch_add(t.lost, Ordering::Relaxed);
    }

    pub(crate) fn load(&self) -> Traffic {
        Traffic {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }
}

/// The actor's per-connection telemetry: what of a connection's traffic is
/// already in the peer's totals.
#[derive(Debug, Default)]
pub(crate) struct Seen(Traffic);

impl Seen {
    /// Adds what the connection carried since the last call to `totals`.
    pub(crate) fn fold(&mut self, stats: &quinn::ConnectionStats, totals: &TrafficTotals) {
        let now = Traffic::of(stats);
        totals.add(now.since(self.0));
        self.0 = now;
    }
}

/// What one tick measured over a peer's connections.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) min_rtt: Option<f64>,
    /// Streams open now, outbound and inbound.
    pub(crate) active: [usize; 2],
}

impl Sample {
    pub(crate) fn add(&mut self, meta: &ConnMeta, rtt: f64) {
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        self.active[Direction::Outbound as usize] += meta.out_streams.load(Ordering::Relaxed);
        self.active[Direction::Inbound as usize] += meta.in_streams.load(Ordering::Relaxed);
    }
}

/// Sets the peer's gauges and counters from a sample, the totals and the
/// stream count, and keeps every series of the peer alive.
pub(crate) fn publish(
    m: &PeerMetrics,
    sample: &Sample,
    totals: &TrafficTotals,
    streams_opened: u64,
) {
    m.rtt.set(sample.min_rtt.unwrap_or(0.0));
    for d in Direction::ALL {
        m.active_streams(d).set(sample.active[d as usize] as f64);
    }
    m.streams_opened.absolute(streams_opened);
    let t = totals.load();
    m.bytes(Flow::Sent).absolute(t.sent);
    m.bytes(Flow::Received).absolute(t.received);
    m.lost_packets.absolute(t.lost);
    m.touch();
}
