//! Pools in the test's own process, over real QUIC on loopback: configs
//! with short timeouts, an echo stream handler, a pair of nodes that know
//! each other, and one-line reads of a pool's connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use peerpool::config::{Config, PeerConfig};
use peerpool::identity::Identity;
use peerpool::{IncomingStream, PeerId, Pool, Strategy, StreamHandler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::udp;

/// A config for tests: ephemeral ports, short timeouts, N connections.
pub fn config(n: usize, strategy: Strategy) -> Config {
    let mut c = Config::default();
    c.node.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.pool.max_connections_per_peer = n;
    c.pool.load_balancing_strategy = strategy;
    c.pool.connection_timeout = Duration::from_secs(2);
    c.pool.stream_open_timeout = Duration::from_secs(2);
    c.admin.drain_timeout = Duration::from_secs(2);
    c
}

/// Copies every byte of a stream back, then finishes.
pub fn echo() -> Arc<dyn StreamHandler> {
    Arc::new(|mut s: IncomingStream| async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match s.recv.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.send.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.send.shutdown().await;
    })
}

/// A pool in this process, with its identity and address.
pub struct Node {
    pub pool: Pool,
    pub identity: Identity,
    pub addr: SocketAddr,
}

/// Starts two nodes "a" and "b" that know each other; `a_dials` /
/// `b_dials` say which of them has the other's address. Call it inside an
/// actix System.
pub fn pair(base: &Config, a_dials: bool, b_dials: bool) -> (Node, Node) {
    pair_named(base, ("a", "b"), a_dials, b_dials)
}

/// Like [`pair`], with the names each node knows the other by (metric
/// series are per process and per name: pairs in one process that must not
/// share series need names of their own).
pub fn pair_named(
    base: &Config,
    (a_name, b_name): (&str, &str),
    a_dials: bool,
    b_dials: bool,
) -> (Node, Node) {
    let ida = Identity::generate().expect("identity");
    let idb = Identity::generate().expect("identity");
    let (sa, sb) = (udp(), udp());
    let (addr_a, addr_b) = (
        sa.local_addr().expect("address"),
        sb.local_addr().expect("address"),
    );
    let mut ca = base.clone();
    ca.peers = vec![PeerConfig::pinned(
        b_name,
        idb.id,
        a_dials.then_some(addr_b),
    )];
    let mut cb = base.clone();
    cb.peers = vec![PeerConfig::pinned(
        a_name,
        ida.id,
        b_dials.then_some(addr_a),
    )];
    let a = Pool::start_with_socket(ca, ida.clone(), echo(), sa).expect("start pool a");
    let b = Pool::start_with_socket(cb, idb.clone(), echo(), sb).expect("start pool b");
    (
        Node {
            pool: a,
            identity: ida,
            addr: addr_a,
        },
        Node {
            pool: b,
            identity: idb,
            addr: addr_b,
        },
    )
}

/// Usable connections of `pool` to the peer with this id.
pub fn usable(pool: &Pool, peer: &PeerId) -> usize {
    pool.get_connections(Some(peer))
        .iter()
        .filter(|c| c.usable)
        .count()
}

/// All connections (usable or being retired) of `pool` to `peer`.
pub fn all_conns(pool: &Pool, peer: &PeerId) -> usize {
    pool.get_connections(Some(peer)).len()
}

/// Writes `data` on a new stream to `peer` and reads the echo back; an
/// error after the open names the connection the stream ran on.
pub async fn echo_once(pool: &Pool, peer: &PeerId, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = pool.open_stream(peer).await.map_err(|e| e.to_string())?;
    let conn = s.connection;
    let fail = |e: &dyn std::fmt::Display| format!("on connection {conn}: {e}");
    s.send.write_all(data).await.map_err(|e| fail(&e))?;
    s.send.finish().map_err(|e| fail(&e))?;
    let mut out = Vec::new();
    s.recv.read_to_end(&mut out).await.map_err(|e| fail(&e))?;
    Ok(out)
}
