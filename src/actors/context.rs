//! `NodeContext`: what every actor and task of one node shares: the
//! config, the current TLS identity and trust (replaced on a reload), the
//! QUIC endpoint, the registry of peers, the stream handler, the DNS
//! resolver, the clock of the pure core and the node's counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use super::registry::Registry;
use super::streams::StreamHandler;
use crate::config::Config;
use crate::identity::ca::Trust;
use crate::identity::{Identity, PeerId};
use crate::metrics::node::NodeMetrics;
use crate::pool::peer::EjectionPolicy;
use crate::pool::{ConnKey, RetryPolicy, Time};

/// Who this node is and whom it trusts: what new connections use. Existing
/// connections keep what they were made with.
#[derive(Debug, Clone)]
pub(crate) struct TlsState {
    pub(crate) identity: Identity,
    pub(crate) trust: Option<Arc<Trust>>,
}

pub(crate) struct NodeContext {
    pub(crate) config: Config,
    tls: RwLock<Arc<TlsState>>,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) local_addr: SocketAddr,
    pub(crate) registry: Arc<Registry>,
    /// The handshake gate, shared with the endpoint's socket.
    pub(crate) gate: Arc<crate::transport::GateHandle>,
    /// Streams whose data may wait for its reader, shared with the
    /// endpoint's socket (`transport::backlog`).
    pub(crate) backlog: Arc<crate::transport::Backlog>,
    pub(crate) handler: Arc<dyn StreamHandler>,
    pub(crate) retry: RetryPolicy,
    pub(crate) ejection: EjectionPolicy,
    epoch: Instant,
    next_conn: AtomicU64,
    next_dial_seq: AtomicU64,
    shutting_down: AtomicBool,
    pub(crate) node_metrics: NodeMetrics,
    /// Random per process start; sent in every hello (see `transport::hello`).
    pub(crate) instance: u64,
    /// QUIC settings shared by every dial.
    pub(crate) transport: Arc<quinn::TransportConfig>,
    /// Made at the first host name to resolve.
    resolver: tokio::sync::OnceCell<Result<super::discovery::Resolver, String>>,
}

impl NodeContext {
    pub(crate) fn new(
        config: Config,
        tls: TlsState,
        endpoint: quinn::Endpoint,
        local_addr: SocketAddr,
        registry: Arc<Registry>,
        socket: crate::transport::SocketShared,
        handler: Arc<dyn StreamHandler>,
    ) -> NodeContext {
        let transport = Arc::new(crate::transport::transport_config(&config.node));
        NodeContext {
            transport,
            retry: config.retry.policy(),
            ejection: config.outlier.policy(),
            config,
            tls: RwLock::new(Arc::new(tls)),
            endpoint,
            local_addr,
            registry,
            gate: socket.gate,
            backlog: socket.backlog,
            handler,
            epoch: Instant::now(),
            next_conn: AtomicU64::new(1),
            next_dial_seq: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            node_metrics: NodeMetrics::new(),
            instance: rand::random(),
            resolver: tokio::sync::OnceCell::new(),
        }
    }

    /// The identity and trust new connections use.
    pub(crate) fn tls(&self) -> Arc<TlsState> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// From now on new connections use `tls` (a reload).
    pub(crate) fn set_tls(&self, tls: TlsState) {
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tls);
    }

    pub(crate) fn local_id(&self) -> PeerId {
        self.tls().identity.id
    }

    /// The system's DNS resolver (`/etc/resolv.conf`), made on first use.
    pub(crate) async fn resolver(&self) -> Result<&super::discovery::Resolver, String> {
        self.resolver
            .get_or_init(|| async { super::discovery::Resolver::system() })
            .await
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The pure core's notion of now.
    pub(crate) fn now(&self) -> Time {
        self.epoch.elapsed()
    }

    /// The `Instant` of a pure-core time.
    pub(crate) fn instant(&self, t: Time) -> Instant {
        self.epoch + t
    }

    pub(crate) fn next_conn_key(&self) -> ConnKey {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn next_dial_seq(&self) -> u64 {
        self.next_dial_seq.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn start_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}
