//! What peers and clients can make a node hold: the flow-control windows
//! and the node-wide stream memory budget (keys of `[node]`), and
//! `[handshake]`, what an inbound handshake may cost before the peer has
//! proven who it is. Their rules are in `check`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units;
pub use crate::pool::gate::AddressValidation;
use crate::pool::gate::GateRules;

/// What an unauthenticated inbound handshake may cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandshakeConfig {
    /// An inbound handshake (QUIC + TLS + hello) must finish within this.
    #[serde(with = "units::positive_secs")]
    pub timeout: Duration,
    /// Inbound handshakes under way at once; more are refused at once.
    pub max_pending: usize,
    pub address_validation: AddressValidation,
    /// With `auto`: new handshakes per second past which Retry is used.
    pub validate_above: u32,
    /// Failed authentications from one IP address before its Initials are
    /// ignored (no cryptography) for `cooloff`; 0 turns this off.
    pub failures_per_source: u32,
    /// The first ignore period; each repeat doubles it, up to an hour.
    #[serde(with = "units::positive_secs")]
    pub cooloff: Duration,
}

impl HandshakeConfig {
    /// The rules of the handshake gate (`pool::gate`).
    pub fn gate_rules(&self) -> GateRules {
        GateRules {
            max_pending: self.max_pending,
            address_validation: self.address_validation,
            validate_above: self.validate_above,
            failures_per_source: self.failures_per_source,
            cooloff: self.cooloff,
        }
    }
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            timeout: Duration::from_secs(5),
            max_pending: 256,
            address_validation: AddressValidation::Auto,
            validate_above: 100,
            failures_per_source: 5,
            cooloff: Duration::from_secs(10),
        }
    }
}

/// The bytes a stream reserves from `node.stream_memory`: what its peer
/// may make this node buffer for it (`node.stream_receive_window`), plus
/// its two pipe buffers.
pub fn stream_reservation(stream_receive_window: u64) -> u64 {
    stream_receive_window.saturating_add(2 * 32 * 1024)
}
