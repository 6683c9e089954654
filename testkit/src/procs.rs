//! Real `peerpool run` processes: a guard that kills its child when
//! dropped (so a failing test or tool leaves nothing behind), identities
//! made on disk, and the two-node setup most black-box tests start from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use peerpool::config::{Config, ForwardConfig, PeerConfig, ServiceConfig};
use peerpool::identity::{self, IdentityError};
use peerpool::PeerId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::admin::Admin;
use crate::net::{free_tcp, free_udp};
use crate::stats::{cpu_secs, ProcStats};
use crate::wait::{try_wait_blocking, wait_blocking};

/// A child `peerpool run`, killed (SIGKILL) when dropped.
pub struct NodeProc {
    child: Option<Child>,
    /// The node's admin API (from its config).
    pub admin: Admin,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl NodeProc {
    /// Starts `bin run --config config`, appending its stderr to `log`, with
    /// `RUST_LOG=log_level`. The config must be readable: its
    /// `admin.listen` is where the node will answer.
    pub fn spawn(
        bin: &Path,
        config: &Path,
        log: &Path,
        log_level: &str,
    ) -> Result<NodeProc, String> {
        NodeProc::spawn_via(Command::new(bin), config, log, log_level)
    }

    /// Like [`NodeProc::spawn`] with `program` the command that runs the
    /// binary (`ip netns exec NS peerpool`, for a host of a testbed; it
    /// execs, so the pid is the node's).
    pub fn spawn_via(
        mut program: Command,
        config: &Path,
        log: &Path,
        log_level: &str,
    ) -> Result<NodeProc, String> {
        let text = std::fs::read_to_string(config)
            .map_err(|e| format!("read {}: {e}", config.display()))?;
        let parsed = Config::parse(&text).map_err(|p| {
            format!(
                "{}: {}",
                config.display(),
                p.first().map(ToString::to_string).unwrap_or_default()
            )
        })?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        let child = program
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .map_err(|e| format!("start {:?} run: {e}", program.get_program()))?;
        Ok(NodeProc {
            child: Some(child),
            admin: Admin::new(parsed.admin.listen),
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        })
    }

    /// [`NodeProc::spawn`] for tests: `RUST_LOG=info`, panics on failure.
    pub fn start(bin: impl AsRef<Path>, config: &Path, log: PathBuf) -> NodeProc {
        NodeProc::spawn(bin.as_ref(), config, &log, "info").unwrap_or_else(|e| panic!("{e}"))
    }

    /// For benches: writes `config` into `dir` with the identity kept there
    /// (made on first use), starts the node with `RUST_LOG` from
    /// `PEERPOOL_BENCH_LOG` (default `warn`), and waits for `/healthz`.
    pub fn launch(bin: impl AsRef<Path>, dir: &Path, mut config: Config) -> NodeProc {
        identity_in(dir);
        config.node.cert = dir.join(identity::CERT_FILE);
        config.node.key = dir.join(identity::KEY_FILE);
        let path = dir.join("peerpool.toml");
        std::fs::write(&path, toml::to_string(&config).expect("config toml"))
            .expect("write config");
        let level = std::env::var("PEERPOOL_BENCH_LOG").unwrap_or_else(|_| "warn".into());
        let node = NodeProc::spawn(bin.as_ref(), &path, &dir.join("peerpool.log"), &level)
            .unwrap_or_else(|e| panic!("{e}"));
        let what = format!("node up: {}", dir.display());
        wait_blocking(&what, Duration::from_secs(20), || node.admin.healthy());
        node
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal by name (`-TERM`, `-INT`, `-HUP`, ...).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {}", self.pid());
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Waits for the exit, at most `limit`; returns the exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let mut code = None;
        try_wait_blocking(limit, || match self.exited() {
            Some(status) => {
                code = status.code();
                true
            }
            None => self.child.is_none(),
        })?;
        code
    }

    /// SIGKILL: no drain, no close frames, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stats(&self) -> ProcStats {
        ProcStats::of(self.pid())
    }

    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid())
    }

    /// What the node logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The identity kept in `dir`: made there on first use, read after.
pub fn identity_in(dir: &Path) -> PeerId {
    match identity::keygen(dir, false, 30) {
        Ok(made) => made.id,
        Err(IdentityError::Exists { .. }) => {
            identity::id_of_cert_file(&dir.join(identity::CERT_FILE)).expect("existing identity")
        }
        Err(e) => panic!("keygen in {}: {e}", dir.display()),
    }
}

/// Two nodes on disk: a forwards to b's `echo` service.
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

impl Setup {
    /// Starts b, then a (both from `bin`), and waits up to 20 s until a is
    /// ready. Returns `(a, b)`.
    pub async fn start(&self, bin: impl AsRef<Path>) -> (NodeProc, NodeProc) {
        self.start_as(bin, Admin::new(self.a_admin)).await
    }

