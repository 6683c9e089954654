//! The rules serde cannot express: ranges, orderings and cross-references.
//! Pure: nothing here reads a file. Each rule has one message, used by
//! `peerpool check`, by the pool when a peer is added at run time, and by
//! the admin API.

use std::collections::HashMap;
use std::fmt;

use super::limits::{stream_reservation, AddressValidation, HandshakeConfig};
use super::load::Problem;
use super::schema::{
    Config, PeerConfig, MAX_CONNECTIONS_PER_PEER, MAX_CONNECTION_AGE, MAX_SERVICE_NAME_BYTES,
    MIN_CONNECTION_AGE,
};
use super::sidecar::Address;
use crate::identity::PeerId;

/// More TCP connections than this on one forward is surely a typo (each
/// is a file descriptor and a task).
const MAX_FORWARD_CONNECTIONS: u32 = 1_000_000;

/// One thing wrong with one peer entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProblem {
    /// The key inside the entry: `name`, `id` or `addr`.
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for PeerProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Checks one peer entry on its own (uniqueness among peers is the caller's
/// to check). `own_id` is this node's id, when known; `ca` whether the node
/// trusts a CA (`[trust] ca`), without which every peer must be pinned.
pub fn check_peer(peer: &PeerConfig, own_id: Option<PeerId>, ca: bool) -> Vec<PeerProblem> {
    let mut p = Vec::new();
    if let Err(message) = check_peer_name(&peer.name) {
        p.push(PeerProblem {
            field: "name",
            message,
        });
    }
    let pinned = peer.pinned_ids();
    if pinned.is_empty() && !ca {
        p.push(PeerProblem {
            field: "id",
            message: "give the peer's id (or ids), or set [trust] ca to accept any certificate of a CA that names it".into(),
        });
    }
    if let Some(own) = own_id.filter(|own| pinned.contains(own)) {
        p.push(PeerProblem {
            field: if peer.id == Some(own) { "id" } else { "ids" },
            message: format!("{own} is this node's own id; list other nodes here"),
        });
    }
    if peer.addr.as_ref().is_some_and(|a| a.port() == 0) {
        p.push(PeerProblem {
            field: "addr",
            message: "port 0 cannot be dialled; give the peer's node.listen port".into(),
        });
    }
    p
}

/// A peer name: unique per node, used as a metric label.
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

/// A service name: it travels in the stream header with a one-byte length.
fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SERVICE_NAME_BYTES {
        Err(format!(
            "must be 1 to {MAX_SERVICE_NAME_BYTES} bytes, got {} bytes",
            name.len()
        ))
    } else {
        Ok(())
    }
}

