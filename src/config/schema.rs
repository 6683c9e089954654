//! The schema: the tables of a config file, their keys, and their defaults
//! (in the `Default` impls here and nowhere else).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::limits::HandshakeConfig;
use super::logging::AccessLogConfig;
use super::sidecar::{ForwardConfig, ServiceConfig};
use super::units;
use crate::identity::PeerId;
use crate::pool::{RetryPolicy, Strategy};

/// Larger files are refused before parsing: a config is a few KiB.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// The most connections a peer may have (`pool.max_connections_per_peer`).
pub const MAX_CONNECTIONS_PER_PEER: usize = 64;
/// Bounds of a non-zero `pool.max_connection_age`: below a second the pool
/// would do little but redial; above 30 days it is off in all but name.
pub(super) const MIN_CONNECTION_AGE: Duration = Duration::from_secs(1);
pub(super) const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Service names travel in a one-byte length field.
pub const MAX_SERVICE_NAME_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub pool: PoolConfig,
    pub retry: RetryConfig,
    pub admin: AdminConfig,
    pub discovery: DiscoveryConfig,
    pub trust: TrustConfig,
    pub outlier: OutlierConfig,
    pub handshake: HandshakeConfig,
    pub access_log: AccessLogConfig,
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
    /// Bytes a peer may send on one stream before this node has read them.
    pub stream_receive_window: u64,
    /// Bytes a peer may send on one connection (all its streams) before
    /// this node has read them.
    pub receive_window: u64,
    /// Bytes of application writes kept per connection until the peer
    /// acknowledges them.
    pub send_window: u64,
    /// What all sidecar streams together may reserve in buffers
    /// (`limits::stream_reservation` each); past it a forward waits for
    /// room and a service refuses with `0x09 overloaded`.
    pub stream_memory: u64,
    /// Threads of the data plane (QUIC connections and pipes); 0: the
    /// CPUs this process may use (its affinity and cgroup quota).
    pub worker_threads: u32,
}

impl NodeConfig {
    /// The data plane's thread count `worker_threads` stands for.
    pub fn workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n as usize,
        }
    }
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
            stream_receive_window: 128 * 1024,
            receive_window: 64 * 1024 * 1024,
            send_window: 2 * 1024 * 1024,
            stream_memory: 128 * 1024 * 1024,
            worker_threads: 0,
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
    /// Outbound connections older than this (each its own lifetime, within
    /// ±10 % of it) are retired through the RETIRE/DONE handover and
    /// replaced, so traffic spreads over endpoints added since. 0 = never.
    #[serde(with = "units::non_negative_secs")]
    pub max_connection_age: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections_per_peer: 3,
            connection_timeout: Duration::from_secs(30),
            load_balancing_strategy: Strategy::RoundRobin,
            stream_open_timeout: Duration::from_secs(5),
            max_connection_age: Duration::ZERO,
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
    /// When set, every request except those to `public` paths needs
    /// `Authorization: Bearer <token>`.
    pub token: String,
    /// A file holding the token (a mounted Kubernetes Secret); read when
    /// the config is loaded. Not together with `token`.
    #[serde(skip_serializing_if = "crate::config::units::path_is_empty")]
    pub token_file: PathBuf,
    /// `GET` paths that need no token (probes, scrapers).
    pub public: Vec<String>,
    #[serde(with = "units::non_negative_secs")]
    pub drain_timeout: Duration,
    /// Lets `listen` be reachable beyond loopback with no token.
    pub allow_unauthenticated: bool,
}

/// The `GET` paths `admin.public` may name.
pub const ADMIN_GET_PATHS: &[&str] = &[
    "/healthz", "/readyz", "/metrics", "/peers", "/", "/status", "/config",
];

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            token: String::new(),
            token_file: PathBuf::new(),
            public: vec!["/healthz".to_string()],
            drain_timeout: Duration::from_secs(10),
            allow_unauthenticated: false,
        }
    }
}

/// How host names in `[[peers]].addr` are re-resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Never re-resolve sooner than this, whatever the records' TTL.
    #[serde(with = "units::positive_secs")]
    pub refresh_min: Duration,
    /// Never keep an answer longer than this, whatever the records' TTL.
    #[serde(with = "units::positive_secs")]
    pub refresh_max: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            refresh_min: Duration::from_secs(1),
            refresh_max: Duration::from_secs(30),
        }
    }
}

