//! `PeerShared`: a peer as everyone but its actor sees it. The actor
//! publishes a [`Snapshot`] of its `PeerCore` here after every change, in
//! one place (`PeerActor::publish`); stream openers, `/peers`, readiness and
//! the inbound stream loop read it without a message to the actor (a
//! cross-arbiter hop costs more than a stream open).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::Notify;

use super::conn::ConnMeta;
use super::error::PoolError;
use super::status::{ConnectionInfo, PeerStatus};
use super::telemetry::TrafficTotals;
use crate::config::PeerConfig;
use crate::identity::PeerId;
use crate::metrics::peer::PeerMetrics;
use crate::pool::{Balancer, ConnKey, Load, PeerState, Strategy};

/// One connection in the published table.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) meta: Arc<ConnMeta>,
    pub(crate) usable: bool,
    /// Peak-EWMA of RTT in seconds, as of the actor's last tick.
    pub(crate) rtt: f64,
}

/// What the actor derives from its core and publishes.
#[derive(Clone)]
pub(crate) struct Snapshot {
    pub(crate) state: PeerState,
    pub(crate) routes: Vec<Route>,
    /// The next dial or probe, when one is scheduled.
    pub(crate) retry_at: Option<Instant>,
    pub(crate) dial_attempts: u64,
    pub(crate) backoff: Duration,
}

impl Snapshot {
    /// Before the actor's first publish, and after it stopped.
    pub(crate) fn empty(dial_attempts: u64) -> Snapshot {
        Snapshot {
            state: PeerState::Connecting,
            routes: Vec::new(),
            retry_at: None,
            dial_attempts,
            backoff: Duration::ZERO,
        }
    }
}

/// The snapshot, and the strategy's state that lives across snapshots.
struct Table {
    snap: Snapshot,
    balancer: Balancer,
    rng: SmallRng,
}

pub(crate) struct PeerShared {
    pub(crate) config: PeerConfig,
    /// The name, shared with every inbound stream without a copy.
    pub(crate) name_arc: Arc<str>,
    pub(crate) target: usize,
    pub(crate) open_timeout: Duration,
    /// Admitted through `accept_unknown_peers`, not configured.
    pub(crate) ephemeral: bool,
    table: Mutex<Table>,
    /// The snapshot's state, readable without the table's lock (the inbound
    /// stream loop checks it for every stream); written with the snapshot.
    state: AtomicU8,
    /// Woken at every publish: openers waiting for a usable connection.
    changed: Notify,
    pub(crate) metrics: PeerMetrics,
    pub(crate) streams_opened: AtomicU64,
    pub(crate) open_failures: AtomicU64,
    pub(crate) traffic: TrafficTotals,
}

impl PeerShared {
    pub(crate) fn new(
        config: PeerConfig,
        target: usize,
        strategy: Strategy,
        open_timeout: Duration,
        ephemeral: bool,
    ) -> PeerShared {
        let metrics = PeerMetrics::new(&config.name, strategy);
        metrics.target.set(target as f64);
        PeerShared {
            target,
            open_timeout,
            ephemeral,
            table: Mutex::new(Table {
                snap: Snapshot::empty(0),
                balancer: Balancer::new(strategy),
                rng: SmallRng::from_os_rng(),
            }),
            state: AtomicU8::new(PeerState::Connecting as u8),
            changed: Notify::new(),
            metrics,
            streams_opened: AtomicU64::new(0),
            open_failures: AtomicU64::new(0),
            traffic: TrafficTotals::default(),
            name_arc: Arc::from(config.name.as_str()),
            config,
        }
    }

