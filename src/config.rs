//! The configuration schema: one TOML file, every table `deny_unknown_fields`,
//! durations in seconds as floats, defaults in the `Default` impls below and
//! nowhere else (`config/default.toml` is proven equal to them by a test).
//!
//! Loading reports every problem it finds, each naming the key, the bad value
//! and what is allowed, e.g.
//! `pool.max_connections_per_peer: must be between 1 and 64, got 0`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, PeerId};
use crate::pool::{RetryPolicy, Strategy};

/// Larger files are refused before parsing: a config is a few KiB.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// The most connections a peer may have (`pool.max_connections_per_peer`).
pub const MAX_CONNECTIONS_PER_PEER: usize = 64;
/// Service names travel in a one-byte length field.
pub const MAX_SERVICE_NAME_BYTES: usize = 255;
/// Durations above this are surely typos (and would overflow timers).
const MAX_SECS: f64 = 7.0 * 24.0 * 3600.0;

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
    #[serde(with = "addr")]
    pub listen: SocketAddr,
    /// PEM certificate; relative paths resolve against the config file's folder.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key.
    pub key: PathBuf,
    pub alpn: String,
    pub keep_alive_interval: f64,
    pub idle_timeout: f64,
    /// Accept inbound connections from peer ids not listed in `[[peers]]`.
    pub accept_unknown_peers: bool,
    /// Streams a peer may have open towards this node on one connection.
    pub max_concurrent_streams: u32,
    /// How long an inbound stream may take to send its header.
    pub header_timeout: f64,
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
            keep_alive_interval: 5.0,
            idle_timeout: 15.0,
            accept_unknown_peers: false,
            max_concurrent_streams: 100,
            header_timeout: 5.0,
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
    pub connection_timeout: f64,
    pub load_balancing_strategy: Strategy,
    pub stream_open_timeout: f64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections_per_peer: 3,
            connection_timeout: 30.0,
            load_balancing_strategy: Strategy::RoundRobin,
            stream_open_timeout: 5.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub initial_delay: f64,
    pub max_delay: f64,
    pub backoff_multiplier: f64,
    pub jitter_factor: f64,
    /// A connection that stays up this long resets its slot's backoff.
    pub reset_after: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let p = RetryPolicy::default();
        RetryConfig {
            max_retries: p.max_retries,
            initial_delay: p.initial_delay.as_secs_f64(),
            max_delay: p.max_delay.as_secs_f64(),
            backoff_multiplier: p.multiplier,
            jitter_factor: p.jitter,
            reset_after: 10.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// HTTP address of /metrics /healthz /readyz /peers.
    #[serde(with = "addr")]
    pub listen: SocketAddr,
    /// When set, every request except /healthz needs `Authorization: Bearer <token>`.
    pub token: String,
    pub drain_timeout: f64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            token: String::new(),
            drain_timeout: 10.0,
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
        with = "addr::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    #[serde(with = "addr")]
    pub listen: SocketAddr,
    pub peer: String,
    pub service: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    #[serde(with = "addr")]
    pub upstream: SocketAddr,
}

/// Seconds from the config as a `Duration`; validation keeps them finite,
/// non-negative and below a week, so the fallback never shows.
pub fn secs(v: f64) -> Duration {
    Duration::try_from_secs_f64(v).unwrap_or(Duration::ZERO)
}

impl NodeConfig {
    pub fn keep_alive_interval(&self) -> Duration {
        secs(self.keep_alive_interval)
    }
    pub fn idle_timeout(&self) -> Duration {
        secs(self.idle_timeout)
    }
    pub fn header_timeout(&self) -> Duration {
        secs(self.header_timeout)
    }
}

impl PoolConfig {
    pub fn connection_timeout(&self) -> Duration {
        secs(self.connection_timeout)
    }
    pub fn stream_open_timeout(&self) -> Duration {
        secs(self.stream_open_timeout)
    }
}

impl RetryConfig {
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            initial_delay: secs(self.initial_delay),
            max_delay: secs(self.max_delay),
            multiplier: self.backoff_multiplier,
            jitter: self.jitter_factor,
        }
    }
    pub fn reset_after(&self) -> Duration {
        secs(self.reset_after)
    }
}