/// Certificate authorities, for peers named instead of pinned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// A PEM bundle of CA certificates; empty: no CA, every peer pinned.
    /// A peer without ids is then any certificate that chains to one of
    /// them, is valid now, and carries the URI SAN `peerpool://NAME`.
    #[serde(skip_serializing_if = "crate::config::units::path_is_empty")]
    pub ca: PathBuf,
}

/// Passive outlier detection over a peer's endpoints (as Envoy's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Failed opens, resets or failing statuses in a row that eject an
    /// endpoint.
    pub consecutive_failures: u32,
    /// An ejection lasts this times the number of times it was ejected.
    #[serde(with = "units::positive_secs")]
    pub base_ejection_time: Duration,
    /// Never more than this share of a peer's endpoints ejected at once.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        let p = crate::pool::peer::EjectionPolicy::default();
        OutlierConfig {
            consecutive_failures: p.consecutive_failures,
            base_ejection_time: p.base_time,
            max_ejection_percent: p.max_percent,
        }
    }
}

impl OutlierConfig {
    pub(crate) fn policy(&self) -> crate::pool::peer::EjectionPolicy {
        crate::pool::peer::EjectionPolicy {
            consecutive_failures: self.consecutive_failures,
            base_time: self.base_ejection_time,
            max_percent: self.max_ejection_percent,
        }
    }
}

/// Where a peer is dialled: an IP address, or a host name whose A and AAAA
/// records are its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerAddr {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl PeerAddr {
    pub fn port(&self) -> u16 {
        match self {
            PeerAddr::Ip(a) => a.port(),
            PeerAddr::Name { port, .. } => *port,
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> Self {
        PeerAddr::Ip(a)
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Ip(a) => write!(f, "{a}"),
            PeerAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_peer_addr(s)
    }
}

impl Serialize for PeerAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `IP:PORT`, or `HOST:PORT` with a host name of letters, digits, `-`
/// and `.` (a DNS name, resolved at run time).
fn parse_peer_addr(s: &str) -> Result<PeerAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(PeerAddr::Ip(a));
    }
    let shown = || s.chars().take(80).collect::<String>();
    let bad = |why: &str| {
        format!(
            "{:?} is not IP:PORT or HOST:PORT ({why}; e.g. \"10.0.0.7:4433\", \"[::1]:4433\" or \"payments.default.svc:4433\")",
            shown()
        )
    };
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    let host = host.trim_end_matches('.');
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(bad("the host is no DNS name"));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad("the host looks like a malformed IPv4 address"));
    }
    Ok(PeerAddr::Name {
        host: host.to_ascii_lowercase(),
        port,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Unique, `[a-z0-9_-]{1,32}`; the metric label, and in CA mode the
    /// name its certificates carry.
    pub name: String,
    /// The peer id a connection to this peer must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<PeerId>,
    /// More ids it may present (to roll a key without downtime).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<PeerId>,
    /// `IP:PORT` or `HOST:PORT`; without it this node never dials the
    /// peer, only accepts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<PeerAddr>,
}

impl PeerConfig {
    /// A peer pinned to one id.
    pub fn pinned(name: impl Into<String>, id: PeerId, addr: Option<SocketAddr>) -> PeerConfig {
        PeerConfig {
            name: name.into(),
            id: Some(id),
            ids: Vec::new(),
            addr: addr.map(PeerAddr::Ip),
        }
    }

    /// Every id pinned for this peer (`id`, then `ids`); none in CA mode.
    pub fn pinned_ids(&self) -> Vec<PeerId> {
        let mut all: Vec<PeerId> = self
            .id
            .into_iter()
            .chain(self.ids.iter().copied())
            .collect();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

    #[test]
    fn peer_addresses_are_ip_or_dns_names() {
        assert_eq!(
            parse_peer_addr("127.0.0.1:4433"),
            Ok(PeerAddr::Ip("127.0.0.1:4433".parse().unwrap()))
        );
        assert_eq!(
            parse_peer_addr("Payments.Test.:4433"),
            Ok(PeerAddr::Name {
                host: "payments.test".into(),
                port: 4433
            })
        );
        for bad in [
            "payments",
            "payments:",
            "payments:99999",
            "-x.test:1",
            "a..b:1",
            "10.0.0.300:1",
            ":80",
            "a b:1",
        ] {
            assert!(parse_peer_addr(bad).is_err(), "{bad}");
        }
        assert!(parse_peer_addr("nowhere").unwrap_err().contains("no port"));
    }

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
