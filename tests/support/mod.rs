//! Helpers shared by the black-box tests: nodes on 127.0.0.1, waiting on
//! conditions with a deadline, reading metrics.
#![allow(dead_code)]

pub mod procs;
pub mod relay;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerpool::config::{Config, PeerConfig};
use peerpool::identity::Identity;
use peerpool::pool::Strategy;
use peerpool::{IncomingStream, Pool, StreamHandler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A UDP socket on an ephemeral loopback port.
pub fn udp() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// A config for tests: ephemeral ports, short timeouts, N connections.
pub fn config(n: usize, strategy: Strategy) -> Config {
    let mut c = Config::default();
    c.node.listen = "127.0.0.1:0".parse().unwrap();
    c.pool.max_connections_per_peer = n;
    c.pool.load_balancing_strategy = strategy;
    c.pool.connection_timeout = 2.0;
    c.pool.stream_open_timeout = 2.0;
    c.admin.drain_timeout = 2.0;
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

pub struct Node {
    pub pool: Pool,
    pub identity: Identity,
    pub addr: SocketAddr,
}

/// Starts two nodes "a" and "b" that know each other; `a_dials` /
/// `b_dials` say which of them has the other's address.
pub fn pair(base: &Config, a_dials: bool, b_dials: bool) -> (Node, Node) {
    let ida = Identity::generate().unwrap();
    let idb = Identity::generate().unwrap();
    let (sa, sb) = (udp(), udp());
    let (addr_a, addr_b) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
    let mut ca = base.clone();
    ca.peers = vec![PeerConfig {
        name: "b".into(),
        id: idb.id,
        addr: a_dials.then_some(addr_b),
    }];
    let mut cb = base.clone();
    cb.peers = vec![PeerConfig {
        name: "a".into(),
        id: ida.id,
        addr: b_dials.then_some(addr_a),
    }];
    let a = Pool::start_with_socket(ca, ida.clone(), echo(), sa).unwrap();
    let b = Pool::start_with_socket(cb, idb.clone(), echo(), sb).unwrap();
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

/// Polls `cond` every 5 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Usable connections of `pool` to the peer with this id.
pub fn usable(pool: &Pool, peer: &peerpool::PeerId) -> usize {
    pool.get_connections(Some(peer))
        .iter()
        .filter(|c| c.usable)
        .count()
}

/// All connections (usable or being retired) of `pool` to `peer`.
pub fn all_conns(pool: &Pool, peer: &peerpool::PeerId) -> usize {
    pool.get_connections(Some(peer)).len()
}

/// The value of one series in Prometheus text, matching all `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// Writes `data` on a new stream to `peer` and reads the echo back; an
/// error after the open names the connection the stream ran on.
pub async fn echo_once(
    pool: &Pool,
    peer: &peerpool::PeerId,
    data: &[u8],
) -> Result<Vec<u8>, String> {
    let mut s = pool.open_stream(peer).await.map_err(|e| e.to_string())?;
    let conn = s.connection;
    let fail = |e: &dyn std::fmt::Display| format!("on connection {conn}: {e}");
    s.send.write_all(data).await.map_err(|e| fail(&e))?;
    s.send.finish().map_err(|e| fail(&e))?;
    let mut out = Vec::new();
    s.recv.read_to_end(&mut out).await.map_err(|e| fail(&e))?;
    Ok(out)
}

/// A blocking HTTP call for tests: (status, body). Run it off the actix
/// thread (`tokio::task::spawn_blocking`) when the server is in-process.
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let auth = token.map(|t| format!("Bearer {t}"));
    let result = match method {
        "GET" => {
            let mut r = agent.get(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        "DELETE" => {
            let mut r = agent.delete(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        "POST" => {
            let mut r = agent.post(url).header("Content-Type", "application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(body.unwrap_or(""))
        }
        other => panic!("unsupported method {other}"),
    };
    match result {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            (status, text)
        }
        Err(e) => (0, e.to_string()),
    }
}

/// `http` from async code without blocking the runtime.
pub async fn http_async(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let (m, u, t, b) = (
        method.to_string(),
        url.to_string(),
        token.map(str::to_string),
        body.map(str::to_string),
    );
    tokio::task::spawn_blocking(move || http(&m, &u, t.as_deref(), b.as_deref()))
        .await
        .expect("http call panicked")
}

/// A free TCP port on loopback (bound and released: for configs of child
/// processes, which must bind by themselves).
pub fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A free UDP port on loopback, likewise.
pub fn free_udp() -> SocketAddr {
    udp().local_addr().unwrap()
}

/// Parses a (multi-document) YAML file into JSON with Python's PyYAML,
/// which the build machines have (`.ci/run` installs it if not).
pub fn yaml_documents(path: &std::path::Path) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{} is not valid YAML: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

/// A program the test needs; fails with what to install when it is missing.
pub fn require(program: &str, hint: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not installed: {hint}"))
}
