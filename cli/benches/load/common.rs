//! What the scenarios share besides the test kit: records and budgets, a
//! raw quinn baseline, and a farm of in-process peers.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use peerpool::config::Config;
use peerpool::identity::{Identity, PeerId};
use serde::Serialize;

pub use peerpool_testkit::load::serve_sink;
pub use peerpool_testkit::net::{free_tcp, free_udp, udp};
pub use peerpool_testkit::procs::{forwarding_pair, identity_in, NodeProc};
pub use peerpool_testkit::wait::wait_blocking;

/// Benches are built in release: this is the release binary.
/// The node binary the scenarios start: this build's, or `PEERPOOL_BIN`
/// (an older build, to compare two in one run).
pub fn bin() -> std::path::PathBuf {
    peerpool_testkit::node_binary(env!("CARGO_BIN_EXE_peerpool"))
}

/// One row of the table and of target/peerpool-bench.json.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Record {
    pub scenario: String,
    pub name: String,
    pub baseline: Option<String>,
    pub ops_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// ops/s of this row divided by ops/s of its baseline row.
    pub ratio_ops: Option<f64>,
    pub ratio_p50: Option<f64>,
    pub ratio_p99: Option<f64>,
    /// MB/s of this row divided by its baseline's.
    pub ratio_mb: Option<f64>,
    pub peak_rss_kb: Option<u64>,
    pub errors: u64,
    /// Scenario-specific figures.
    pub extra: serde_json::Value,
}

impl Record {
    pub fn new(scenario: &str, name: impl Into<String>) -> Record {
        Record {
            scenario: scenario.into(),
            name: name.into(),
            extra: serde_json::json!({}),
            ..Default::default()
        }
    }

    pub fn latency_from(mut self, h: &Histogram<u64>) -> Record {
        // Histograms hold nanoseconds.
        self.p50_us = h.value_at_quantile(0.5) as f64 / 1e3;
        self.p99_us = h.value_at_quantile(0.99) as f64 / 1e3;
        self.p999_us = h.value_at_quantile(0.999) as f64 / 1e3;
        self
    }

    /// Fills the ratios against `base`, measured in the same run.
    pub fn against(mut self, base: &Record) -> Record {
        self.baseline = Some(base.name.clone());
        let ratio = |a: f64, b: f64| (b > 0.0 && a.is_finite()).then(|| a / b);
        self.ratio_ops = ratio(self.ops_per_sec, base.ops_per_sec);
        self.ratio_p50 = ratio(self.p50_us, base.p50_us);
        self.ratio_p99 = ratio(self.p99_us, base.p99_us);
        self.ratio_mb = ratio(self.mb_per_sec, base.mb_per_sec);
        self
    }
}

pub fn histogram() -> Histogram<u64> {
    // 100 ns .. 100 s, 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(100, 100_000_000_000, 3).expect("valid bounds")
}

pub fn record_ns(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_nanos() as u64).max(100));
}

/// How long each measurement runs.
#[derive(Clone, Copy)]
pub struct Budget {
    pub quick: bool,
}

impl Budget {
    pub fn secs(&self, full: f64) -> Duration {
        Duration::from_secs_f64(if self.quick {
            (full / 8.0).clamp(0.2, 1.0)
        } else {
            full
        })
    }

    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// A multi-threaded tokio runtime with `threads` workers.
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime")
}

