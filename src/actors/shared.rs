//! What a peer actor publishes for everyone else: its usable connections
//! (the routing table), its state and counters.
//!
//! Opening a stream reads this table directly instead of sending the actor a
//! message: a cross-arbiter actor hop costs ~55 µs, more than the open itself.
//! The actor stays the only writer of connection membership; openers only
//! bump per-connection stream counts and report a dead connection back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::PoolError;
use crate::config::PeerConfig;
use crate::identity::PeerId;
use crate::metrics::PeerMetrics;
use crate::pool::{Balancer, ConnKey, Load, PeerState, Strategy};
use crate::transport::tls::InboundPolicy;

/// Who dialled a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// This node dialled it.
    Outbound,
    /// The peer dialled it.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// One live connection and its stream counts.
#[derive(Debug)]
pub(crate) struct ConnMeta {
    pub key: ConnKey,
    pub conn: quinn::Connection,
    pub direction: Direction,
    /// The dialler's sequence number (from the hello): with `direction`, it
    /// names the connection the same way on both ends.
    pub dial_seq: u64,
    pub opened_at: SystemTime,
    pub opened: Instant,
    /// Streams this node opened on it, still open.
    pub out_streams: AtomicUsize,
    /// Streams the peer opened on it, still open.
    pub in_streams: AtomicUsize,
    /// Woken when a stream count drops to zero while someone waits.
    pub idle: Notify,
    /// Someone waits in `wait_idle` (a retire or a drain): only then do
    /// stream guards pay for waking it.
    idle_watched: AtomicBool,
    /// The peer said DONE on the control stream: every stream it opened
    /// here has finished.
    peer_done: AtomicBool,
    peer_done_notify: Notify,
}

impl ConnMeta {
    pub fn new(
        key: ConnKey,
        conn: quinn::Connection,
        direction: Direction,
        dial_seq: u64,
    ) -> ConnMeta {
        ConnMeta {
            key,
            conn,
            direction,
            dial_seq,
            opened_at: SystemTime::now(),
            opened: Instant::now(),
            out_streams: AtomicUsize::new(0),
            in_streams: AtomicUsize::new(0),
            idle: Notify::new(),
            idle_watched: AtomicBool::new(false),
            peer_done: AtomicBool::new(false),
            peer_done_notify: Notify::new(),
        }
    }

    pub fn streams(&self) -> usize {
        self.out_streams.load(Ordering::Acquire) + self.in_streams.load(Ordering::Acquire)
    }

    /// Resolves once no stream is open on this connection.
    pub async fn wait_idle(&self) {
        self.wait_until_zero(ConnMeta::streams).await
    }

    /// Resolves once no stream this node opened here is open (or opening).
    pub async fn wait_out_idle(&self) {
        self.wait_until_zero(|m| m.out_streams.load(Ordering::Acquire))
            .await
    }

    async fn wait_until_zero(&self, count: impl Fn(&ConnMeta) -> usize) {
        self.idle_watched.store(true, Ordering::Release);
        wait_until(&self.idle, || count(self) == 0).await
    }

    pub fn set_peer_done(&self) {
        self.peer_done.store(true, Ordering::Release);
        self.peer_done_notify.notify_waiters();
    }

    /// Resolves once the peer said DONE on the control stream.
    pub async fn wait_peer_done(&self) {
        wait_until(&self.peer_done_notify, || {
            self.peer_done.load(Ordering::Acquire)
        })
        .await
    }

