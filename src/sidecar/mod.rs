//! The sidecar: TCP forwarding over pooled streams, services, the admin API,
//! and the node that runs them all with a graceful drain.
//!
//! [`Node::start`] takes its sockets already bound ([`Listeners`]) so tests
//! can run nodes in-process on ephemeral ports, and the caller decides when
//! to call [`Node::shutdown`] (the binary does on SIGTERM).

pub mod admin;
mod forward;
pub mod header;
mod pipe;
mod service;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Loaded};
use crate::metrics::sidecar::ForwardMetrics;
use crate::transport;
use crate::{Pool, PoolError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot bind {key} {addr}: {source}")]
    Bind {
        key: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// A bind error of the socket configured at `key`.
fn bind_err(key: &str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> NodeError {
    let key = key.to_string();
    move |source| NodeError::Bind { key, addr, source }
}

/// Every socket a node serves on, bound before it starts.
pub struct Listeners {
    pub udp: UdpSocket,
    pub admin: TcpListener,
    /// One per `[[forward]]`, in config order.
    pub forwards: Vec<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config`, naming the config key on failure.
    pub fn bind(config: &Config) -> Result<Listeners, NodeError> {
        let udp = transport::bind_socket(&config.node).map_err(|e| match e {
            transport::BindError::Socket { addr, source } => bind_err("node.listen", addr)(source),
            other => NodeError::Pool(PoolError::Start(other)),
        })?;
        let admin = TcpListener::bind(config.admin.listen)
            .map_err(bind_err("admin.listen", config.admin.listen))?;
        let forwards = config
            .forward
            .iter()
            .enumerate()
            .map(|(i, f)| {
                TcpListener::bind(f.listen)
                    .map_err(bind_err(&format!("forward[{i}].listen"), f.listen))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Listeners {
            udp,
            admin,
            forwards,
        })
    }
}

/// A running sidecar node.
pub struct Node {
    pool: Pool,
    admin: actix_web::dev::ServerHandle,
    /// The forwards' accept loops and the task keeping sidecar series alive.
    tasks: Vec<actix_rt::task::JoinHandle<()>>,
    admin_addr: SocketAddr,
    forward_addrs: Vec<SocketAddr>,
    drain_timeout: Duration,
}

impl Node {
    /// Starts the pool, the services, the forwards and the admin server.
    /// Must run on the actix System's arbiter (the QUIC endpoint lives there).
    pub fn start(loaded: Loaded, listeners: Listeners) -> Result<Node, NodeError> {
        let Loaded { config, identity } = loaded;
        let metrics = crate::metrics::install();
        let services = Arc::new(service::Services::new(
            &config.service,
            config.node.header_timeout,
            config.pool.stream_open_timeout,
        ));
        let admin_addr = local(&listeners.admin);
        let forward_addrs: Vec<SocketAddr> = listeners.forwards.iter().map(local).collect();
        let drain_timeout = config.admin.drain_timeout;
        let token = config.admin.token.clone();
        let forward_configs = config.forward.clone();
        let handler = Arc::new(services.clone());
        let pool = Pool::start_with_socket(config, identity, handler, listeners.udp)?;
        let admin = admin::start(listeners.admin, pool.clone(), metrics, token)
            .map_err(bind_err("admin.listen", admin_addr))?;
        let mut tasks = Vec::new();
        let mut forward_metrics = Vec::new();
        for (i, (listener, cfg)) in listeners
            .forwards
            .into_iter()
            .zip(forward_configs)
            .enumerate()
        {
            let key = format!("forward[{i}].listen");
            listener
                .set_nonblocking(true)
                .map_err(bind_err(&key, cfg.listen))?;
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(bind_err(&key, cfg.listen))?;
            let m = Arc::new(ForwardMetrics::new(&cfg.listen.to_string()));
            forward_metrics.push(m.clone());
            tasks.push(actix_rt::spawn(forward::serve(
                listener,
                cfg,
                pool.clone(),
                m,
            )));
        }
        // Forwards and services live as long as the node: their series are
        // touched so the idle timeout never drops them.
        tasks.push(actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(crate::metrics::TOUCH_INTERVAL);
            loop {
                tick.tick().await;
                forward_metrics.iter().for_each(|m| m.touch());
                services.touch();
            }
        }));
        tracing::info!(admin = %admin_addr, forwards = ?forward_addrs, "sidecar started");
        Ok(Node {
            pool,
            admin,
            tasks,
            admin_addr,
            forward_addrs,
            drain_timeout,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn forward_addrs(&self) -> &[SocketAddr] {
        &self.forward_addrs
    }

    /// The graceful drain: stop accepting TCP connections and new streams,
    /// let streams in flight finish (up to `admin.drain_timeout`), close
    /// every QUIC connection with "going away", stop the admin server.
    pub async fn shutdown(self) {
        tracing::info!(timeout = ?self.drain_timeout, "draining");
        for t in &self.tasks {
            t.abort();
        }
        self.pool.shutdown(self.drain_timeout).await;
        self.admin.stop(true).await;
        tracing::info!("stopped");
    }
}

fn local(l: &TcpListener) -> SocketAddr {
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}