/// What both in-process QUIC servers do with a stream: copy it back (or,
/// with `sink`, read and discard it) until its end, finish, wait for the ack.
pub async fn serve_stream(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, sink: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(Some(n)) = recv.read(&mut buf).await {
        if !sink && send.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// Stops a server running on its own thread when dropped.
pub struct ServerStop {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerStop {
    pub fn new(
        stop: tokio::sync::oneshot::Sender<()>,
        thread: std::thread::JoinHandle<()>,
    ) -> ServerStop {
        ServerStop {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ServerStop {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub mod raw {
    use super::*;
    use peerpool::transport::{self, tls::InboundPolicy};

    #[derive(Debug)]
    struct AllowAll;
    impl InboundPolicy for AllowAll {
        fn check(
            &self,
            _: &peerpool::identity::Verified,
        ) -> Result<(), peerpool::metrics::labels::HandshakeReason> {
            Ok(())
        }
    }

    /// An echo server on its own thread and runtime: every bidi stream is
    /// copied back until its end, then finished. Returns its address, its
    /// id, and a handle that stops it when dropped.
    pub fn echo_server(node: &peerpool::config::NodeConfig) -> (SocketAddr, PeerId, ServerStop) {
        server(node, false)
    }

    /// Like [`echo_server`], but every stream is read to its end and
    /// discarded, then finished (for one-way bulk transfers).
    pub fn sink_server(node: &peerpool::config::NodeConfig) -> (SocketAddr, PeerId, ServerStop) {
        server(node, true)
    }

    fn server(node: &peerpool::config::NodeConfig, sink: bool) -> (SocketAddr, PeerId, ServerStop) {
        let identity = Identity::generate().expect("identity");
        let id = identity.id;
        let node = node.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let ep = transport::endpoint(&node, &identity, Arc::new(AllowAll), udp())
                    .expect("raw endpoint");
                let _ = tx.send(ep.local_addr().expect("addr"));
                let serve = async {
                    while let Some(inc) = ep.accept().await {
                        tokio::spawn(async move {
                            let Ok(conn) = inc.await else { return };
                            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                                tokio::spawn(async move {
                                    super::serve_stream(&mut send, &mut recv, sink).await
                                });
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stop_rx => {}
                }
            });
        });
        let addr = rx.recv().expect("raw server address");
        (addr, id, ServerStop::new(stop_tx, thread))
    }

    /// A client connection to a raw server (call inside a runtime).
    pub async fn connect(
        node: &peerpool::config::NodeConfig,
        server: SocketAddr,
        server_id: PeerId,
    ) -> (quinn::Endpoint, quinn::Connection) {
        let identity = Identity::generate().expect("identity");
        let ep = transport::endpoint(node, &identity, Arc::new(AllowAll), udp())
            .expect("client endpoint");
        let cfg = transport::client_config(
            node,
            &identity,
            server_id,
            Arc::new(transport::transport_config(node)),
        )
        .expect("client config");
        let conn = ep
            .connect_with(cfg, server, transport::tls::SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake");
        (ep, conn)
    }
}

/// Many peer nodes (peerpool pools) on one thread and actix System of this
/// process, each accepting the `central` node. Dropping the farm stops its
/// runtime abruptly: no close frame leaves, as if the processes crashed.
pub struct Farm {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// (name, id, address) per peer.
    pub peers: Vec<(String, PeerId, SocketAddr)>,
}

impl Farm {
    /// Starts one pool per identity, on `addrs` if given (a restart) or on
    /// fresh ports.
    pub fn start(identities: &[Identity], addrs: Option<&[SocketAddr]>, central: PeerId) -> Farm {
        use peerpool::config::PeerConfig;
        let sockets: Vec<UdpSocket> = match addrs {
            Some(a) => a
                .iter()
                .map(|addr| UdpSocket::bind(addr).expect("rebind a peer's port"))
                .collect(),
            None => identities.iter().map(|_| udp()).collect(),
        };
        let peers: Vec<(String, PeerId, SocketAddr)> = identities
            .iter()
            .zip(&sockets)
            .enumerate()
            .map(|(i, (id, s))| (format!("p{i}"), id.id, s.local_addr().expect("addr")))
            .collect();
        let identities = identities.to_vec();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let mut pools = Vec::new();
                for (identity, socket) in identities.into_iter().zip(sockets) {
                    let mut cfg = Config::default();
                    cfg.node.listen = socket.local_addr().expect("addr");
                    cfg.node.udp_recv_buffer = 256 * 1024;
                    cfg.node.udp_send_buffer = 256 * 1024;
                    cfg.peers = vec![PeerConfig::pinned("central", central, None)];
                    let nothing = Arc::new(|_s: peerpool::IncomingStream| async {});
                    pools.push(
                        peerpool::Pool::start_with_socket(cfg, identity, nothing, socket)
                            .expect("farm pool"),
                    );
                }
                let _ = tx.send(());
                let _ = stop_rx.await;
                drop(pools);
            });
        });
        rx.recv().expect("farm started");
        Farm {
            stop: Some(stop_tx),
            thread: Some(thread),
            peers,
        }
    }

    /// Peer entries for the central node's config.
    pub fn peer_configs(&self) -> Vec<peerpool::config::PeerConfig> {
        self.peers
            .iter()
            .map(|(name, id, addr)| {
                peerpool::config::PeerConfig::pinned(name.clone(), *id, Some(*addr))
            })
            .collect()
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.peers.iter().map(|p| p.2).collect()
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn identities(n: usize) -> Vec<Identity> {
    (0..n)
        .map(|_| Identity::generate().expect("identity"))
        .collect()
}