    pub fn info(&self, usable: bool, rtt_ewma: f64) -> ConnectionInfo {
        let stats = self.conn.stats();
        ConnectionInfo {
            number: self.key,
            direction: self.direction,
            dial_seq: self.dial_seq,
            remote_addr: self.conn.remote_address(),
            opened_at: rfc3339(self.opened_at),
            age_seconds: self.opened.elapsed().as_secs_f64(),
            active_streams: self.out_streams.load(Ordering::Relaxed),
            inbound_streams: self.in_streams.load(Ordering::Relaxed),
            rtt_seconds: stats.path.rtt.as_secs_f64(),
            rtt_ewma_seconds: rtt_ewma,
            bytes_sent: stats.udp_tx.bytes,
            bytes_received: stats.udp_rx.bytes,
            lost_packets: stats.path.lost_packets,
            usable,
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One connection as the admin API and `Pool::get_connections` show it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    /// A number stable for the connection's life, unique within the node.
    pub number: u64,
    pub direction: Direction,
    /// The dialler's sequence number for it: `(direction, dial_seq)` names
    /// the same connection on both ends.
    pub dial_seq: u64,
    pub remote_addr: SocketAddr,
    /// RFC 3339.
    pub opened_at: String,
    pub age_seconds: f64,
    /// Streams this node opened on it that are still open.
    pub active_streams: usize,
    /// Streams the peer opened on it that are still open.
    pub inbound_streams: usize,
    /// QUIC's smoothed RTT.
    pub rtt_seconds: f64,
    /// The peak-EWMA of RTT the `latency` strategy uses (refreshed each second).
    pub rtt_ewma_seconds: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub lost_packets: u64,
    /// False while the connection is being retired (no new streams).
    pub usable: bool,
}

/// One peer as the admin API and `Pool::peers` show it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub id: PeerId,
    pub addr: Option<SocketAddr>,
    pub state: PeerState,
    /// N: the connections the pool aims to hold.
    pub target: usize,
    pub connections: Vec<ConnectionInfo>,
    /// Dial attempts since the peer was added.
    pub dial_attempts: u64,
    /// Seconds until the next dial or probe, when one is scheduled.
    pub next_retry_in: Option<f64>,
    /// The backoff now being waited out (0 when none).
    pub backoff_seconds: f64,
    pub streams_opened: u64,
    pub stream_open_failures: u64,
}

#[derive(Clone)]
pub(crate) struct Route {
    pub meta: Arc<ConnMeta>,
    pub usable: bool,
    /// Peak-EWMA of RTT in seconds, refreshed by the actor's tick.
    pub rtt: f64,
}

pub(crate) struct Routes {
    pub state: PeerState,
    pub conns: Vec<Route>,
    balancer: Balancer,
    rng: SmallRng,
    pub retry_at: Option<Instant>,
}

/// What the actor publishes besides the routes.
#[derive(Debug, Default, Clone)]
pub(crate) struct Published {
    pub dial_attempts: u64,
    pub next_retry_at: Option<Instant>,
    pub backoff: Duration,
}

/// Tells the actor a connection failed under an opener.
pub(crate) type FailureReport = Box<dyn Fn(ConnKey) + Send + Sync>;

/// A peer as everyone but its actor sees it.
pub(crate) struct PeerShared {
    pub config: PeerConfig,
    /// The name, shared with every inbound stream without a copy.
    pub name_arc: Arc<str>,
    pub target: usize,
    pub open_timeout: Duration,
    /// Admitted through `accept_unknown_peers`, not configured.
    pub ephemeral: bool,
    routes: Mutex<Routes>,
    changed: Notify,
    pub published: Mutex<Published>,
    pub metrics: PeerMetrics,
    pub streams_opened: AtomicU64,
    pub open_failures: AtomicU64,
    /// Bytes sent, bytes received and packets lost over every connection
    /// this peer has had, as of the actor's last tick, so the counters keep
    /// growing across reconnects and actor restarts.
    pub traffic_totals: [AtomicU64; 3],
    draining: AtomicBool,
    report: Mutex<Option<FailureReport>>,
}

impl PeerShared {
    pub fn new(
        config: PeerConfig,
        target: usize,
        strategy: Strategy,
        open_timeout: Duration,
        ephemeral: bool,
    ) -> PeerShared {
        let metrics = PeerMetrics::new(&config.name, strategy.as_str());
        metrics.target.set(target as f64);
        PeerShared {
            target,
            open_timeout,
            ephemeral,
            routes: Mutex::new(Routes {
                state: PeerState::Connecting,
                conns: Vec::new(),
                balancer: Balancer::new(strategy),
                rng: SmallRng::from_os_rng(),
                retry_at: None,
            }),
            changed: Notify::new(),
            published: Mutex::new(Published::default()),
            metrics,
            streams_opened: AtomicU64::new(0),
            open_failures: AtomicU64::new(0),
            traffic_totals: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            draining: AtomicBool::new(false),
            report: Mutex::new(None),
            name_arc: Arc::from(config.name.as_str()),
            config,
        }
    }

