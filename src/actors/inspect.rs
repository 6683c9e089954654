//! `CoreView` (feature `test-util`): what a peer actor's `PeerCore` holds,
//! read through the actor, so tests can check that everything published
//! (the routing table, `/peers`, the metrics) agrees with it.

use std::net::SocketAddr;
use std::time::Duration;

use crate::pool::{ConnKey, Direction, EndpointState, PeerState};

/// One peer's core as its actor sees it at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreView {
    pub state: PeerState,
    /// Every endpoint and its state.
    pub endpoints: Vec<(SocketAddr, EndpointState)>,
    /// Connections taking new streams, by number, ascending.
    pub usable: Vec<ConnKey>,
    /// Connections not taking new streams (being retired, or of an endpoint
    /// that drains), by number, ascending.
    pub retiring: Vec<ConnKey>,
    /// Connections held, outbound and inbound.
    pub by_direction: [(Direction, usize); 2],
    pub dial_attempts: u64,
    /// Until the next dial or probe, when one is scheduled.
    pub next_retry_in: Option<Duration>,
    pub backoff: Duration,
}
