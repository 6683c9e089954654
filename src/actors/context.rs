use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::shared::{PooledRecv, PooledSend, Registry};
use crate::config::Config;
use crate::identity::{Identity, PeerId};
use crate::pool::{ConnKey, RetryPolicy, Time};

/// A stream a peer opened to this node.
pub struct IncomingStream {
    /// The configured name of the peer (or `u-<id prefix>` for an unknown
    /// peer admitted by `accept_unknown_peers`).
    pub peer: Arc<str>,
    pub peer_id: PeerId,
    pub send: PooledSend,
    pub recv: PooledRecv,
}

/// What the node does with streams peers open to it.
pub trait StreamHandler: Send + Sync + 'static {
    fn handle(&self, stream: IncomingStream) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl<F, Fut> StreamHandler for F
where
    F: Fn(IncomingStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(&self, stream: IncomingStream) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self(stream))
    }
}

/// Everything the actors of one node share.
pub(crate) struct NodeContext {
    pub config: Config,
    pub identity: Identity,
    pub endpoint: quinn::Endpoint,
    pub local_addr: SocketAddr,
    pub registry: Arc<Registry>,
    pub handler: Arc<dyn StreamHandler>,
    pub retry: RetryPolicy,
    pub epoch: Instant,
    next_conn: AtomicU64,
    next_dial_seq: AtomicU64,
    pub shutting_down: AtomicBool,
    pub node_metrics: crate::metrics::NodeMetrics,
    /// Random per process start; sent in every hello (see `transport::hello`).
    pub instance: u64,
    /// QUIC settings shared by every peer's client config.
    pub transport: Arc<quinn::TransportConfig>,
}

impl NodeContext {
    pub fn new(
        config: Config,
        identity: Identity,
        endpoint: quinn::Endpoint,
        local_addr: SocketAddr,
        registry: Arc<Registry>,
        handler: Arc<dyn StreamHandler>,
    ) -> NodeContext {
        let transport = Arc::new(crate::transport::transport_config(&config.node));
        NodeContext {
            transport,
            retry: config.retry.policy(),
            config,
            identity,
            endpoint,
            local_addr,
            registry,
            handler,
            epoch: Instant::now(),
            next_conn: AtomicU64::new(1),
            next_dial_seq: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            node_metrics: crate::metrics::NodeMetrics::new(),
            instance: rand::random(),
        }
    }

    pub fn local_id(&self) -> PeerId {
        self.identity.id
    }

    /// The pure core's notion of now.
    pub fn now(&self) -> Time {
        self.epoch.elapsed()
    }

    /// The `Instant` of a pure-core time.
    pub fn instant(&self, t: Time) -> Instant {
        self.epoch + t
    }

    pub fn next_conn_key(&self) -> ConnKey {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn next_dial_seq(&self) -> u64 {
        self.next_dial_seq.fetch_add(1, Ordering::Relaxed)
    }

    pub fn drain_timeout(&self) -> Duration {
        self.config.admin.drain_timeout()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}