    pub fn id(&self) -> PeerId {
        self.config.id
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The routing table. Poisoning cannot leave it inconsistent (every
    /// writer finishes its update before anything that could panic), so a
    /// poisoned lock is used as is.
    pub fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes openers waiting for a usable connection.
    pub fn notify_changed(&self) {
        self.changed.notify_waiters();
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn set_report(&self, report: Option<FailureReport>) {
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = report;
    }

    fn report_failure(&self, key: ConnKey) {
        if let Some(report) = &*self.report.lock().unwrap_or_else(|e| e.into_inner()) {
            report(key);
        }
    }

    pub fn meta(&self, key: ConnKey) -> Option<Arc<ConnMeta>> {
        self.routes()
            .conns
            .iter()
            .find(|r| r.meta.key == key)
            .map(|r| r.meta.clone())
    }

    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let routes: Vec<Route> = self.routes().conns.clone();
        routes
            .iter()
            .map(|r| r.meta.info(r.usable, r.rtt))
            .collect()
    }

    pub fn status(&self) -> PeerStatus {
        let (state, retry_at) = {
            let r = self.routes();
            (r.state, r.retry_at)
        };
        let published = self
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let next = published.next_retry_at.or(retry_at);
        PeerStatus {
            name: self.config.name.clone(),
            id: self.config.id,
            addr: self.config.addr,
            state,
            target: self.target,
            connections: self.connections(),
            dial_attempts: published.dial_attempts,
            next_retry_in: next
                .map(|at| at.saturating_duration_since(Instant::now()).as_secs_f64()),
            backoff_seconds: published.backoff.as_secs_f64(),
            streams_opened: self.streams_opened.load(Ordering::Relaxed),
            stream_open_failures: self.open_failures.load(Ordering::Relaxed),
        }
    }

    fn fail(&self, reason: &'static str, err: PoolError) -> PoolError {
        // Failures are rare; they are counted at once.
        self.open_failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.open_failure(reason);
        err
    }

    /// Picks a usable connection by strategy, skipping `tried`, and starts
    /// opening a stream on it; or says why there is none. The stream is
    /// counted on the connection under the routing lock, so an actor that
    /// stops routing to it (retire) sees every open that picked it.
    fn pick(&self, tried: &[ConnKey]) -> Result<Option<Opening>, PoolError> {
        let mut guard = self.routes();
        let r = &mut *guard;
        match r.state {
            PeerState::Draining => {
                return Err(PoolError::Draining {
                    peer: self.config.name.clone(),
                })
            }
            PeerState::Unreachable => {
                return Err(PoolError::PeerUnreachable {
                    peer: self.config.name.clone(),
                    retry_in: r
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
        for (i, route) in r.conns.iter().enumerate() {
            if route.usable && n < CAP && !tried.contains(&route.meta.key) {
                loads[n] = Load {
                    active: route.meta.out_streams.load(Ordering::Relaxed),
                    rtt: route.rtt,
                };
                index[n] = i;
                n += 1;
            }
        }
        let picked = r.balancer.pick(&loads[..n], &mut r.rng);
        Ok(picked.map(|p| Opening::start(r.conns[index[p]].clone())))
    }

    /// Marks a connection unusable after an open failed on it.
    fn mark_failed(&self, key: ConnKey) {
        if let Some(route) = self.routes().conns.iter_mut().find(|r| r.meta.key == key) {
            route.usable = false;
        }
        self.report_failure(key);
    }

    /// Opens a bidi stream on a connection chosen by the strategy. Waits for a
    /// first connection while the peer is connecting, moves on to the next
    /// connection when the chosen one is dead or has no stream credit left
    /// (the peer's `max_concurrent_streams`), waits for whichever saturated
    /// connection frees a slot first, and never waits longer than
    /// `stream_open_timeout` in all.
    pub async fn open_stream(self: &Arc<Self>) -> Result<PooledStream, PoolError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.open_timeout;
        // Connections already tried: dead ones and saturated ones.
        let mut tried: Vec<ConnKey> = Vec::new();
        let mut saturated: Vec<Opening> = Vec::new();
        let mut last_err: Option<quinn::ConnectionError> = None;
        loop {
            let mut opening = match self.pick(&tried) {
                Err(e) => {
                    let reason = match e {
                        PoolError::Draining { .. } => "draining",
                        _ => "unreachable",
                    };
                    return Err(self.fail(reason, e));
                }
                Ok(Some(opening)) => opening,
                Ok(None) if !saturated.is_empty() => {
                    // Every usable connection is out of credit: take the
                    // first slot any of them frees.
                    let first =
                        tokio::time::timeout_at(deadline, first_ready(&mut saturated)).await;
                    match first {
                        Err(_) => {
                            let err = PoolError::Timeout {
                                peer: self.config.name.clone(),
                                after: self.open_timeout,
                            };
                            return Err(self.fail("timeout", err));
                        }
                        Ok((opening, Ok(stream))) => {
                            return Ok(self.opened(opening, stream, started));
                        }
                        Ok((opening, Err(e))) => {
                            self.open_failed(&opening, &e);
                            last_err = Some(e);
                            continue;
                        }
                    }
                }
                Ok(None) if !tried.is_empty() => {
                    let err = match last_err.take() {
                        Some(e) => PoolError::Connection {
                            peer: self.config.name.clone(),
                            source: e,
                        },
                        None => PoolError::NoHealthyConnection {
                            peer: self.config.name.clone(),
                        },
                    };
                    return Err(self.fail("connection", err));
                }
                Ok(None) => {
                    // Nothing usable yet: wait for the actor to publish a
                    // connection or a state, within the deadline. Register
                    // first, then look again, so no change slips between.
                    let notified = self.changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    match self.pick(&tried) {
                        Ok(Some(opening)) => opening,
                        // The loop's own pick reports why.
                        Err(_) => continue,
                        Ok(None) => {
                            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                                let err = PoolError::NoHealthyConnection {
                                    peer: self.config.name.clone(),
                                };
                                return Err(self.fail("no_connection", err));
                            }
                            continue;
                        }
                    }
                }
            };
            tried.push(opening.guard.meta.key);
            // open_bi completes at once while the peer grants credit; a
            // pending open means the connection is saturated.
            match std::future::poll_fn(|cx| Poll::Ready(opening.open.as_mut().poll(cx))).await {
                Poll::Ready(Ok(stream)) => return Ok(self.opened(opening, stream, started)),
                Poll::Ready(Err(e)) => {
                    self.open_failed(&opening, &e);
                    last_err = Some(e);
                }
                Poll::Pending => saturated.push(opening),
            }
        }
    }

    fn opened(
        &self,
        opening: Opening,
        (send, recv): (quinn::SendStream, quinn::RecvStream),
        started: Instant,
    ) -> PooledStream {
        // The counters and gauges of streams are set from these atomics by
        // the actor's tick: no metrics call per stream but the histogram.
        self.streams_opened.fetch_add(1, Ordering::Relaxed);
        self.metrics.record_open(started.elapsed());
        let meta = opening.guard.meta.clone();
        let guard = Arc::new(opening.guard);
        PooledStream {
            send: PooledSend {
                inner: send,
                _guard: guard.clone(),
            },
            recv: PooledRecv {
                inner: recv,
                _guard: guard,
            },
            connection: meta.key,
            remote: meta.conn.remote_address(),
        }
    }

    fn open_failed(&self, opening: &Opening, e: &quinn::ConnectionError) {
        let key = opening.guard.meta.key;
        tracing::debug!(peer = %self.config.name, conn = key, error = %e, "open failed; trying another connection");
        self.mark_failed(key);
    }
}

type OpenFuture = Pin<
    Box<
        dyn std::future::Future<
                Output = Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>,
            > + Send,
    >,
>;

/// A stream being opened on one connection; its guard counts it as load on
/// that connection while it waits, so the strategy sees the pressure.
struct Opening {
    guard: StreamGuard,
    open: OpenFuture,
}

impl Opening {
    fn start(route: Route) -> Opening {
        let conn = route.meta.conn.clone();
        Opening {
            guard: StreamGuard::new(route.meta, false),
            open: Box::pin(async move { conn.open_bi().await }),
        }
    }
}

/// The first of `pending` to complete, removed from it (the others keep
/// waiting; dropping a pending open allocates nothing).
async fn first_ready(
    pending: &mut Vec<Opening>,
) -> (
    Opening,
    Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>,
) {
    let (i, result) = std::future::poll_fn(|cx| {
        for (i, o) in pending.iter_mut().enumerate() {
            if let Poll::Ready(r) = o.open.as_mut().poll(cx) {
                return Poll::Ready((i, r));
            }
        }
        Poll::Pending
    })
    .await;
    (pending.swap_remove(i), result)
}

/// Resolves once `cond` holds, re-checking whenever `notify` wakes its
/// waiters. Registers before checking, so no wake-up slips between.
async fn wait_until(notify: &Notify, cond: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if cond() {
            return;
        }
        notified.await;
    }
}

/// Keeps a connection's stream count right for as long as either half of a
/// stream is alive (the active-streams gauge is set from these counts).
pub(crate) struct StreamGuard {
    meta: Arc<ConnMeta>,
    inbound: bool,
}

impl StreamGuard {
    pub fn new(meta: Arc<ConnMeta>, inbound: bool) -> StreamGuard {
        let counter = if inbound {
            &meta.in_streams
        } else {
            &meta.out_streams
        };
        counter.fetch_add(1, Ordering::AcqRel);
        StreamGuard { meta, inbound }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let counter = if self.inbound {
            &self.meta.in_streams
        } else {
            &self.meta.out_streams
        };
        let was = counter.fetch_sub(1, Ordering::AcqRel);
        // Waiters wait for one count or both to reach zero; they check which.
        if was == 1 && self.meta.idle_watched.load(Ordering::Acquire) {
            self.meta.idle.notify_waiters();
        }
    }
}

/// A bidi stream from the pool. Dropping both halves releases its slot in
/// the connection's active-stream count.
pub struct PooledStream {
    pub send: PooledSend,
    pub recv: PooledRecv,
    /// The number of the connection it runs on (see [`ConnectionInfo::number`]).
    pub connection: u64,
    pub remote: SocketAddr,
}

impl PooledStream {
    pub fn into_split(self) -> (PooledSend, PooledRecv) {
        (self.send, self.recv)
    }
}

/// The sending half of a pooled stream; derefs to [`quinn::SendStream`].
pub struct PooledSend {
    inner: quinn::SendStream,
    _guard: Arc<StreamGuard>,
}

/// The receiving half of a pooled stream; derefs to [`quinn::RecvStream`].
pub struct PooledRecv {
    inner: quinn::RecvStream,
    _guard: Arc<StreamGuard>,
}

impl PooledSend {
    pub(crate) fn new(inner: quinn::SendStream, guard: Arc<StreamGuard>) -> PooledSend {
        PooledSend {
            inner,
            _guard: guard,
        }
    }
}

impl PooledRecv {
    pub(crate) fn new(inner: quinn::RecvStream, guard: Arc<StreamGuard>) -> PooledRecv {
        PooledRecv {
            inner,
            _guard: guard,
        }
    }
}

impl std::ops::Deref for PooledSend {
    type Target = quinn::SendStream;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for PooledSend {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl std::ops::Deref for PooledRecv {
    type Target = quinn::RecvStream;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for PooledRecv {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl AsyncWrite for PooledSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.inner), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.inner), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.inner), cx)
    }
}

impl AsyncRead for PooledRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.inner), cx, buf)
    }
}