impl AdminConfig {
    pub fn drain_timeout(&self) -> Duration {
        secs(self.drain_timeout)
    }
}

/// One thing wrong with a config: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, e.g. `pool.max_connections_per_peer` or `peers[1].id`.
    pub key: String,
    pub message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is {size} bytes; the limit is {MAX_CONFIG_BYTES} bytes (is this the right file?)")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("config file {path} is not UTF-8 text (invalid byte at offset {offset}); is this the right file?")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("config file {path} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// Every problem, one per line, for the CLI.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

/// A config that passed validation, with paths resolved and the identity loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub identity: Identity,
}

impl Config {
    /// Reads, parses and validates the file at `path`; relative cert and key
    /// paths resolve against its folder.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.len() > MAX_CONFIG_BYTES as u64 {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                size: meta.len(),
            });
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                size: bytes.len() as u64,
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| ConfigError::NotUtf8 {
            path: path.to_owned(),
            offset: e.utf8_error().valid_up_to(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates TOML text whose relative paths resolve against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Loaded, Vec<Problem>> {
        let mut config = Config::parse(text)?;
        config.node.cert = base.join(&config.node.cert);
        config.node.key = base.join(&config.node.key);
        let identity = config.validate()?;
        Ok(Loaded { config, identity })
    }

    /// Parses TOML into a `Config` without semantic checks, reporting every
    /// section that does not fit the schema (serde stops at the first error
    /// inside a section, so each section contributes at most one problem).
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| vec![Problem::new("toml", syntax_message(text, &e))])?;
        let mut config = Config::default();
        let mut problems = Vec::new();
        for (key, value) in table {
            match key.as_str() {
                "node" => section(&mut problems, "node", value, &mut config.node),
                "pool" => section(&mut problems, "pool", value, &mut config.pool),
                "retry" => section(&mut problems, "retry", value, &mut config.retry),
                "admin" => section(&mut problems, "admin", value, &mut config.admin),
                "peers" => array(&mut problems, "peers", value, &mut config.peers),
                "forward" => array(&mut problems, "forward", value, &mut config.forward),
                "service" => array(&mut problems, "service", value, &mut config.service),
                other => problems.push(Problem::new(
                    other,
                    "unknown key; the top level allows [node], [pool], [retry], [admin], \
                     [[peers]], [[forward]] and [[service]]",
                )),
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Checks everything serde cannot: ranges, cross-references, files.
    /// Returns the node identity loaded from `node.cert` and `node.key`.
    pub fn validate(&self) -> Result<Identity, Vec<Problem>> {
        let mut p = Vec::new();
        self.check_node(&mut p);
        self.check_pool(&mut p);
        self.check_retry(&mut p);
        self.check_admin(&mut p);
        self.check_peers(&mut p);
        self.check_forwards_and_services(&mut p);
        let identity = match Identity::load(&self.node.cert, &self.node.key) {
            Ok(id) => Some(id),
            Err(e) => {
                p.push(Problem::new("node.cert/node.key", e.to_string()));
                None
            }
        };
        if let Some(id) = &identity {
            for (i, peer) in self.peers.iter().enumerate() {
                if peer.id == id.id {
                    p.push(Problem::new(
                        format!("peers[{i}].id"),
                        format!("{} is this node's own id; list other nodes here", peer.id),
                    ));
                }
            }
        }
        match identity {
            Some(id) if p.is_empty() => Ok(id),
            _ => Err(p),
        }
    }

    fn check_node(&self, p: &mut Vec<Problem>) {
        let n = &self.node;
        if n.alpn.is_empty() || n.alpn.len() > 255 {
            p.push(Problem::new(
                "node.alpn",
                format!("must be 1 to 255 bytes, got {} bytes", n.alpn.len()),
            ));
        }
        positive(p, "node.keep_alive_interval", n.keep_alive_interval);
        positive(p, "node.idle_timeout", n.idle_timeout);
        if n.keep_alive_interval >= n.idle_timeout {
            p.push(Problem::new(
                "node.keep_alive_interval",
                format!(
                    "must be less than node.idle_timeout ({}), got {}; otherwise idle connections time out between keep-alives",
                    n.idle_timeout, n.keep_alive_interval
                ),
            ));
        }
        positive(p, "node.header_timeout", n.header_timeout);
        if !(1..=1_000_000).contains(&n.max_concurrent_streams) {
            p.push(Problem::new(
                "node.max_concurrent_streams",
                format!(
                    "must be between 1 and 1000000, got {}",
                    n.max_concurrent_streams
                ),
            ));
        }
        for (key, v) in [
            ("node.udp_send_buffer", n.udp_send_buffer),
            ("node.udp_recv_buffer", n.udp_recv_buffer),
        ] {
            if !(64 * 1024..=256 * 1024 * 1024).contains(&v) {
                p.push(Problem::new(
                    key,
                    format!("must be between 65536 and 268435456 bytes, got {v}"),
                ));
            }
        }
    }

    fn check_pool(&self, p: &mut Vec<Problem>) {
        let pool = &self.pool;
        if !(1..=MAX_CONNECTIONS_PER_PEER).contains(&pool.max_connections_per_peer) {
            p.push(Problem::new(
                "pool.max_connections_per_peer",
                format!(
                    "must be between 1 and {MAX_CONNECTIONS_PER_PEER}, got {}",
                    pool.max_connections_per_peer
                ),
            ));
        }
        positive(p, "pool.connection_timeout", pool.connection_timeout);
        positive(p, "pool.stream_open_timeout", pool.stream_open_timeout);
    }

    fn check_retry(&self, p: &mut Vec<Problem>) {
        let r = &self.retry;
        if r.max_retries > 1000 {
            p.push(Problem::new(
                "retry.max_retries",
                format!("must be at most 1000, got {}", r.max_retries),
            ));
        }
        positive(p, "retry.initial_delay", r.initial_delay);
        positive(p, "retry.max_delay", r.max_delay);
        positive(p, "retry.reset_after", r.reset_after);
        if r.max_delay < r.initial_delay {
            p.push(Problem::new(
                "retry.max_delay",
                format!(
                    "must be at least retry.initial_delay ({}), got {}",
                    r.initial_delay, r.max_delay
                ),
            ));
        }
        if !(r.backoff_multiplier >= 1.0 && r.backoff_multiplier <= 100.0) {
            p.push(Problem::new(
                "retry.backoff_multiplier",
                format!(
                    "must be between 1 and 100 (1 = constant delay), got {}",
                    r.backoff_multiplier
                ),
            ));
        }
        if !(0.0..=1.0).contains(&r.jitter_factor) {
            p.push(Problem::new(
                "retry.jitter_factor",
                format!("must be between 0.0 and 1.0, got {}", r.jitter_factor),
            ));
        }
    }

    fn check_admin(&self, p: &mut Vec<Problem>) {
        let a = &self.admin;
        if !(a.drain_timeout.is_finite() && (0.0..=MAX_SECS).contains(&a.drain_timeout)) {
            p.push(Problem::new(
                "admin.drain_timeout",
                format!(
                    "must be between 0 and {MAX_SECS} seconds, got {}",
                    a.drain_timeout
                ),
            ));
        }
        if a.token.chars().any(|c| c.is_control() || c == ' ') {
            p.push(Problem::new(
                "admin.token",
                "must not contain spaces or control characters (it travels in an HTTP header)",
            ));
        }
    }

    fn check_peers(&self, p: &mut Vec<Problem>) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut ids: HashMap<PeerId, usize> = HashMap::new();
        for (i, peer) in self.peers.iter().enumerate() {
            if let Err(msg) = check_peer_name(&peer.name) {
                p.push(Problem::new(format!("peers[{i}].name"), msg));
            }
            if let Some(first) = names.insert(&peer.name, i) {
                p.push(Problem::new(
                    format!("peers[{i}].name"),
                    format!("duplicate name {:?} (also peers[{first}])", peer.name),
                ));
            }
            if let Some(first) = ids.insert(peer.id, i) {
                p.push(Problem::new(
                    format!("peers[{i}].id"),
                    format!("duplicate id {} (also peers[{first}])", peer.id),
                ));
            }
            if peer.addr.is_some_and(|a| a.port() == 0) {
                p.push(Problem::new(
                    format!("peers[{i}].addr"),
                    "port 0 cannot be dialled; give the peer's node.listen port",
                ));
            }
        }
    }

    fn check_forwards_and_services(&self, p: &mut Vec<Problem>) {
        let mut tcp_listens: HashMap<SocketAddr, String> = HashMap::new();
        tcp_listens.insert(self.admin.listen, "admin.listen".into());
        for (i, f) in self.forward.iter().enumerate() {
            if !self.peers.iter().any(|peer| peer.name == f.peer) {
                let known: Vec<&str> = self.peers.iter().map(|p| p.name.as_str()).collect();
                p.push(Problem::new(
                    format!("forward[{i}].peer"),
                    format!(
                        "names no peer: {:?} is not the name of any [[peers]] entry (known: {})",
                        f.peer,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            if let Err(msg) = check_service_name(&f.service) {
                p.push(Problem::new(format!("forward[{i}].service"), msg));
            }
            if f.listen.port() != 0 {
                if let Some(other) = tcp_listens.insert(f.listen, format!("forward[{i}].listen")) {
                    p.push(Problem::new(
                        format!("forward[{i}].listen"),
                        format!("{} is already used by {other}", f.listen),
                    ));
                }
            }
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, s) in self.service.iter().enumerate() {
            if let Err(msg) = check_service_name(&s.name) {
                p.push(Problem::new(format!("service[{i}].name"), msg));
            }
            if let Some(first) = names.insert(&s.name, i) {
                p.push(Problem::new(
                    format!("service[{i}].name"),
                    format!("duplicate service {:?} (also service[{first}])", s.name),
                ));
            }
            if s.upstream.port() == 0 {
                p.push(Problem::new(
                    format!("service[{i}].upstream"),
                    "port 0 cannot be connected to; give the upstream's real port",
                ));
            }
        }
    }
}

/// Checks a peer name: unique per node, used as a metric label.
pub fn check_peer_name(name: &str) -> Result<(), String> {
    let ok_len = (1..=32).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(format!(
            "must be 1 to 32 characters of a-z, 0-9, '_' and '-', got {:?}",
            name.chars().take(40).collect::<String>()
        ))
    }
}

/// Checks a service name: it travels in the stream header with a one-byte length.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SERVICE_NAME_BYTES {
        Err(format!(
            "must be 1 to {MAX_SERVICE_NAME_BYTES} bytes, got {} bytes",
            name.len()
        ))
    } else {
        Ok(())
    }
}

fn positive(p: &mut Vec<Problem>, key: &str, v: f64) {
    if !(v.is_finite() && v > 0.0 && v <= MAX_SECS) {
        p.push(Problem::new(
            key,
            format!("must be a number of seconds above 0 and at most {MAX_SECS}, got {v}"),
        ));
    }
}

fn section<T: DeserializeOwned>(
    problems: &mut Vec<Problem>,
    name: &str,
    value: toml::Value,
    out: &mut T,
) {
    match T::deserialize(value) {
        Ok(v) => *out = v,
        Err(e) => problems.push(de_problem(name, &e)),
    }
}

fn array<T: DeserializeOwned>(
    problems: &mut Vec<Problem>,
    name: &str,
    value: toml::Value,
    out: &mut Vec<T>,
) {
    let toml::Value::Array(items) = value else {
        problems.push(Problem::new(
            name,
            format!("must be an array of tables, written [[{name}]]"),
        ));
        return;
    };
    for (i, item) in items.into_iter().enumerate() {
        match T::deserialize(item) {
            Ok(v) => out.push(v),
            Err(e) => problems.push(de_problem(&format!("{name}[{i}]"), &e)),
        }
    }
}

/// A serde error inside a section as `section.key: message`. toml keeps the
/// key path of the error but only shows it in `Display` (as a trailing
/// "in `a.b`" line), so it is read from there.
fn de_problem(section: &str, e: &toml::de::Error) -> Problem {
    let text = e.to_string();
    let mut message = e.message().trim().to_string();
    let mut key = section.to_string();
    if let Some(path) = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("in `"))
        .and_then(|l| l.strip_suffix('`'))
    {
        key = format!("{section}.{path}");
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        message = format!("unknown key {rest}");
    }
    Problem::new(key, message)
}

fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg.to_string(),
    }
}

