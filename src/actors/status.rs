//! The public status types: one connection and one peer as the admin API
//! (`GET /peers`) and `Pool::peers` show them. They deserialize too, so
//! every reader of `/peers` (tests, benches, the demo) uses these types
//! instead of picking JSON apart by string keys.

use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::PeerAddr;
use crate::identity::PeerId;
use crate::pool::{Direction, EndpointState, PeerState};

/// One connection as the admin API and `Pool::get_connections` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// A number stable for the connection's life, unique within the node.
    pub number: u64,
    pub direction: Direction,
    /// The dialler's sequence number for it: `(direction, dial_seq)` names
    /// the same connection on both ends.
    pub dial_seq: u64,
    pub remote_addr: SocketAddr,
    /// The id of the certificate the other end presented.
    pub peer_id: PeerId,
    /// RFC 3339.
    pub opened_at: String,
    pub age_seconds: f64,
    /// Streams this node opened on it that are still open.
    pub active_streams: usize,
    /// Streams the peer opened on it that are still open.
    pub inbound_streams: usize,
    /// QUIC's smoothed RTT.
    pub rtt_seconds: f64,
    /// The peak-EWMA of RTT the `latency` strategy uses (refreshed each second).
    pub rtt_ewma_seconds: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub lost_packets: u64,
    /// False while the connection is being retired (no new streams).
    pub usable: bool,
}

/// One endpoint of a peer: an address it answers on (from its configured
/// address or its DNS name), or one it connected from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub addr: SocketAddr,
    pub state: EndpointState,
    /// Connections held to it, usable or being retired.
    pub connections: usize,
    /// Seconds left of its ejection by outlier detection, if ejected.
    pub ejected_for: Option<f64>,
    /// What the endpoint balancer weighs it by: peak-EWMA of the time from
    /// stream open to the first response byte, in seconds (0 before the
    /// first sample).
    pub latency_seconds: f64,
}

/// A source address whose Initials the node ignores now, after
/// `handshake.failures_per_source` failed handshakes (`GET /gate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoolingSource {
    pub source: std::net::IpAddr,
    /// Seconds until its Initials are let through again.
    pub remaining_seconds: f64,
    /// Its cooling-off periods in a row, this one included: the period
    /// is `handshake.cooloff` doubled one time less than this.
    pub periods: u32,
}

/// One peer as the admin API and `Pool::peers` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    /// The first pinned id; `None` for a peer known by its CA-issued name.
    pub id: Option<PeerId>,
    /// Every pinned id.
    pub ids: Vec<PeerId>,
    pub addr: Option<PeerAddr>,
    pub state: PeerState,
    /// N: the connections the pool aims to hold per endpoint.
    pub target: usize,
    pub endpoints: Vec<EndpointInfo>,
    /// Every connection, over all endpoints.
    pub connections: Vec<ConnectionInfo>,
    /// Dial attempts since the peer was added.
    pub dial_attempts: u64,
    /// Seconds until the next dial or probe, when one is scheduled.
    pub next_retry_in: Option<f64>,
    /// The backoff now being waited out (0 when none).
    pub backoff_seconds: f64,
    pub streams_opened: u64,
    pub stream_open_failures: u64,
}

impl PeerStatus {
    /// Connections that take new streams.
    pub fn usable(&self) -> usize {
        self.connections.iter().filter(|c| c.usable).count()
    }

    /// The lowest smoothed RTT over the peer's connections, in seconds.
    pub fn min_rtt(&self) -> Option<f64> {
        self.connections
            .iter()
            .map(|c| c.rtt_seconds)
            .reduce(f64::min)
    }

    /// Streams this node has open to the peer now.
    pub fn active_streams(&self) -> usize {
        self.connections.iter().map(|c| c.active_streams).sum()
    }
}

/// RFC 3339 text of a wall-clock time (empty if the time cannot be shown).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
