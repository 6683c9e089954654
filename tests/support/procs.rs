//! Real `peerpool run` processes for black-box tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use peerpool::config::{Config, ForwardConfig, PeerConfig, ServiceConfig};
use peerpool::PeerId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{free_tcp, free_udp, http};

pub const BIN: &str = env!("CARGO_BIN_EXE_peerpool");

/// A child `peerpool run`, killed if the test ends early.
pub struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn start(config: &Path, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start peerpool run");
        Proc {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit, at most `limit`; returns the exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no drain, no close frames, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (VmRSS KiB, threads, open file descriptors) of the process.
    pub fn resources(&self) -> (u64, u64, u64) {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        (field("VmRSS:"), field("Threads:"), fds)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn keygen(dir: &Path) -> PeerId {
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

pub struct Setup {
    pub _dir: tempfile::TempDir,
    /// b's QUIC address.
    pub b_udp: SocketAddr,
    pub a_config: PathBuf,
    pub b_config: PathBuf,
    pub a_admin: SocketAddr,
    pub b_admin: SocketAddr,
    pub forward: SocketAddr,
    pub a_log: PathBuf,
    pub b_log: PathBuf,
}

/// Node a forwards to node b's "echo" service, whose upstream is `upstream`.
pub fn setup(upstream: SocketAddr, drain_timeout: f64) -> Setup {
    setup_with(upstream, |_, b| b.admin.drain_timeout = drain_timeout)
}

/// Like [`setup`], with `tune` applied to a's and b's configs last.
pub fn setup_with(upstream: SocketAddr, tune: impl FnOnce(&mut Config, &mut Config)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (ka, kb) = (dir.path().join("a"), dir.path().join("b"));
    let (ida, idb) = (keygen(&ka), keygen(&kb));
    let (ua, ub) = (free_udp(), free_udp());
    let forward = free_tcp();
    // A node with its identity in `keys`, listening on `listen`, knowing `peer`.
    let node = |keys: &Path, listen, peer| {
        let mut c = Config::default();
        c.node.listen = listen;
        c.node.cert = keys.join("node.crt");
        c.node.key = keys.join("node.key");
        c.admin.listen = free_tcp();
        c.peers = vec![peer];
        c
    };
    let mut a = node(
        &ka,
        ua,
        PeerConfig {
            name: "b".into(),
            id: idb,
            addr: Some(ub),
        },
    );
    a.forward = vec![ForwardConfig {
        listen: forward,
        peer: "b".into(),
        service: "echo".into(),
    }];
    let mut b = node(
        &kb,
        ub,
        PeerConfig {
            name: "a".into(),
            id: ida,
            addr: None,
        },
    );
    b.service = vec![ServiceConfig {
        name: "echo".into(),
        upstream,
    }];
    for c in [&mut a, &mut b] {
        c.retry.max_delay = 2.0;
        c.node.keep_alive_interval = 1.0;
        c.node.idle_timeout = 3.0;
    }
    tune(&mut a, &mut b);
    let a_config = dir.path().join("a.toml");
    let b_config = dir.path().join("b.toml");
    std::fs::write(&a_config, toml::to_string(&a).unwrap()).unwrap();
    std::fs::write(&b_config, toml::to_string(&b).unwrap()).unwrap();
    Setup {
        b_udp: b.node.listen,
        a_admin: a.admin.listen,
        b_admin: b.admin.listen,
        forward,
        a_log: dir.path().join("a.log"),
        b_log: dir.path().join("b.log"),
        a_config,
        b_config,
        _dir: dir,
    }
}

pub fn wait_ready(admin: SocketAddr, what: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        if http("GET", &format!("http://{admin}/readyz"), None, None).0 == 200 {
            return;
        }
        assert!(start.elapsed() < limit, "{what} not ready after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn peer_state(admin: SocketAddr, peer: &str) -> Option<String> {
    let (status, body) = http("GET", &format!("http://{admin}/peers"), None, None);
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.as_array()?
        .iter()
        .find(|p| p["name"] == peer)
        .and_then(|p| p["state"].as_str().map(str::to_string))
}

/// Sends `data` on a new TCP connection, half-closes, and reads until the
/// far end closes. A read error (an RST) is an error; a clean end returns
/// whatever came back, short or not.
pub async fn exchange(forward: SocketAddr, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut c = tokio::net::TcpStream::connect(forward)
        .await
        .map_err(|e| e.to_string())?;
    let (mut r, mut w) = c.split();
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let mut back = Vec::with_capacity(data.len());
    let (wr, rd) = tokio::join!(write, r.read_to_end(&mut back));
    // The read decides: a write error with a clean read is still reported.
    rd.map_err(|e| format!("read: {e}"))?;
    wr.map_err(|e| format!("write: {e} (after {} bytes back)", back.len()))?;
    Ok(back)
}

/// One request: a TCP connection through the forward carrying `data`; the
/// echo must come back whole, then EOF.
pub async fn through(forward: SocketAddr, data: &[u8]) -> Result<(), String> {
    let back = exchange(forward, data).await?;
    if back != data {
        return Err(format!(
            "echo differs: sent {} bytes, got {}",
            data.len(),
            back.len()
        ));
    }
    Ok(())
}

pub async fn echo_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(peerpool::tools::load::serve_echo(l));
    addr
}

/// GET /metrics of a node.
pub fn scrape(admin: SocketAddr) -> String {
    http("GET", &format!("http://{admin}/metrics"), None, None).1
}

/// GET /peers of a node as JSON (Null when the node does not answer).
pub fn peers_json(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = http("GET", &format!("http://{admin}/peers"), None, None);
    if status != 200 {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

/// Usable connections of a node to its peer `name` (None if it does not answer).
pub fn usable_to(admin: SocketAddr, name: &str) -> Option<usize> {
    let v = peers_json(admin);
    let peer = v.as_array()?.iter().find(|p| p["name"] == name)?.clone();
    Some(
        peer["connections"]
            .as_array()
            .map(|c| c.iter().filter(|c| c["usable"] == true).count())
            .unwrap_or(0),
    )
}

/// Polls `cond` every 20 ms from a blocking thread; panics naming `what`
/// after `limit`. Returns how long it took.
pub fn wait_blocking(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}