/// `SocketAddr` with an error message that says what is expected.
mod addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn parse(s: &str) -> Result<SocketAddr, String> {
        s.parse().map_err(|_| {
            format!(
                "{:?} is not an IP:PORT address (e.g. \"127.0.0.1:4433\" or \"[::1]:4433\"); host names are not resolved",
                s.chars().take(80).collect::<String>()
            )
        })
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
            match a {
                Some(a) => s.collect_str(a),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SocketAddr>, D::Error> {
            let s = String::deserialize(d)?;
            parse(&s).map(Some).map_err(serde::de::Error::custom)
        }
    }
}

pub use addr::parse as parse_addr;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_oneof, proptest, Just};
    use proptest::strategy::Strategy as _;

    const DEFAULT_TOML: &str = include_str!("../config/default.toml");

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

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text) {
            Ok(c) => c.validate().err().unwrap_or_default(),
            Err(p) => p,
        }
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    fn has(problems: &[String], needle: &str) -> bool {
        problems.iter().any(|p| p.contains(needle))
    }

    #[test]
    fn range_errors_name_the_key_the_value_and_the_range() {
        let p = problems("[pool]\nmax_connections_per_peer = 0\n");
        assert!(
            has(
                &p,
                "pool.max_connections_per_peer: must be between 1 and 64, got 0"
            ),
            "{p:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_not_only_the_first() {
        let p = problems(
            r#"
[pool]
max_connections_per_peer = 65
[retry]
initial_delay = 2.0
max_delay = 1.0
backoff_multiplier = 0.5
jitter_factor = 1.5
"#,
        );
        for needle in [
            "pool.max_connections_per_peer",
            "retry.max_delay: must be at least retry.initial_delay (2), got 1",
            "retry.backoff_multiplier",
            "retry.jitter_factor: must be between 0.0 and 1.0, got 1.5",
            "node.cert/node.key",
        ] {
            assert!(has(&p, needle), "missing {needle:?} in {p:#?}");
        }
    }

    #[test]
    fn unknown_keys_and_strategies_are_named() {
        let p = problems("[pool]\nmax_conns = 3\n[retry]\nmax_retry = 1\n[extra]\n");
        assert!(has(&p, "pool: unknown key `max_conns`"), "{p:?}");
        assert!(has(&p, "retry: unknown key `max_retry`"), "{p:?}");
        assert!(has(&p, "extra: unknown key"), "{p:?}");
        let p = problems("[pool]\nload_balancing_strategy = \"fastest\"\n");
        assert!(
            has(
                &p,
                "pool.load_balancing_strategy: unknown variant `fastest`"
            ),
            "{p:?}"
        );
    }

    #[test]
    fn peer_forward_and_service_errors() {
        let id = "ab".repeat(32);
        let p = problems(&format!(
            r#"
[[peers]]
name = "b"
id = "{id}"
addr = "nowhere:1"
[[peers]]
name = "b"
id = "{id}"
[[peers]]
name = "Bad Name"
id = "xyz"
[[forward]]
listen = "127.0.0.1:7001"
peer = "c"
service = ""
[[service]]
name = "{long}"
upstream = "127.0.0.1:8080"
"#,
            long = "s".repeat(256)
        ));
        for needle in [
            "peers[0].addr: \"nowhere:1\" is not an IP:PORT address",
            "peers[2].id: must be 64 lowercase hex characters",
        ] {
            assert!(has(&p, needle), "missing {needle:?} in {p:#?}");
        }
        // Sections that failed to parse are not validated further; fix them
        // and the semantic problems appear.
        let p = problems(&format!(
            r#"
[[peers]]
name = "b"
id = "{id}"
[[peers]]
name = "b"
id = "{id}"
[[peers]]
name = "Bad Name"
id = "{other}"
[[forward]]
listen = "127.0.0.1:7001"
peer = "c"
service = ""
[[service]]
name = "{long}"
upstream = "127.0.0.1:8080"
"#,
            other = "cd".repeat(32),
            long = "s".repeat(256)
        ));
        for needle in [
            "peers[1].name: duplicate name \"b\" (also peers[0])",
            "peers[1].id: duplicate id",
            "peers[2].name: must be 1 to 32 characters",
            "forward[0].peer: names no peer: \"c\"",
            "forward[0].service: must be 1 to 255 bytes, got 0 bytes",
            "service[0].name: must be 1 to 255 bytes, got 256 bytes",
        ] {
            assert!(has(&p, needle), "missing {needle:?} in {p:#?}");
        }
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let p = problems("[node]\nlisten = \n");
        assert!(has(&p, "toml: line 2"), "{p:?}");
    }

    #[test]
    fn a_missing_identity_names_the_files() {
        let p = problems("[node]\ncert = \"/nonexistent/x.crt\"\n");
        assert!(has(&p, "/nonexistent/x.crt"), "{p:?}");
    }

    /// TOML values of every type, with the edge cases a config can hold.
    fn value() -> impl proptest::strategy::Strategy<Value = String> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            prop_oneof![
                Just("nan".to_string()),
                Just("inf".to_string()),
                Just("-inf".to_string()),
                Just("-0.0".to_string()),
                Just("1e308".to_string()),
                Just("5e-324".to_string()),
                (-1e6f64..1e6).prop_map(|v| format!("{v:?}")),
            ],
            any::<bool>().prop_map(|v| v.to_string()),
            "[ -~]{0,40}".prop_map(|v| format!("{v:?}")),
            Just("\"127.0.0.1:0\"".to_string()),
            Just("\"[::1]:65535\"".to_string()),
            Just(format!("\"{}\"", "a".repeat(64))),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(", "))),
                proptest::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(|kv| {
                    let body: Vec<String> =
                        kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    format!("{{ {} }}", body.join(", "))
                }),
            ]
        })
    }

    /// A key the schema knows (any section) or one it does not.
    fn key() -> impl proptest::strategy::Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(vec![
                "listen",
                "cert",
                "key",
                "alpn",
                "keep_alive_interval",
                "idle_timeout",
                "accept_unknown_peers",
                "max_concurrent_streams",
                "header_timeout",
                "udp_send_buffer",
                "udp_recv_buffer",
                "max_connections_per_peer",
                "connection_timeout",
                "load_balancing_strategy",
                "stream_open_timeout",
                "max_retries",
                "initial_delay",
                "max_delay",
                "backoff_multiplier",
                "jitter_factor",
                "reset_after",
                "token",
                "drain_timeout",
                "name",
                "id",
                "addr",
                "peer",
                "service",
                "upstream",
            ])
            .prop_map(str::to_string),
            "[a-z_]{1,12}",
        ]
    }

    fn document() -> impl proptest::strategy::Strategy<Value = String> {
        let header = prop_oneof![proptest::sample::select(vec![
            "[node]",
            "[pool]",
            "[retry]",
            "[admin]",
            "[[peers]]",
            "[[forward]]",
            "[[service]]",
            "[peers]",
            "[[node]]",
            "[other]",
        ])
        .prop_map(str::to_string),];
        let section =
            (header, proptest::collection::vec((key(), value()), 0..6)).prop_map(|(h, kv)| {
                let lines: Vec<String> =
                    kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{h}\n{}\n", lines.join("\n"))
            });
        proptest::collection::vec(section, 0..6).prop_map(|s| s.concat())
    }

    proptest! {
        /// Arbitrary text never panics the parser or the validator.
        #[test]
        fn any_text_gives_a_config_or_problems(text in ".{0,400}") {
            if let Ok(c) = Config::parse(&text) {
                let _ = c.validate();
            }
        }

        /// Generated TOML (known and unknown keys, every value type, edge
        /// numbers): problems that name a key, never a panic.
        #[test]
        fn generated_toml_gives_a_config_or_named_problems(text in document()) {
            match Config::parse(&text) {
                Ok(c) => {
                    if let Err(problems) = c.validate() {
                        prop_assert!(problems.iter().all(|p| !p.key.is_empty() && !p.message.is_empty()));
                    }
                }
                Err(problems) => {
                    prop_assert!(!problems.is_empty());
                    prop_assert!(problems.iter().all(|p| !p.key.is_empty() && !p.message.is_empty()));
                }
            }
        }
    }
}
