//! `PeerShared`: a peer as everyone but its actor sees it. The actor
//! publishes a [`Snapshot`] of its `PeerCore` here after every change, in
//! one place (`PeerActor::publish`); stream openers, `/peers`, readiness and
//! the inbound stream loop read it without a message to the actor (a
//! cross-arbiter hop costs more than a stream open).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::Notify;

use super::conn::ConnMeta;
use super::endpoints::{EndpointHandle, EndpointStats, FailureSink};
use super::error::PoolError;
use super::status::{ConnectionInfo, EndpointInfo, PeerStatus};
use super::telemetry::TrafficTotals;
use crate::config::PeerConfig;
use crate::metrics::peer::PeerMetrics;
use crate::pool::{
    pick_endpoint, Balancer, ConnKey, EndpointLoad, EndpointState, Load, PeerState, Strategy,
};

/// One endpoint in the published table.
#[derive(Clone)]
pub(crate) struct EndpointRoute {
    pub(crate) addr: SocketAddr,
    pub(crate) stats: Arc<EndpointStats>,
    pub(crate) state: EndpointState,
    /// Connections held, usable or not.
    pub(crate) connections: usize,
    pub(crate) ejected_until: Option<Instant>,
}

/// One connection in the published table.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) meta: Arc<ConnMeta>,
    pub(crate) usable: bool,
    /// Peak-EWMA of RTT in seconds, as of the actor's last tick.
    pub(crate) rtt: f64,
    /// Its endpoint, an index into [`Snapshot::endpoints`].
    pub(crate) endpoint: usize,
}

/// What the actor derives from its core and publishes.
#[derive(Clone)]
pub(crate) struct Snapshot {
    pub(crate) state: PeerState,
    pub(crate) endpoints: Vec<EndpointRoute>,
    pub(crate) routes: Vec<Route>,
    /// The next dial or probe, when one is scheduled.
    pub(crate) retry_at: Option<Instant>,
    pub(crate) dial_attempts: u64,
    pub(crate) backoff: Duration,
}

