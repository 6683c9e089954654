//! `NodeContext`: what every actor and task of one node shares: the
//! config, the identity, the QUIC endpoint, the registry of peers, the
//! stream handler, the clock of the pure core and the node's counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::registry::Registry;
use super::streams::StreamHandler;
use crate::config::Config;
use crate::identity::{Identity, PeerId};
use crate::metrics::node::NodeMetrics;
use crate::pool::{ConnKey, RetryPolicy, Time};

pub(crate) struct NodeContext {
    pub(crate) config: Config,
    pub(crate) identity: Identity,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) local_addr: SocketAddr,
    pub(crate) registry: Arc<Registry>,
    pub(crate) handler: Arc<dyn StreamHandler>,
    pub(crate) retry: RetryPolicy,
    epoch: Instant,
    next_conn: AtomicU64,
    next_dial_seq: AtomicU64,
    shutting_down: AtomicBool,
    pub(crate) node_metrics: NodeMetrics,
    /// Random per process start; sent in every hello (see `transport::hello`).
    pub(crate) instance: u64,
    /// QUIC settings shared by every peer's client config.
    pub(crate) transport: Arc<quinn::TransportConfig>,
}

impl NodeContext {
    pub(crate) fn new(
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
            node_metrics: NodeMetrics::new(),
            instance: rand::random(),
        }
    }

    pub(crate) fn local_id(&self) -> PeerId {
        self.identity.id
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
