//! Hot reload (SIGHUP, `POST /reload`): the config file is read again and,
//! when valid, applied as a diff. New peers, forwards and services start;
//! removed ones drain (what runs finishes); changed ones are replaced (a
//! peer's old connections are retired, a forward's listener stays bound);
//! the node's certificate, key and CA bundle are used by new connections
//! from then on. Keys that only a restart can apply are named in the
//! report and in the log. An invalid file changes nothing.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{oneshot, watch};

use super::access_log::AccessLog;
use super::budget::StreamBudget;
pub use super::diff::Diff;
use super::forward::{self, Forward};
use super::local::{Listener, SocketFile};
use super::service::Services;
use crate::config::{Address, Config, ForwardConfig, Loaded};
use crate::metrics::labels::ReloadResult;
use crate::metrics::sidecar::ForwardMetrics;
use crate::Pool;

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    pub peers: Diff<String>,
    /// By listen address.
    pub forwards: Diff<String>,
    pub services: Diff<String>,
    /// The node's certificate or the CA bundle changed; new connections
    /// use the new ones.
    pub tls_reloaded: bool,
    /// Tables whose changes take effect only after a restart.
    pub restart_needed: Vec<String>,
    /// Parts of the diff that could not be applied (the rest was).
    pub errors: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this node was started without a config file: nothing to read again")]
    NoFile,
    #[error("{} problem(s) in the config file; nothing changed:\n{}", .0.len(), .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("cannot bind {key} {addr}: {source}; nothing changed")]
    Bind {
        key: String,
        addr: Address,
        source: std::io::Error,
    },
    #[error("the node has stopped")]
    Stopped,
}

/// A running forward.
pub(crate) struct Running {
    pub(crate) config: ForwardConfig,
    pub(crate) addr: Address,
    /// A Unix listener's socket file, removed when the forward stops.
    file: Option<SocketFile>,
    settings: watch::Sender<Arc<Forward>>,
    task: actix_rt::task::JoinHandle<()>,
    pub(crate) metrics: Arc<ForwardMetrics>,
}

impl Running {
    /// Starts forwarding on `listener`; `None` when the forward's service
    /// name cannot be sent (`check` refuses such configs).
    pub(crate) fn start(
        listener: Listener,
        config: ForwardConfig,
        pool: &Pool,
        memory: &Arc<StreamBudget>,
        log: &Arc<AccessLog>,
    ) -> std::io::Result<Option<Running>> {
        let addr = listener.local_addr()?;
        let (listener, file) = listener.serve()?;
        let metrics = Arc::new(ForwardMetrics::new(&config.listen.to_string()));
        let Some(settings) = Forward::new(
            config.clone(),
            pool.clone(),
            metrics.clone(),
            memory.clone(),
            log.clone(),
        ) else {
            tracing::error!(forward = %config.listen, service = %config.service, "service name cannot be sent; forward disabled");
            return Ok(None);
        };
        let (tx, rx) = watch::channel(Arc::new(settings));
        let task = actix_rt::spawn(forward::serve(listener, rx));
        Ok(Some(Running {
            config,
            addr,
            file,
            settings: tx,
            task,
            metrics,
        }))
    }

    pub(crate) fn stop(&mut self) {
        self.task.abort();
        self.file = None;
    }
}