impl Snapshot {
    /// Before the actor's first publish.
    pub(crate) fn empty() -> Snapshot {
        Snapshot {
            state: PeerState::Connecting,
            endpoints: Vec::new(),
            routes: Vec::new(),
            retry_at: None,
            dial_attempts: 0,
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

/// A connection picked for a stream, and the endpoint it belongs to.
pub(crate) struct Picked<T> {
    pub(crate) opening: T,
    pub(crate) endpoint: EndpointHandle,
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
    /// `outlier.consecutive_failures`.
    pub(crate) eject_after: u32,
    pub(crate) failures: Arc<FailureSink>,
}

impl PeerShared {
    pub(crate) fn new(
        config: PeerConfig,
        pool: &crate::config::PoolConfig,
        eject_after: u32,
        ephemeral: bool,
    ) -> PeerShared {
        let strategy: Strategy = pool.load_balancing_strategy;
        let metrics = PeerMetrics::new(&config.name, strategy);
        metrics.target.set(pool.max_connections_per_peer as f64);
        PeerShared {
            target: pool.max_connections_per_peer,
            open_timeout: pool.stream_open_timeout,
            ephemeral,
            table: Mutex::new(Table {
                snap: Snapshot::empty(),
                balancer: Balancer::new(strategy),
                rng: SmallRng::from_os_rng(),
            }),
            state: AtomicU8::new(PeerState::Connecting as u8),
            changed: Notify::new(),
            metrics,
            streams_opened: AtomicU64::new(0),
            open_failures: AtomicU64::new(0),
            traffic: TrafficTotals::default(),
            eject_after,
            failures: Arc::new(FailureSink::default()),
            name_arc: Arc::from(config.name.as_str()),
            config,
        }
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
        let now = Instant::now();
        let ids = self.config.pinned_ids();
        PeerStatus {
            name: self.config.name.clone(),
            id: ids.first().copied(),
            ids,
            addr: self.config.addr.clone(),
            state: snap.state,
            target: self.target,
            endpoints: snap
                .endpoints
                .iter()
                .map(|e| EndpointInfo {
                    addr: e.addr,
                    state: e.state,
                    connections: e.connections,
                    ejected_for: e
                        .ejected_until
                        .map(|t| t.saturating_duration_since(now).as_secs_f64()),
                    latency_seconds: e.stats.latency(),
                })
                .collect(),
            connections: snap
                .routes
                .iter()
                .map(|r| r.meta.info(r.usable, r.rtt))
                .collect(),
            dial_attempts: snap.dial_attempts,
            next_retry_in: snap
                .retry_at
                .map(|at| at.saturating_duration_since(now).as_secs_f64()),
            backoff_seconds: snap.backoff.as_secs_f64(),
            streams_opened: self.streams_opened.load(Ordering::Relaxed),
            stream_open_failures: self.open_failures.load(Ordering::Relaxed),
        }
    }

    /// Picks an endpoint (power of two choices by latency and load, skipping
    /// ejected ones while others can take the stream, and those in
    /// `exclude` while others have a usable connection), then one of its usable connections by strategy, skipping
    /// `tried`, and hands it to `start` under the table's lock; or says why
    /// there is none. `start` counts the stream on the connection: an actor
    /// that stops routing to it (a retire) publishes under the same lock, so
    /// it sees every open that picked the connection before.
    pub(crate) fn pick<T>(
        &self,
        tried: &[ConnKey],
        exclude: &[SocketAddr],
        start: impl FnOnce(&Route) -> T,
    ) -> Result<Option<Picked<T>>, PoolError> {
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
        let candidate = |r: &Route| r.usable && !tried.contains(&r.meta.key);
        let endpoint = match t.snap.endpoints.len() {
            0 => return Ok(None),
            // One endpoint (the common case): no balancing between
            // endpoints, and `exclude` cannot send the stream elsewhere.
            1 => {
                if !t.snap.routes.iter().any(candidate) {
                    return Ok(None);
                }
                0
            }
            // `exclude` is a preference: with every other endpoint gone, a
            // retry goes back to one it avoided rather than fail.
            _ => match pick_among_endpoints(&t.snap, exclude, candidate, &mut t.rng)
                .or_else(|| pick_among_endpoints(&t.snap, &[], candidate, &mut t.rng))
            {
                Some(e) => e,
                None => return Ok(None),
            },
        };
        // At most 64 connections per endpoint (config bound) plus transient
        // excess: the candidate list lives on the stack.
        const CAP: usize = 2 * crate::config::MAX_CONNECTIONS_PER_PEER;
        let mut loads = [Load {
            active: 0,
            rtt: 0.0,
        }; CAP];
        let mut index = [0usize; CAP];
        let mut n = 0;
        for (i, route) in t.snap.routes.iter().enumerate() {
            if route.endpoint == endpoint && candidate(route) && n < CAP {
                loads[n] = Load {
                    active: route.meta.out_streams.load(Ordering::Relaxed),
                    rtt: route.rtt,
                };
                index[n] = i;
                n += 1;
            }
        }
        let Some(p) = t.balancer.pick(&loads[..n], &mut t.rng) else {
            return Ok(None);
        };
        let e = &t.snap.endpoints[endpoint];
        Ok(Some(Picked {
            opening: start(&t.snap.routes[index[p]]),
            endpoint: EndpointHandle {
                addr: e.addr,
                stats: e.stats.clone(),
                eject_after: self.eject_after,
                sink: self.failures.clone(),
            },
        }))
    }

    /// Counts a failed open, by the error's own reason.
    pub(crate) fn fail(&self, err: PoolError) -> PoolError {
        // Failures are rare; they are counted at once.
        self.open_failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.open_failure(err.reason());
        err
    }
}

/// The endpoint of a peer with several: among those with a candidate
/// connection and not excluded, the ones taking streams (not ejected, not
/// draining) if any, else all of them; by [`pick_endpoint`].
fn pick_among_endpoints(
    snap: &Snapshot,
    exclude: &[SocketAddr],
    candidate: impl Fn(&Route) -> bool,
    rng: &mut SmallRng,
) -> Option<usize> {
    let mut eligible: Vec<(usize, EndpointLoad, bool)> = snap
        .endpoints
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            !exclude.contains(&e.addr)
                && snap.routes.iter().any(|r| r.endpoint == *i && candidate(r))
        })
        .map(|(i, e)| {
            let in_flight = snap
                .routes
                .iter()
                .filter(|r| r.endpoint == i)
                .map(|r| r.meta.out_streams.load(Ordering::Relaxed))
                .sum();
            let load = EndpointLoad {
                latency: e.stats.latency(),
                in_flight,
            };
            let takes = !matches!(e.state, EndpointState::Ejected | EndpointState::Draining);
            (i, load, takes)
        })
        .collect();
    if eligible.iter().any(|(_, _, takes)| *takes) {
        eligible.retain(|(_, _, takes)| *takes);
    }
    let loads: Vec<EndpointLoad> = eligible.iter().map(|(_, l, _)| *l).collect();
    pick_endpoint(&loads, rng).map(|k| eligible[k].0)
}
