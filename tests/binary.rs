//! The real `peerpool` binary, twice: bytes through a forward, and the drain.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use peerpool::config::{Config, ForwardConfig, PeerConfig, ServiceConfig};
use peerpool::PeerId;
use rand::{Rng, SeedableRng};
use support::{free_tcp, free_udp, http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_peerpool");

/// A child `peerpool run`, killed if the test ends early.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn start(config: &Path, log: PathBuf) -> Proc {
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

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit, at most `limit`; returns the exit code.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
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

    fn log(&self) -> String {
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

fn keygen(dir: &Path) -> PeerId {
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    a_config: PathBuf,
    b_config: PathBuf,
    a_admin: SocketAddr,
    b_admin: SocketAddr,
    forward: SocketAddr,
    a_log: PathBuf,
    b_log: PathBuf,
}

/// Node a forwards to node b's "echo" service, whose upstream is `upstream`.
fn setup(upstream: SocketAddr, drain_timeout: f64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (ka, kb) = (dir.path().join("a"), dir.path().join("b"));
    let (ida, idb) = (keygen(&ka), keygen(&kb));
    let (ua, ub) = (free_udp(), free_udp());
    let forward = free_tcp();
    let mut a = Config::default();
    a.node.listen = ua;
    a.node.cert = ka.join("node.crt");
    a.node.key = ka.join("node.key");
    a.admin.listen = free_tcp();
    a.peers = vec![PeerConfig {
        name: "b".into(),
        id: idb,
        addr: Some(ub),
    }];
    a.forward = vec![ForwardConfig {
        listen: forward,
        peer: "b".into(),
        service: "echo".into(),
    }];
    let mut b = Config::default();
    b.node.listen = ub;
    b.node.cert = kb.join("node.crt");
    b.node.key = kb.join("node.key");
    b.admin.listen = free_tcp();
    b.admin.drain_timeout = drain_timeout;
    b.peers = vec![PeerConfig {
        name: "a".into(),
        id: ida,
        addr: None,
    }];
    b.service = vec![ServiceConfig {
        name: "echo".into(),
        upstream,
    }];
    for c in [&mut a, &mut b] {
        c.retry.max_delay = 2.0;
        c.node.keep_alive_interval = 1.0;
        c.node.idle_timeout = 3.0;
    }
    let a_config = dir.path().join("a.toml");
    let b_config = dir.path().join("b.toml");
    std::fs::write(&a_config, toml::to_string(&a).unwrap()).unwrap();
    std::fs::write(&b_config, toml::to_string(&b).unwrap()).unwrap();
    Setup {
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

fn wait_ready(admin: SocketAddr, what: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        if http("GET", &format!("http://{admin}/readyz"), None, None).0 == 200 {
            return;
        }
        assert!(start.elapsed() < limit, "{what} not ready after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn peer_state(admin: SocketAddr, peer: &str) -> Option<String> {
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

/// One request: a TCP connection through the forward carrying `data`; the
/// echo must come back whole, then EOF.
async fn through(forward: SocketAddr, data: &[u8]) -> Result<(), String> {
    let mut c = tokio::net::TcpStream::connect(forward)
        .await
        .map_err(|e| e.to_string())?;
    let (mut r, mut w) = c.split();
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let mut back = Vec::with_capacity(data.len());
    let read = r.read_to_end(&mut back);
    let (wr, rd) = tokio::join!(write, read);
    wr.map_err(|e| format!("write: {e}"))?;
    rd.map_err(|e| format!("read: {e}"))?;
    if back != data {
        return Err(format!(
            "echo differs: sent {} bytes, got {}",
            data.len(),
            back.len()
        ));
    }
    Ok(())
}

async fn echo_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(peerpool::tools::load::serve_echo(l));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_of_random_sizes_come_back_byte_for_byte() {
    let upstream = echo_upstream().await;
    let s = setup(upstream, 5.0);
    let _b = Proc::start(&s.b_config, s.b_log.clone());
    let a = Proc::start(&s.a_config, s.a_log.clone());
    let admin = s.a_admin;
    tokio::task::spawn_blocking(move || wait_ready(admin, "node a", Duration::from_secs(20)))
        .await
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let sizes: Vec<usize> = (0..1000)
        .map(|i| match i % 10 {
            0 => 0,
            1 => 1,
            _ => rng.random_range(1..=1024 * 1024),
        })
        .collect();
    let total: usize = sizes.iter().sum();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunk in sizes.chunks(125) {
        let chunk = chunk.to_vec();
        let forward = s.forward;
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(chunk.len() as u64);
            for size in chunk {
                let mut data = vec![0u8; size];
                rng.fill(&mut data[..]);
                through(forward, &data).await?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            panic!("{e}\nnode a log:\n{}", a.log());
        }
    }
    println!(
        "1000 requests, {:.0} MiB each way, in {:?}",
        total as f64 / 1048576.0,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_fifty_streams_in_flight_and_the_pool_heals() {
    let upstream = echo_upstream().await;
    let drain_timeout = 5.0;
    let s = setup(upstream, drain_timeout);
    let mut b = Proc::start(&s.b_config, s.b_log.clone());
    let _a = Proc::start(&s.a_config, s.a_log.clone());
    let (a_admin, b_admin) = (s.a_admin, s.b_admin);
    tokio::task::spawn_blocking(move || wait_ready(a_admin, "node a", Duration::from_secs(20)))
        .await
        .unwrap();

    // 50 connections, each with the first half of its request echoed: the
    // streams are established and in flight.
    let mut conns = Vec::new();
    for i in 0..50u32 {
        let mut c = tokio::net::TcpStream::connect(s.forward).await.unwrap();
        let first = format!("request {i} first half;");
        c.write_all(first.as_bytes()).await.unwrap();
        let mut back = vec![0u8; first.len()];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(back, first.as_bytes());
        conns.push((i, c));
    }
    b.signal("-TERM");
    let signalled = Instant::now();
    // Every stream finishes its request after the signal.
    for (i, c) in conns.iter_mut() {
        let second = format!("request {i} second half, after SIGTERM");
        c.write_all(second.as_bytes()).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, second.as_bytes(), "stream {i}");
    }
    let code = tokio::task::spawn_blocking(move || {
        let code = b.wait(Duration::from_secs_f64(drain_timeout + 2.0));
        (code, b.log())
    })
    .await
    .unwrap();
    let exited_after = signalled.elapsed();
    assert_eq!(code.0, Some(0), "b's exit; log:\n{}", code.1);
    assert!(
        exited_after < Duration::from_secs_f64(drain_timeout + 1.0),
        "exit took {exited_after:?}"
    );
    assert!(code.1.contains("draining"), "{}", code.1);

    // New connections fail fast while b is gone...
    let started = Instant::now();
    assert!(through(s.forward, b"while b is down").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(6));
    // ...and a's pool is healthy again once b is back.
    let _b = Proc::start(&s.b_config, s.b_log.with_extension("2.log"));
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        while peer_state(a_admin, "b").as_deref() != Some("healthy") {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "a's pool did not heal"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        wait_ready(b_admin, "node b", Duration::from_secs(10));
    })
    .await
    .unwrap();
    through(s.forward, b"after b came back").await.unwrap();
}