/// What a reload changes, shared by the node, its signal handler and the
/// admin API. Reloads run one at a time on the node's arbiter.
pub(crate) struct Live {
    pub(crate) pool: Pool,
    pub(crate) services: Arc<Services>,
    pub(crate) forwards: Mutex<Vec<Running>>,
    pub(crate) memory: Arc<StreamBudget>,
    pub(crate) log: Arc<AccessLog>,
    /// The config as last applied.
    current: Mutex<Config>,
    source: Option<PathBuf>,
    arbiter: actix_rt::ArbiterHandle,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Live {
    pub(crate) fn new(
        pool: Pool,
        services: Arc<Services>,
        forwards: Vec<Running>,
        memory: Arc<StreamBudget>,
        log: Arc<AccessLog>,
        current: Config,
        source: Option<PathBuf>,
    ) -> Live {
        Live {
            pool,
            services,
            forwards: Mutex::new(forwards),
            memory,
            log,
            current: Mutex::new(current),
            source,
            arbiter: actix_rt::Arbiter::current(),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn forwards(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.forwards.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The config as last applied (the file's, not peers added by the API).
    pub(crate) fn current(&self) -> Config {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the config file again and applies it.
    pub(crate) async fn reload_file(self: &Arc<Self>) -> Result<ReloadReport, ReloadError> {
        let Some(path) = self.source.clone() else {
            return Err(ReloadError::NoFile);
        };
        let _one = self.one_at_a_time.lock().await;
        let loaded = match tokio::task::spawn_blocking(move || Config::load(&path)).await {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => {
                let problems = e.problems();
                for p in &problems {
                    tracing::error!("reload: {p}");
                }
                crate::metrics::config_reload(ReloadResult::Error);
                return Err(ReloadError::Invalid(problems));
            }
            Err(_) => return Err(ReloadError::Stopped),
        };
        self.apply_on_arbiter(loaded).await
    }

    /// Applies `loaded` on the node's arbiter (forwards are spawned there,
    /// next to the QUIC endpoint), from whatever thread asks.
    pub(crate) async fn apply_on_arbiter(
        self: &Arc<Self>,
        loaded: Loaded,
    ) -> Result<ReloadReport, ReloadError> {
        let (tx, rx) = oneshot::channel();
        let live = self.clone();
        let sent = self.arbiter.spawn_fn(move || {
            actix_rt::spawn(async move {
                let _ = tx.send(live.apply(loaded).await);
            });
        });
        if !sent {
            return Err(ReloadError::Stopped);
        }
        let result = rx.await.unwrap_or(Err(ReloadError::Stopped));
        let label = match &result {
            Ok(r) if r.errors.is_empty() => ReloadResult::Ok,
            _ => ReloadResult::Error,
        };
        crate::metrics::config_reload(label);
        match &result {
            Ok(r) => tracing::info!(report = ?r, "config reloaded"),
            Err(e) => tracing::error!(error = %e, "config reload failed"),
        }
        result
    }

    async fn apply(&self, loaded: Loaded) -> Result<ReloadReport, ReloadError> {
        let Loaded {
            config,
            identity,
            trust,
        } = loaded;
        let old = self.current();
        let mut report = ReloadReport {
            restart_needed: restart_needed(&old, &config),
            ..ReloadReport::default()
        };
        for table in &report.restart_needed {
            tracing::warn!(table = %table, "reload: [{table}] changed; it takes effect after a restart");
        }

        // Everything that can fail for want of a resource comes first, so
        // a failure leaves the node as it was.
        let plan = plan_forwards(&self.forwards(), &config.forward);
        let mut bound = Vec::new();
        for (i, f) in &plan.start {
            let listener = Listener::bind(&f.listen).map_err(|source| ReloadError::Bind {
                key: format!("forward[{i}].listen"),
                addr: f.listen.clone(),
                source,
            })?;
            bound.push((listener, f.clone()));
        }

        let before = self.pool.tls_state();
        let rotated =
            before.identity.cert != identity.cert || before.trust.as_deref() != trust.as_ref();
        if let Err(e) = self.pool.set_tls(identity, trust) {
            report.errors.push(format!("node.cert/node.key: {e}"));
        }
        report.tls_reloaded = rotated;

        self.apply_peers(&old, &config, &mut report).await;
        report.services = self.services.replace(&config.service);

        {
            let mut forwards = self.forwards();
            for i in plan.stop.iter().rev() {
                let mut r = forwards.remove(*i);
                r.stop();
                report.forwards.removed.push(r.config.listen.to_string());
            }
            for (i, cfg) in plan.change {
                let r = &mut forwards[i];
                if let Some(settings) = Forward::new(
                    cfg.clone(),
                    self.pool.clone(),
                    r.metrics.clone(),
                    self.memory.clone(),
                    self.log.clone(),
                ) {
                    r.settings.send_replace(Arc::new(settings));
                    r.config = cfg;
                    report.forwards.changed.push(r.config.listen.to_string());
                }
            }
            for (listener, cfg) in bound {
                let listen = cfg.listen.to_string();
                match Running::start(listener, cfg, &self.pool, &self.memory, &self.log) {
                    Ok(Some(r)) => {
                        forwards.push(r);
                        report.forwards.added.push(listen);
                    }
                    Ok(None) => report.errors.push(format!("forward {listen}: disabled")),
                    Err(e) => report.errors.push(format!("forward {listen}: {e}")),
                }
            }
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(report)
    }

    async fn apply_peers(&self, old: &Config, new: &Config, report: &mut ReloadReport) {
        for p in &old.peers {
            if !new.peers.iter().any(|n| n.name == p.name) {
                report.peers.removed.push(p.name.clone());
                // The drain runs on; the reload does not wait for it.
                let pool = self.pool.clone();
                let name = p.name.clone();
                actix_rt::spawn(async move {
                    if let Err(e) = pool.remove_peer(&name).await {
                        tracing::warn!(peer = %name, error = %e, "reload: removing the peer failed");
                    }
                });
            }
        }
        for p in &new.peers {
            let result = match old.peers.iter().find(|o| o.name == p.name) {
                None => {
                    report.peers.added.push(p.name.clone());
                    self.pool.add_peer(p.clone()).await
                }
                Some(o) if o != p => {
                    report.peers.changed.push(p.name.clone());
                    self.pool.replace_peer(p.clone()).await
                }
                Some(_) => Ok(()),
            };
            if let Err(e) = result {
                report.errors.push(format!("peer {:?}: {e}", p.name));
            }
        }
    }
}

/// The tables a reload cannot apply, by name, when they changed.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut node = new.node.clone();
    // The certificate and key are reloaded; the rest of [node] is not.
    node.cert = old.node.cert.clone();
    node.key = old.node.key.clone();
    let mut tables = Vec::new();
    let mut check = |name: &str, changed: bool| {
        if changed {
            tables.push(name.to_string());
        }
    };
    check("node", node != old.node);
    check("pool", new.pool != old.pool);
    check("retry", new.retry != old.retry);
    check("admin", new.admin != old.admin);
    check("discovery", new.discovery != old.discovery);
    check("outlier", new.outlier != old.outlier);
    check("access_log", new.access_log != old.access_log);
    tables
}

/// How the running forwards become the configured ones.
#[derive(Debug, Default)]
struct ForwardPlan {
    /// Indexes into the running forwards, ascending.
    stop: Vec<usize>,
    /// Running forward `i` (index before any stop) gets new settings.
    change: Vec<(usize, ForwardConfig)>,
    /// New forwards, with their index in the config.
    start: Vec<(usize, ForwardConfig)>,
}

/// A forward keeps running (with new settings if they changed) when the
/// new config has one on the same listen address; one on port 0 keeps
/// running only when nothing about it changed.
fn plan_forwards(running: &[Running], wanted: &[ForwardConfig]) -> ForwardPlan {
    let mut plan = ForwardPlan::default();
    let mut kept = vec![false; running.len()];
    let mut change = Vec::new();
    for (i, w) in wanted.iter().enumerate() {
        let found = running.iter().enumerate().position(|(j, r)| {
            !kept[j] && r.config.listen == w.listen && (!w.listen.is_ephemeral() || r.config == *w)
        });
        match found {
            Some(j) => {
                kept[j] = true;
                if running[j].config != *w {
                    change.push((j, w.clone()));
                }
            }
            None => plan.start.push((i, w.clone())),
        }
    }
    plan.stop = (0..running.len()).filter(|j| !kept[*j]).collect();
    // Indexes of changes shift down past the stopped ones.
    plan.change = change
        .into_iter()
        .map(|(j, w)| (j - plan.stop.iter().filter(|s| **s < j).count(), w))
        .collect();
    plan
}