/// All peers of a node, by id and by name. The TLS verifier reads it on
/// every inbound handshake to decide who may connect.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: RwLock<RegistryInner>,
    accept_unknown: bool,
}

#[derive(Default)]
struct RegistryInner {
    by_id: HashMap<PeerId, Arc<PeerShared>>,
    by_name: HashMap<String, PeerId>,
}

impl std::fmt::Debug for RegistryInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryInner")
            .field("peers", &self.by_name.len())
            .finish()
    }
}

impl Registry {
    pub fn new(accept_unknown: bool) -> Registry {
        Registry {
            inner: RwLock::new(RegistryInner::default()),
            accept_unknown,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, RegistryInner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, RegistryInner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn accept_unknown(&self) -> bool {
        self.accept_unknown
    }

    pub fn get(&self, id: &PeerId) -> Option<Arc<PeerShared>> {
        self.read().by_id.get(id).cloned()
    }

    pub fn by_name(&self, name: &str) -> Option<Arc<PeerShared>> {
        let inner = self.read();
        inner
            .by_name
            .get(name)
            .and_then(|id| inner.by_id.get(id))
            .cloned()
    }

    /// Adds a peer unless its name or id is taken.
    pub fn insert(&self, peer: Arc<PeerShared>) -> Result<(), PoolError> {
        let mut inner = self.write();
        if inner.by_name.contains_key(peer.name()) {
            return Err(PoolError::PeerExists(format!(
                "a peer named {:?} exists",
                peer.name()
            )));
        }
        if inner.by_id.contains_key(&peer.id()) {
            return Err(PoolError::PeerExists(format!(
                "a peer with id {} exists",
                peer.id()
            )));
        }
        inner.by_name.insert(peer.name().to_string(), peer.id());
        inner.by_id.insert(peer.id(), peer);
        Ok(())
    }

    pub fn remove(&self, id: &PeerId) {
        let mut inner = self.write();
        if let Some(peer) = inner.by_id.remove(id) {
            inner.by_name.remove(peer.name());
        }
    }

    /// Every peer with an address has a usable connection (what `/readyz`
    /// and `peerpool_ready` report).
    pub fn ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    /// The names of the peers with an address but no usable connection.
    pub fn not_ready(&self) -> Vec<String> {
        self.all()
            .iter()
            .filter(|p| p.config.addr.is_some())
            .filter(|p| !p.routes().conns.iter().any(|r| r.usable))
            .map(|p| p.name().to_string())
            .collect()
    }

    /// Every peer, sorted by name.
    pub fn all(&self) -> Vec<Arc<PeerShared>> {
        let mut all: Vec<_> = self.read().by_id.values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }
}

impl InboundPolicy for Registry {
    fn check(&self, id: &PeerId) -> Result<(), &'static str> {
        if self.accept_unknown || self.read().by_id.contains_key(id) {
            Ok(())
        } else {
            Err("unknown_peer")
        }
    }
}