    /// [`Setup::start`] for an a whose admin API wants `token`.
    pub async fn start_with_token(
        &self,
        bin: impl AsRef<Path>,
        token: &str,
    ) -> (NodeProc, NodeProc) {
        self.start_as(bin, Admin::new(self.a_admin).with_token(token))
            .await
    }

    async fn start_as(&self, bin: impl AsRef<Path>, admin: Admin) -> (NodeProc, NodeProc) {
        let b = NodeProc::start(&bin, &self.b_config, self.b_log.clone());
        let a = NodeProc::start(&bin, &self.a_config, self.a_log.clone());
        tokio::task::spawn_blocking(move || {
            wait_blocking("node a ready", Duration::from_secs(20), || admin.ready())
        })
        .await
        .expect("the readiness wait");
        (a, b)
    }
}

/// Node a forwards to node b's "echo" service, whose upstream is `upstream`.
pub fn setup(upstream: SocketAddr, drain_timeout: Duration) -> Setup {
    setup_with(upstream, |_, b| b.admin.drain_timeout = drain_timeout)
}

/// The configs of two nodes on fresh loopback ports, with the identities
/// kept in `ka` and `kb` (made there on first use): a forwards each TCP
/// connection to b's `service`, b serves it from `upstream` and only
/// accepts a (it has no address for it). Everything else is the default.
pub fn forwarding_pair(
    ka: &Path,
    kb: &Path,
    upstream: SocketAddr,
    service: &str,
) -> (Config, Config) {
    let (ida, idb) = (identity_in(ka), identity_in(kb));
    let node = |keys: &Path, peer| {
        let mut c = Config::default();
        c.node.listen = free_udp();
        c.node.cert = keys.join(identity::CERT_FILE);
        c.node.key = keys.join(identity::KEY_FILE);
        c.admin.listen = free_tcp();
        c.peers = vec![peer];
        c
    };
    let mut b = node(kb, PeerConfig::pinned("a", ida, None));
    let mut a = node(ka, PeerConfig::pinned("b", idb, Some(b.node.listen)));
    a.forward = vec![ForwardConfig::new(free_tcp(), "b", service)];
    b.service = vec![ServiceConfig::new(service, upstream)];
    (a, b)
}

/// Like [`setup`], with `tune` applied to a's and b's configs last.
pub fn setup_with(upstream: SocketAddr, tune: impl FnOnce(&mut Config, &mut Config)) -> Setup {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (mut a, mut b) = forwarding_pair(
        &dir.path().join("a"),
        &dir.path().join("b"),
        upstream,
        "echo",
    );
    // Peers that vanish are noticed and redialled within seconds.
    for c in [&mut a, &mut b] {
        c.retry.max_delay = Duration::from_secs(2);
        c.node.keep_alive_interval = Duration::from_secs(1);
        c.node.idle_timeout = Duration::from_secs(3);
    }
    tune(&mut a, &mut b);
    let a_config = dir.path().join("a.toml");
    let b_config = dir.path().join("b.toml");
    std::fs::write(&a_config, toml::to_string(&a).expect("toml")).expect("write a.toml");
    std::fs::write(&b_config, toml::to_string(&b).expect("toml")).expect("write b.toml");
    Setup {
        b_udp: b.node.listen,
        a_admin: a.admin.listen,
        b_admin: b.admin.listen,
        forward: a.forward[0]
            .listen
            .tcp()
            .expect("the setup forwards over TCP"),
        a_log: dir.path().join("a.log"),
        b_log: dir.path().join("b.log"),
        a_config,
        b_config,
        _dir: dir,
    }
}

/// Waits until `GET /readyz` of `admin` answers 200.
pub fn wait_ready(admin: SocketAddr, what: &str, limit: Duration) {
    let admin = Admin::new(admin);
    wait_blocking(&format!("{what} ready"), limit, || admin.ready());
}

/// Sends `data` on a new TCP connection, half-closes, and reads until the
/// far end closes. A read error (an RST) is an error; a clean end returns
/// whatever came back, short or not.
pub async fn exchange(forward: SocketAddr, data: &[u8]) -> Result<Vec<u8>, String> {
    let c = tokio::net::TcpStream::connect(forward)
        .await
        .map_err(|e| e.to_string())?;
    exchange_over(c, data).await
}

/// [`exchange`] over a connection already made (TCP, a Unix socket).
pub async fn exchange_over(
    c: impl tokio::io::AsyncRead + tokio::io::AsyncWrite,
    data: &[u8],
) -> Result<Vec<u8>, String> {
    let (mut r, mut w) = tokio::io::split(c);
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

/// A TCP echo upstream on loopback, served by the calling runtime.
pub async fn echo_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an echo upstream");
    let addr = l.local_addr().expect("echo upstream address");
    tokio::spawn(crate::load::serve_echo(l));
    addr
}
