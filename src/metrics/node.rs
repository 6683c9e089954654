//! `NodeMetrics`: node-wide series with known label values, created at zero
//! so that dashboards and alerts see them before the first event, and kept
//! alive by the supervisor's tick.

use metrics::Gauge;

use super::labels::{ActorKind, GateVerdict, HandshakeReason, InboundRefused, ReloadResult};
use super::series::LabelledCounter;
use super::*;
use crate::pool::PeerState;

pub(crate) struct NodeMetrics {
    handshake: LabelledCounter<HandshakeReason>,
    refused: LabelledCounter<InboundRefused>,
    gate: LabelledCounter<GateVerdict>,
    restarts: LabelledCounter<ActorKind>,
    reloads: LabelledCounter<ReloadResult>,
    peers: Vec<Gauge>,
    /// Set where they change (`handshakes_pending`,
    /// `handshake_sources_cooling`); held here to be kept alive.
    handshakes: [Gauge; 2],
    /// Set at each tick.
    pub(crate) backlogged: Gauge,
    pub(crate) ready: Gauge,
}

impl NodeMetrics {
    pub(crate) fn new() -> NodeMetrics {
        let handshake = LabelledCounter::new(HANDSHAKE_FAILURES, Vec::new(), "reason");
        handshake.create_all();
        let refused = LabelledCounter::new(INBOUND_REFUSED, Vec::new(), "reason");
        refused.create_all();
        let gate = LabelledCounter::new(HANDSHAKE_GATE, Vec::new(), "verdict");
        gate.create_all();
        let reloads = LabelledCounter::new(CONFIG_RELOADS, Vec::new(), "result");
        reloads.create_all();
        NodeMetrics {
            handshake,
            refused,
            gate,
            reloads,
            restarts: LabelledCounter::new(ACTOR_RESTARTS, Vec::new(), "actor"),
            peers: PeerState::ALL
                .iter()
                .map(|s| metrics::gauge!(PEERS, "state" => s.as_str()))
                .collect(),
            handshakes: [
                metrics::gauge!(HANDSHAKES_PENDING),
                metrics::gauge!(HANDSHAKE_SOURCES_COOLING),
            ],
            ready: metrics::gauge!(READY),
            backlogged: metrics::gauge!(STREAMS_BACKLOGGED),
        }
    }

    pub(crate) fn touch(&self) {
        self.handshake.touch();
        self.refused.touch();
        self.gate.touch();
        self.restarts.touch();
        self.reloads.touch();
        for g in self.peers.iter().chain(&self.handshakes) {
            g.increment(0.0);
        }
        self.ready.increment(0.0);
        build_info().set(1.0);
    }
}
