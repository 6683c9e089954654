//! The sidecar: forwarding (TCP or Unix sockets) over pooled streams,
//! services, the admin API, and the node that runs them all with a graceful
//! drain.
//!
//! [`Node::start`] takes its sockets already bound ([`Listeners`]) so tests
//! can run nodes in-process on ephemeral ports, and the caller decides when
//! to call [`Node::shutdown`] (the binary does on SIGTERM).

mod access_log;
pub mod admin;
mod budget;
mod client;
mod diff;
mod forward;
pub mod header;
mod limit;
mod local;
mod pipe;
pub mod proxy;
pub mod reload;
mod service;
pub mod status;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Address, Config, Loaded};
use crate::transport;
use crate::{Pool, PoolError};
use budget::StreamBudget;
pub use local::{Listener, SocketFile, SOCKET_FILE_MODE};
use reload::Live;
pub use reload::{ReloadError, ReloadReport};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot bind {key} {addr}: {source}")]
    Bind {
        key: String,
        addr: Address,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    AccessLog(#[from] access_log::OpenError),
}

/// A bind error of the socket configured at `key`.
fn bind_err(key: &str, addr: impl Into<Address>) -> impl FnOnce(std::io::Error) -> NodeError {
    let (key, addr) = (key.to_string(), addr.into());
    move |source| NodeError::Bind { key, addr, source }
}

/// Every socket a node serves on, bound before it starts.
pub struct Listeners {
    pub udp: UdpSocket,
    pub admin: TcpListener,
    /// One per `[[forward]]`, in config order.
    pub forwards: Vec<Listener>,
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
                Listener::bind(&f.listen)
                    .map_err(bind_err(&format!("forward[{i}].listen"), f.listen.clone()))
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
    live: Arc<Live>,
    admin: actix_web::dev::ServerHandle,
    /// The task keeping sidecar series alive.
    touch: actix_rt::task::JoinHandle<()>,
    admin_addr: SocketAddr,
    drain_timeout: Duration,
}

impl Node {
    /// Starts the pool, the services, the forwards and the admin server.
    /// Must run on the actix System's arbiter (the QUIC endpoint lives there).
    pub fn start(loaded: Loaded, listeners: Listeners) -> Result<Node, NodeError> {
        Node::start_from(loaded, listeners, None)
    }

    /// Like [`Node::start`], remembering the config file `source` so that
    /// [`Node::reload`] (SIGHUP, `POST /reload`) can read it again.
    pub fn start_from(
        loaded: Loaded,
        listeners: Listeners,
        source: Option<PathBuf>,
    ) -> Result<Node, NodeError> {
        let Loaded {
            config,
            identity,
            trust,
        } = loaded;
        let metrics = crate::metrics::install();
        let memory = StreamBudget::new(&config.node);
        let log = access_log::AccessLog::start(&config.access_log)?;
        let services = Arc::new(service::Services::new(
            &config.service,
            config.node.header_timeout,
            config.pool.stream_open_timeout,
            memory.clone(),
            log.clone(),
        ));
        let admin_addr = local(&listeners.admin);
        let drain_timeout = config.admin.drain_timeout;
        let access = admin::Access {
            token: config.admin.token.clone(),
            public: config.admin.public.clone(),
        };
        let file_config = config.clone();
        let handler = Arc::new(services.clone());
        let pool = Pool::start_trusting(config, identity, trust, handler, listeners.udp)?;
        let mut forwards = Vec::new();
        for (i, (listener, cfg)) in listeners
            .forwards
            .into_iter()
            .zip(file_config.forward.clone())
            .enumerate()
        {
            let listen = cfg.listen.clone();
            if let Some(running) = reload::Running::start(listener, cfg, &pool, &memory, &log)
                .map_err(bind_err(&format!("forward[{i}].listen"), listen))?
            {
                forwards.push(running);
            }
        }
        let live = Arc::new(Live::new(
            pool.clone(),
            services,
            forwards,
            memory,
            log,
            file_config,
            source,
        ));
        let admin = admin::start_node(listeners.admin, live.clone(), metrics, access)
            .map_err(bind_err("admin.listen", admin_addr))?;
        // Forwards and services live as long as the node: their series are
        // touched so the idle timeout never drops them.
        let touched = live.clone();
        let touch = actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(crate::metrics::TOUCH_INTERVAL);
            loop {
                tick.tick().await;
                touched.forwards().iter().for_each(|f| f.metrics.touch());
                touched.services.touch();
                crate::metrics::sidecar::stream_memory(
                    touched.memory.reserved_bytes(),
                    touched.memory.limit_bytes(),
                );
            }
        });
        let node = Node {
            live,
            admin,
            touch,
            admin_addr,
            drain_timeout,
        };
        tracing::info!(admin = %admin_addr, forwards = ?node.forward_addrs(), "sidecar started");
        Ok(node)
    }

    pub fn pool(&self) -> &Pool {
        &self.live.pool
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound address of every forward, in config order.
    pub fn forward_addrs(&self) -> Vec<Address> {
        self.live
            .forwards()
            .iter()
            .map(|f| f.addr.clone())
            .collect()
    }

    /// Reopens the access log file at its path (after log rotation moved
    /// it); the binary calls this on SIGUSR1.
    pub fn reopen_access_log(&self) {
        self.live.log.reopen();
    }

    /// Reads the config file again and applies the difference (see
    /// [`reload`]); an invalid file changes nothing.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        self.live.reload_file().await
    }

    /// Applies `loaded` as a reload would.
    pub async fn apply(&self, loaded: Loaded) -> Result<ReloadReport, ReloadError> {
        self.live.apply_on_arbiter(loaded).await
    }

    /// The graceful drain: stop accepting connections (removing the
    /// forwards' socket files) and new streams,
    /// let streams in flight finish (up to `admin.drain_timeout`), close
    /// every QUIC connection with "going away", stop the admin server.
    pub async fn shutdown(self) {
        tracing::info!(timeout = ?self.drain_timeout, "draining");
        for f in self.live.forwards().iter_mut() {
            f.stop();
        }
        self.touch.abort();
        self.live.pool.shutdown(self.drain_timeout).await;
        self.admin.stop(true).await;
        tracing::info!("stopped");
    }
}

fn local(l: &TcpListener) -> SocketAddr {
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}
