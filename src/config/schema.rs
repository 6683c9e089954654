//! The schema: the tables of a config file, their keys, and their defaults
//! (in the `Default` impls here and nowhere else).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units;
use crate::identity::PeerId;
use crate::pool::{RetryPolicy, Strategy};

/// Larger files are refused before parsing: a config is a few KiB.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// The most connections a peer may have (`pool.max_connections_per_peer`).
pub const MAX_CONNECTIONS_PER_PEER: usize = 64;
/// Service names travel in a one-byte length field.
pub const MAX_SERVICE_NAME_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub pool: PoolConfig,
    pub retry: RetryConfig,
    pub admin: AdminConfig,
    pub peers: Vec<PeerConfig>,
    pub forward: Vec<ForwardConfig>,
    pub service: Vec<ServiceConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// UDP address of the QUIC endpoint, for inbound and outbound connections.
    #[serde(with = "units::addr")]
    pub listen: SocketAddr,
    /// PEM certificate; relative paths resolve against the config file's folder.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key.
    pub key: PathBuf,
    pub alpn: String,
    #[serde(with = "units::positive_secs")]
    pub keep_alive_interval: Duration,
    #[serde(with = "units::positive_secs")]
    pub idle_timeout: Duration,
    /// Accept inbound connections from peer ids not listed in `[[peers]]`.
    pub accept_unknown_peers: bool,
    /// Streams a peer may have open towards this node on one connection.
    pub max_concurrent_streams: u32,
    /// How long an inbound stream may take to send its header.
    #[serde(with = "units::positive_secs")]
    pub header_timeout: Duration,
    /// UDP socket buffer sizes in bytes (the kernel caps them at its maximum).
    pub udp_send_buffer: usize,
    pub udp_recv_buffer: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            cert: PathBuf::from("keys/node.crt"),
            key: PathBuf::from("keys/node.key"),
            alpn: "peerpool/1".to_string(),
            keep_alive_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            accept_unknown_peers: false,
            max_concurrent_streams: 100,
            header_timeout: Duration::from_secs(5),
            udp_send_buffer: 4 * 1024 * 1024,
            udp_recv_buffer: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub max_connections_per_peer: usize,
    /// Per dial attempt: QUIC + TLS handshake + application hello.
    #[serde(with = "units::positive_secs")]
    pub connection_timeout: Duration,
    pub load_balancing_strategy: Strategy,
    #[serde(with = "units::positive_secs")]
    pub stream_open_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections_per_peer: 3,
            connection_timeout: Duration::from_secs(30),
            load_balancing_strategy: Strategy::RoundRobin,
            stream_open_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub max_retries: u32,
    #[serde(with = "units::positive_secs")]
    pub initial_delay: Duration,
    #[serde(with = "units::positive_secs")]
    pub max_delay: Duration,
    pub backoff_multiplier: f64,
    pub jitter_factor: f64,
    /// A connection that stays up this long resets its slot's backoff.
    #[serde(with = "units::positive_secs")]
    pub reset_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let p = RetryPolicy::default();
        RetryConfig {
            max_retries: p.max_retries,
            initial_delay: p.initial_delay,
            max_delay: p.max_delay,
            backoff_multiplier: p.multiplier,
            jitter_factor: p.jitter,
            reset_after: Duration::from_secs(10),
        }
    }
}

impl RetryConfig {
    /// The rules in the pure core's terms.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            initial_delay: self.initial_delay,
            max_delay: self.max_delay,
            multiplier: self.backoff_multiplier,
            jitter: self.jitter_factor,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// HTTP address of /metrics /healthz /readyz /peers.
    #[serde(with = "units::addr")]
    pub listen: SocketAddr,
    /// When set, every request except /healthz needs `Authorization: Bearer <token>`.
    pub token: String,
    #[serde(with = "units::non_negative_secs")]
    pub drain_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            token: String::new(),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Unique, `[a-z0-9_-]{1,32}`; the metric label.
    pub name: String,
    /// The peer id a connection to this peer must present.
    pub id: PeerId,
    /// Without an address this node never dials the peer, only accepts it.
    #[serde(
        default,
        with = "units::addr::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    #[serde(with = "units::addr")]
    pub listen: SocketAddr,
    pub peer: String,
    pub service: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    #[serde(with = "units::addr")]
    pub upstream: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

    #[test]
    fn default_toml_is_the_default_config() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).expect("config/default.toml parses");
        assert_eq!(parsed, Config::default());
        assert_eq!(Config::parse(DEFAULT_TOML).unwrap(), Config::default());
    }

    #[test]
    fn an_empty_file_is_the_default_config() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn the_defaults_round_trip_through_toml() {
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), Config::default());
    }
}