impl Config {
    /// Checks everything serde cannot: ranges, orderings, cross-references.
    /// `own_id` is this node's id, when its identity has been loaded.
    pub fn validate(&self, own_id: Option<PeerId>) -> Result<(), Vec<Problem>> {
        let mut p = self.validate_pool().err().unwrap_or_default();
        self.check_admin(&mut p);
        self.check_discovery_and_outliers(&mut p);
        self.check_peers(&mut p, own_id);
        self.check_forwards_and_services(&mut p);
        for (key, message) in self.access_log.problems() {
            p.push(Problem::new(key, message));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p)
        }
    }

    /// The rules of what `Pool::start` uses (`[node]`, `[pool]`, `[retry]`,
    /// `[handshake]` and the buffer keys), for library users who build a
    /// `Config` in code.
    pub fn validate_pool(&self) -> Result<(), Vec<Problem>> {
        let mut p = Vec::new();
        self.check_node(&mut p);
        self.check_pool(&mut p);
        self.check_retry(&mut p);
        let n = &self.node;
        let windows = Windows {
            stream_receive_window: n.stream_receive_window,
            receive_window: n.receive_window,
            send_window: n.send_window,
            stream_memory: n.stream_memory,
        };
        check_limits(&windows, &self.handshake, &mut p);
        if p.is_empty() {
            Ok(())
        } else {
            Err(p)
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
        if n.keep_alive_interval >= n.idle_timeout {
            p.push(Problem::new(
                "node.keep_alive_interval",
                format!(
                    "must be less than node.idle_timeout ({}), got {}; otherwise idle connections time out between keep-alives",
                    n.idle_timeout.as_secs_f64(),
                    n.keep_alive_interval.as_secs_f64()
                ),
            ));
        }
        if n.worker_threads > 1024 {
            p.push(Problem::new(
                "node.worker_threads",
                format!(
                    "must be between 0 (one per CPU) and 1024, got {}",
                    n.worker_threads
                ),
            ));
        }
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
        let age = pool.max_connection_age;
        if !age.is_zero() && !(MIN_CONNECTION_AGE..=MAX_CONNECTION_AGE).contains(&age) {
            p.push(Problem::new(
                "pool.max_connection_age",
                format!(
                    "must be 0 (off) or between {} and {} seconds, got {}",
                    MIN_CONNECTION_AGE.as_secs(),
                    MAX_CONNECTION_AGE.as_secs(),
                    age.as_secs_f64()
                ),
            ));
        }
    }

    fn check_retry(&self, p: &mut Vec<Problem>) {
        let r = &self.retry;
        if r.max_retries > 1000 {
            p.push(Problem::new(
                "retry.max_retries",
                format!("must be at most 1000, got {}", r.max_retries),
            ));
        }
        if r.max_delay < r.initial_delay {
            p.push(Problem::new(
                "retry.max_delay",
                format!(
                    "must be at least retry.initial_delay ({}), got {}",
                    r.initial_delay.as_secs_f64(),
                    r.max_delay.as_secs_f64()
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
        if self.admin.token.chars().any(|c| c.is_control() || c == ' ') {
            p.push(Problem::new(
                "admin.token",
                "must not contain spaces or control characters (it travels in an HTTP header)",
            ));
        }
        if !self.admin.token.is_empty() && !self.admin.token_file.as_os_str().is_empty() {
            p.push(Problem::new(
                "admin.token_file",
                "is set together with admin.token; keep one of them",
            ));
        }
        let a = &self.admin;
        let no_token = a.token.is_empty() && a.token_file.as_os_str().is_empty();
        if no_token && !a.listen.ip().is_loopback() && !a.allow_unauthenticated {
            p.push(Problem::new(
                "admin.listen",
                format!(
                    "{} is reachable beyond this host and no admin.token or admin.token_file is set: \
                     anyone who reaches it could add and remove peers. Set a token, listen on \
                     127.0.0.1, or set admin.allow_unauthenticated = true",
                    a.listen
                ),
            ));
        }
        for (i, path) in self.admin.public.iter().enumerate() {
            if !super::schema::ADMIN_GET_PATHS.contains(&path.as_str()) {
                p.push(Problem::new(
                    format!("admin.public[{i}]"),
                    format!(
                        "{path:?} is not a GET path of the admin API; one of {}",
                        super::schema::ADMIN_GET_PATHS.join(", ")
                    ),
                ));
            }
        }
    }

    fn check_discovery_and_outliers(&self, p: &mut Vec<Problem>) {
        let d = &self.discovery;
        if d.refresh_max < d.refresh_min {
            p.push(Problem::new(
                "discovery.refresh_max",
                format!(
                    "must be at least discovery.refresh_min ({}), got {}",
                    d.refresh_min.as_secs_f64(),
                    d.refresh_max.as_secs_f64()
                ),
            ));
        }
        let o = &self.outlier;
        if !(1..=1000).contains(&o.consecutive_failures) {
            p.push(Problem::new(
                "outlier.consecutive_failures",
                format!("must be between 1 and 1000, got {}", o.consecutive_failures),
            ));
        }
        if o.max_ejection_percent > 100 {
            p.push(Problem::new(
                "outlier.max_ejection_percent",
                format!("must be between 0 and 100, got {}", o.max_ejection_percent),
            ));
        }
    }

    fn check_peers(&self, p: &mut Vec<Problem>, own_id: Option<PeerId>) {
        let ca = !self.trust.ca.as_os_str().is_empty();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut ids: HashMap<PeerId, usize> = HashMap::new();
        for (i, peer) in self.peers.iter().enumerate() {
            for problem in check_peer(peer, own_id, ca) {
                p.push(Problem::new(
                    format!("peers[{i}].{}", problem.field),
                    problem.message,
                ));
            }
            if let Some(first) = names.insert(&peer.name, i) {
                p.push(Problem::new(
                    format!("peers[{i}].name"),
                    format!("duplicate name {:?} (also peers[{first}])", peer.name),
                ));
            }
            for id in peer.pinned_ids() {
                if let Some(first) = ids.insert(id, i).filter(|first| *first != i) {
                    p.push(Problem::new(
                        format!("peers[{i}].id"),
                        format!("duplicate id {id} (also peers[{first}])"),
                    ));
                }
            }
        }
    }

    fn check_forwards_and_services(&self, p: &mut Vec<Problem>) {
        let mut listens: HashMap<Address, String> = HashMap::new();
        listens.insert(self.admin.listen.into(), "admin.listen".into());
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
            if f.retries > 10 {
                p.push(Problem::new(
                    format!("forward[{i}].retries"),
                    format!("must be between 0 and 10, got {}", f.retries),
                ));
            }
            if !(1..=MAX_FORWARD_CONNECTIONS).contains(&f.max_connections) {
                p.push(Problem::new(
                    format!("forward[{i}].max_connections"),
                    format!(
                        "must be between 1 and {MAX_FORWARD_CONNECTIONS}, got {}",
                        f.max_connections
                    ),
                ));
            }
            if !f.listen.is_ephemeral() {
                if let Some(other) =
                    listens.insert(f.listen.clone(), format!("forward[{i}].listen"))
                {
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
            if s.allow.as_ref().is_some_and(Vec::is_empty) {
                p.push(Problem::new(
                    format!("service[{i}].allow"),
                    "is empty, so no peer could open the service; name the peers, or remove the key to allow every peer",
                ));
            }
            for (j, allowed) in s.allow.iter().flatten().enumerate() {
                if !self.peers.iter().any(|peer| &peer.name == allowed) {
                    p.push(Problem::new(
                        format!("service[{i}].allow[{j}]"),
                        format!(
                            "names no peer: {allowed:?} is not the name of any [[peers]] entry"
                        ),
                    ));
                }
            }
            if s.upstream.is_ephemeral() {
                p.push(Problem::new(
                    format!("service[{i}].upstream"),
                    "port 0 cannot be connected to; give the upstream's real port",
                ));
            }
        }
    }
}

/// The node's buffer keys, as `check` needs them.
struct Windows {
    stream_receive_window: u64,
    receive_window: u64,
    send_window: u64,
    stream_memory: u64,
}

fn check_limits(b: &Windows, h: &HandshakeConfig, p: &mut Vec<Problem>) {
    const MIB: u64 = 1024 * 1024;
    let range = |key: &str, v: u64, lo: u64, hi: u64, p: &mut Vec<Problem>| {
        if !(lo..=hi).contains(&v) {
            p.push(Problem::new(
                key,
                format!("must be between {lo} and {hi} bytes, got {v}"),
            ));
        }
    };
    range(
        "node.stream_receive_window",
        b.stream_receive_window,
        16 * 1024,
        64 * MIB,
        p,
    );
    range(
        "node.receive_window",
        b.receive_window,
        16 * 1024,
        4096 * MIB,
        p,
    );
    range("node.send_window", b.send_window, 16 * 1024, 4096 * MIB, p);
    if b.receive_window < b.stream_receive_window {
        p.push(Problem::new(
            "node.receive_window",
            format!(
                "must be at least node.stream_receive_window ({}), got {}",
                b.stream_receive_window, b.receive_window
            ),
        ));
    }
    let one = stream_reservation(b.stream_receive_window);
    if b.stream_memory < one {
        p.push(Problem::new(
            "node.stream_memory",
            format!(
                "must hold at least one stream ({one} bytes: stream_receive_window + 64 KiB), got {}",
                b.stream_memory
            ),
        ));
    }
    if !(1..=100_000).contains(&h.max_pending) {
        p.push(Problem::new(
            "handshake.max_pending",
            format!("must be between 1 and 100000, got {}", h.max_pending),
        ));
    }
    if h.validate_above == 0 && h.address_validation == AddressValidation::Auto {
        p.push(Problem::new(
            "handshake.validate_above",
            "must be above 0 with address_validation = \"auto\" (use \"always\" to validate every handshake)",
        ));
    }
    if h.failures_per_source > 1000 {
        p.push(Problem::new(
            "handshake.failures_per_source",
            format!(
                "must be between 0 (off) and 1000, got {}",
                h.failures_per_source
            ),
        ));
    }
}