    pub(crate) fn id(&self) -> PeerId {
        self.config.id
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// Poisoning cannot leave the table inconsistent (it is replaced whole,
    /// and a pick changes nothing but the balancer's cursor), so a poisoned
    /// lock is used as is.
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the published snapshot and wakes waiting openers. Only the
    /// peer's actor calls this.
    pub(crate) fn publish(&self, snap: Snapshot) {
        let mut table = self.table();
        self.state.store(snap.state as u8, Ordering::Release);
        table.snap = snap;
        drop(table);
        self.changed.notify_waiters();
    }

    pub(crate) fn changed(&self) -> &Notify {
        &self.changed
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        self.table().snap.clone()
    }

    pub(crate) fn state(&self) -> PeerState {
        let i = usize::from(self.state.load(Ordering::Acquire));
        PeerState::ALL
            .get(i)
            .copied()
            .unwrap_or(PeerState::Connecting)
    }

    /// Any connection takes new streams.
    pub(crate) fn has_usable(&self) -> bool {
        self.table().snap.routes.iter().any(|r| r.usable)
    }

    pub(crate) fn meta(&self, key: ConnKey) -> Option<Arc<ConnMeta>> {
        self.table()
            .snap
            .routes
            .iter()
            .find(|r| r.meta.key == key)
            .map(|r| r.meta.clone())
    }

    pub(crate) fn connections(&self) -> Vec<ConnectionInfo> {
        let routes = self.table().snap.routes.clone();
        routes
            .iter()
            .map(|r| r.meta.info(r.usable, r.rtt))
            .collect()
    }

    pub(crate) fn status(&self) -> PeerStatus {
        let snap = self.snapshot();
        PeerStatus {
            name: self.config.name.clone(),
            id: self.config.id,
            addr: self.config.addr,
            state: snap.state,
            target: self.target,
            connections: snap
                .routes
                .iter()
                .map(|r| r.meta.info(r.usable, r.rtt))
                .collect(),
            dial_attempts: snap.dial_attempts,
            next_retry_in: snap
                .retry_at
                .map(|at| at.saturating_duration_since(Instant::now()).as_secs_f64()),
            backoff_seconds: snap.backoff.as_secs_f64(),
            streams_opened: self.streams_opened.load(Ordering::Relaxed),
            stream_open_failures: self.open_failures.load(Ordering::Relaxed),
        }
    }

    /// Picks a usable connection by strategy, skipping `tried`, and hands it
    /// to `start` under the table's lock, or says why there is none. `start`
    /// counts the stream on the connection: an actor that stops routing to
    /// it (a retire) publishes under the same lock, so it sees every open
    /// that picked the connection before.
    pub(crate) fn pick<T>(
        &self,
        tried: &[ConnKey],
        start: impl FnOnce(&Route) -> T,
    ) -> Result<Option<T>, PoolError> {
        let mut guard = self.table();
        let t = &mut *guard;
        match t.snap.state {
            PeerState::Draining => {
                return Err(PoolError::Draining {
                    peer: self.config.name.clone(),
                })
            }
            PeerState::Unreachable => {
                return Err(PoolError::PeerUnreachable {
                    peer: self.config.name.clone(),
                    retry_in: t
                        .snap
                        .retry_at
                        .map(|at| at.saturating_duration_since(Instant::now()))
                        .unwrap_or_default(),
                })
            }
            _ => {}
        }
        // At most 64 connections (config bound) plus transient excess: the
        // candidate list lives on the stack.
        const CAP: usize = 2 * crate::config::MAX_CONNECTIONS_PER_PEER;
        let mut loads = [Load {
            active: 0,
            rtt: 0.0,
        }; CAP];
        let mut index = [0usize; CAP];
        let mut n = 0;
        for (i, route) in t.snap.routes.iter().enumerate() {
            if route.usable && n < CAP && !tried.contains(&route.meta.key) {
                loads[n] = Load {
                    active: route.meta.out_streams.load(Ordering::Relaxed),
                    rtt: route.rtt,
                };
                index[n] = i;
                n += 1;
            }
        }
        let picked = t.balancer.pick(&loads[..n], &mut t.rng);
        Ok(picked.map(|p| start(&t.snap.routes[index[p]])))
    }

    /// Counts a failed open, by the error's own reason.
    pub(crate) fn fail(&self, err: PoolError) -> PoolError {
        // Failures are rare; they are counted at once.
        self.open_failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.open_failure(err.reason());
        err
    }
}
