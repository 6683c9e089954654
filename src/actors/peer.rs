//! `PeerActor`: owns one peer's connections, dials, redials and retires them.
//!
//! The actor is the only writer of the peer's connection set. It never waits
//! on the network inside a handler: dials and drains run as futures spawned
//! in its context, and stream opens do not pass through it at all (they read
//! the routing table in [`super::shared`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::oneshot;

use super::context::{IncomingStream, NodeContext};
use super::shared::{
    ConnMeta, ConnectionInfo, Direction, PeerShared, PooledRecv, PooledSend, Route, StreamGuard,
};
use super::supervisor::{PeerDied, RemovePeer, Supervisor};
use super::PoolError;
use crate::pool::{
    AfterFailure, ConnKey, ConnRank, DialPlanner, PeakEwma, PeerEvent, PeerState, PeerStateMachine,
};
use crate::transport::control::{Control, ControlTx, Signal};
use crate::transport::{self, codes, codes::CloseCode, hello};

/// How often RTT, byte counters and gauges are refreshed.
const TICK: Duration = Duration::from_secs(1);
/// Time constant of the RTT peak-EWMA used by the `latency` strategy.
const RTT_TAU: Duration = Duration::from_secs(10);

/// A connection that passed its hello, before it is registered.
struct NewConn {
    conn: quinn::Connection,
    direction: Direction,
    rank: ConnRank,
    /// The peer process this connection reaches.
    instance: u64,
    control: Control,
    /// Written on the control stream before anything else: the hello
    /// answer, when this end accepted the connection.
    first: Option<Vec<u8>>,
}

struct LiveConn {
    meta: Arc<ConnMeta>,
    rank: ConnRank,
    /// The peer process this connection reaches.
    instance: u64,
    retiring: bool,
    /// Signals to the peer on the connection's control stream.
    control: ControlTx,
    ewma: PeakEwma,
    /// Counters of this connection already added to the peer's totals.
    seen: [u64; 3],
}

type DialWaiter = oneshot::Sender<Result<Vec<ConnectionInfo>, PoolError>>;

pub(crate) struct PeerActor {
    node: Arc<NodeContext>,
    shared: Arc<PeerShared>,
    planner: DialPlanner,
    machine: PeerStateMachine,
    client_config: Option<quinn::ClientConfig>,
    conns: HashMap<ConnKey, LiveConn>,
    /// Dials in flight: slot -> the sequence number sent in their hello.
    dials: HashMap<usize, u64>,
    timer: Option<SpawnHandle>,
    waiters: Vec<DialWaiter>,
    rng: SmallRng,
    draining: bool,
    /// Cleared when the actor stops on purpose; otherwise its drop tells the
    /// supervisor to restart it.
    lifeline: Lifeline,
    attempts_before: u64,
}

impl PeerActor {
    pub fn new(
        node: Arc<NodeContext>,
        shared: Arc<PeerShared>,
        supervisor: Addr<Supervisor>,
        generation: u64,
    ) -> PeerActor {
        let now = node.now();
        let can_dial = shared.config.addr.is_some();
        let client_config = if can_dial {
            match transport::client_config(
                &node.config.node,
                &node.identity,
                shared.id(),
                node.transport.clone(),
            ) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(peer = %shared.name(), error = %e, "cannot build a TLS client config; this peer will not be dialled");
                    None
                }
            }
        } else {
            None
        };
        let attempts_before = shared
            .published
            .lock()
            .map(|p| p.dial_attempts)
            .unwrap_or(0);
        let planner = DialPlanner::new(
            node.retry.clone(),
            node.config.retry.reset_after(),
            shared.target,
            client_config.is_some(),
            now,
        );
        PeerActor {
            lifeline: Lifeline {
                armed: true,
                shared: shared.clone(),
                supervisor: supervisor.clone(),
                generation,
            },
            machine: PeerStateMachine::new(shared.target),
            node,
            shared,
            planner,
            client_config,
            conns: HashMap::new(),
            dials: HashMap::new(),
            timer: None,
            waiters: Vec::new(),
            rng: SmallRng::from_os_rng(),
            draining: false,
            attempts_before,
        }
    }

    fn name(&self) -> &str {
        self.shared.name()
    }

    /// Starts due dials, re-arms the timer, publishes status, answers waiters.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        if !self.draining {
            let now = self.node.now();
            for slot in self.planner.due(now) {
                self.start_dial(slot, ctx);
            }
        }
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if !self.draining {
            if let Some(at) = self.planner.next_wakeup() {
                let delay = at.saturating_sub(self.node.now());
                self.timer = Some(ctx.run_later(delay, |act, ctx| {
                    act.timer = None;
                    act.drive(ctx);
                }));
            }
        }
        self.publish();
        self.answer_waiters();
    }

    fn publish(&mut self) {
        let next = if self.draining {
            None
        } else {
            self.planner.next_wakeup().map(|t| self.node.instant(t))
        };
        let backoff = self.planner.current_backoff();
        self.shared.metrics.backoff.set(backoff.as_secs_f64());
        if let Ok(mut p) = self.shared.published.lock() {
            p.dial_attempts = self.attempts_before + self.planner.total_attempts();
            p.next_retry_at = next;
            p.backoff = backoff;
        }
        let mut routes = self.shared.routes();
        routes.retry_at = next;
    }

    fn start_dial(&mut self, slot: usize, ctx: &mut Context<Self>) {
        let (Some(addr), Some(cfg)) = (self.shared.config.addr, self.client_config.clone()) else {
            return;
        };
        let seq = self.node.next_dial_seq();
        self.dials.insert(slot, seq);
        let hello = hello::Hello {
            version: hello::VERSION,
            seq,
            id: self.node.local_id(),
            instance: self.node.instance,
        };
        let endpoint = self.node.endpoint.clone();
        let timeout = self.node.config.pool.connection_timeout();
        let fut = async move { transport::dial(&endpoint, cfg, addr, hello, timeout).await };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |result, act, ctx| act.on_dial_result(slot, seq, result, ctx)),
        );
    }

    fn on_dial_result(
        &mut self,
        slot: usize,
        seq: u64,
        result: Result<transport::Dialled, transport::DialError>,
        ctx: &mut Context<Self>,
    ) {
        self.dials.remove(&slot);
        let now = self.node.now();
        match result {
            Ok(dialled) => {
                self.shared.metrics.dial_attempt("ok");
                self.shared.metrics.record_dial(dialled.took);
                if self.draining {
                    codes::REMOVED.close(&dialled.conn);
                    return;
                }
                let rank = ConnRank {
                    dialed_by_smaller_id: self.node.local_id() < self.shared.id(),
                    seq,
                };
                self.drop_stale(dialled.instance);
                let key = self.node.next_conn_key();
                self.planner.dial_succeeded(slot, key, now);
                self.add_conn(
                    key,
                    NewConn {
                        conn: dialled.conn,
                        direction: Direction::Outbound,
                        rank,
                        instance: dialled.instance,
                        control: dialled.control,
                        first: None,
                    },
                    ctx,
                );
                self.resolve_excess(ctx);
            }
            Err(e) => {
                self.shared.metrics.dial_attempt(e.label());
                let after = self.planner.dial_failed(slot, now, &mut self.rng);
                match after {
                    AfterFailure::Retry(delay) => {
                        tracing::debug!(peer = %self.name(), slot, error = %e, retry_in = ?delay, "dial attempt failed");
                    }
                    AfterFailure::Exhausted(delay) => {
                        tracing::warn!(peer = %self.name(), slot, error = %e, probe_in = ?delay, "dial ran out of attempts");
                    }
                }
                if self.planner.exhausted() {
                    self.apply(PeerEvent::DialExhausted);
                }
            }
        }
        self.drive(ctx);
    }

    /// Registers a connection that passed its hello, in either direction,
    /// and serves its control stream.
    fn add_conn(&mut self, key: ConnKey, new: NewConn, ctx: &mut Context<Self>) {
        let NewConn {
            conn,
            direction,
            rank,
            instance,
            control,
            first,
        } = new;
        let meta = Arc::new(ConnMeta::new(key, conn.clone(), direction, rank.seq));
        let control = {
            let meta = meta.clone();
            let addr = ctx.address();
            control.serve(first, move |signal| match signal {
                Signal::Retire => addr.do_send(PeerRetires { key }),
                Signal::Done => meta.set_peer_done(),
            })
        };
        let mut ewma = PeakEwma::new(RTT_TAU);
        ewma.observe(conn.rtt().as_secs_f64(), self.node.now());
        {
            let mut routes = self.shared.routes();
            routes.conns.push(Route {
                meta: meta.clone(),
                usable: true,
                rtt: ewma.value(),
            });
        }
        self.conns.insert(
            key,
            LiveConn {
                meta: meta.clone(),
                rank,
                instance,
                retiring: false,
                control,
                ewma,
                seen: [0; 3],
            },
        );
        tracing::debug!(peer = %self.name(), conn = key, direction = direction.as_str(), remote = %conn.remote_address(), "connection up");
        let watched = conn.clone();
        ctx.spawn(
            async move { watched.closed().await }
                .into_actor(self)
                .map(move |err, act, ctx| act.on_closed(key, err, ctx)),
        );
        actix::spawn(serve_inbound(
            meta,
            self.shared.clone(),
            self.node.handler.clone(),
        ));
        self.update_connection_gauges();
        self.apply(PeerEvent::ConnectionUp);
    }

    fn update_connection_gauges(&self) {
        let count = |d: Direction| {
            self.conns
                .values()
                .filter(|c| c.meta.direction == d)
                .count() as f64
        };
        self.shared
            .metrics
            .connections_out
            .set(count(Direction::Outbound));
        self.shared
            .metrics
            .connections_in
            .set(count(Direction::Inbound));
    }

    fn usable_ranks(&self) -> (Vec<ConnKey>, Vec<ConnRank>) {
        let mut keys: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.retiring)
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        let ranks = keys.iter().map(|k| self.conns[k].rank).collect();
        (keys, ranks)
    }

    /// A connection from another instance of the peer means the peer
    /// restarted: every connection to an earlier instance is dead (its
    /// process is gone), so drop them now rather than after an idle timeout.
    fn drop_stale(&mut self, instance: u64) {
        let stale: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.instance != instance && !c.retiring)
            .map(|(k, _)| *k)
            .collect();
        if stale.is_empty() {
            return;
        }
        tracing::info!(peer = %self.name(), stale = stale.len(), "peer restarted; dropping connections to its previous instance");
        for key in stale {
            self.retire_now(key, codes::STALE);
        }
    }

    /// Retires the worst-ranked connections beyond N (see [`crate::pool::limit`]).
    fn resolve_excess(&mut self, ctx: &mut Context<Self>) {
        let (keys, ranks) = self.usable_ranks();
        for i in crate::pool::excess(&ranks, self.shared.target) {
            self.retire(keys[i], codes::EXCESS, ctx);
        }
    }

    /// Retires a live connection both ends agree is excess: stops routing new
    /// streams to it and closes it once no stream of either end can be on it
    /// (the control stream's RETIRE/DONE exchange, see
    /// [`transport::control`]), or after the drain timeout.
    fn retire(&mut self, key: ConnKey, code: CloseCode, ctx: &mut Context<Self>) {
        let Some((meta, control)) = self.stop_routing(key, code) else {
            return;
        };
        let timeout = self.node.drain_timeout();
        let peer = self.shared.name_arc.clone();
        ctx.spawn(
            async move {
                let handover = async {
                    control.send(Signal::Retire);
                    // Opens that picked this connection before it stopped
                    // routing are counted here: they finish first.
                    meta.wait_out_idle().await;
                    control.send(Signal::Done);
                    tracing::debug!(%peer, conn = key, "retiring: DONE sent");
                    meta.wait_peer_done().await;
                    meta.wait_idle().await;
                };
                if tokio::time::timeout(timeout, handover).await.is_err() {
                    tracing::debug!(%peer, conn = key, "retiring: handover timed out");
                }
                code.close(&meta.conn);
            }
            .into_actor(self),
        );
    }

    /// Retires a connection that is known dead: close it without waiting.
    fn retire_now(&mut self, key: ConnKey, code: CloseCode) {
        if let Some((meta, _)) = self.stop_routing(key, code) {
            code.close(&meta.conn);
        }
    }

    /// Marks a connection retiring and takes it out of the routing table;
    /// None if it is unknown or already retiring.
    fn stop_routing(
        &mut self,
        key: ConnKey,
        code: CloseCode,
    ) -> Option<(Arc<ConnMeta>, ControlTx)> {
        let c = self.conns.get_mut(&key)?;
        if c.retiring {
            return None;
        }
        c.retiring = true;
        let meta = c.meta.clone();
        let control = c.control.clone();
        if let Some(route) = self
            .shared
            .routes()
            .conns
            .iter_mut()
            .find(|r| r.meta.key == key)
        {
            route.usable = false;
        }
        tracing::debug!(peer = %self.name(), conn = key, reason = code.reason, "retiring connection");
        self.apply(PeerEvent::ConnectionDown);
        Some((meta, control))
    }

    fn on_closed(&mut self, key: ConnKey, err: quinn::ConnectionError, ctx: &mut Context<Self>) {
        let Some(c) = self.conns.remove(&key) else {
            return;
        };
        self.fold_stats(&c);
        self.shared.routes().conns.retain(|r| r.meta.key != key);
        let (reason, failure) = transport::close_reason(&err);
        self.shared.metrics.connection_closed(reason);
        let now = self.node.now();
        let failure = failure && !c.retiring;
        self.planner
            .connection_closed(key, failure, now, &mut self.rng);
        tracing::debug!(peer = %self.name(), conn = key, reason, error = %err, "connection closed");
        if failure && self.planner.can_dial() && !self.draining {
            self.shared.metrics.connection_restart(reason);
        }
        self.update_connection_gauges();
        if !c.retiring {
            self.apply(PeerEvent::ConnectionDown);
        }
        if self.shared.ephemeral && self.conns.is_empty() {
            self.forget_if_still_idle(ctx);
        }
        self.drive(ctx);
    }

    /// An unknown peer admitted by `accept_unknown_peers` is not kept
    /// forever: once it has had no connection for an idle timeout, it goes.
    fn forget_if_still_idle(&mut self, ctx: &mut Context<Self>) {
        let grace = self.node.config.node.idle_timeout();
        ctx.run_later(grace, |act, _| {
            if act.conns.is_empty() && !act.draining {
                act.lifeline
                    .supervisor
                    .do_send(RemovePeer(act.name().to_string()));
            }
        });
    }

    /// Adds a connection's final byte and loss counts to the peer's totals.
    fn fold_stats(&self, c: &LiveConn) {
        let stats = c.meta.conn.stats();
        let now = [
            stats.udp_tx.bytes,
            stats.udp_rx.bytes,
            stats.path.lost_packets,
        ];
        for (i, total) in self.shared.traffic_totals.iter().enumerate() {
            total.fetch_add(now[i].saturating_sub(c.seen[i]), Ordering::Relaxed);
        }
    }

    /// Refreshes RTT estimates and the traffic counters; keeps series alive.
    fn tick(&mut self) {
        let now = self.node.now();
        let mut min_rtt: Option<f64> = None;
        let mut live = [0u64; 3];
        for c in self.conns.values_mut() {
            let stats = c.meta.conn.stats();
            let rtt = stats.path.rtt.as_secs_f64();
            c.ewma.observe(rtt, now);
            min_rtt = Some(min_rtt.map_or(rtt, |m: f64| m.min(rtt)));
            let cur = [
                stats.udp_tx.bytes,
                stats.udp_rx.bytes,
                stats.path.lost_packets,
            ];
            for i in 0..3 {
                live[i] += cur[i].saturating_sub(c.seen[i]);
            }
            c.seen = cur;
        }
        for (i, add) in live.iter().enumerate() {
            self.shared.traffic_totals[i].fetch_add(*add, Ordering::Relaxed);
        }
        {
            let mut routes = self.shared.routes();
            for route in routes.conns.iter_mut() {
                if let Some(c) = self.conns.get(&route.meta.key) {
                    route.rtt = c.ewma.value();
                }
            }
        }
        let m = &self.shared.metrics;
        m.rtt.set(min_rtt.unwrap_or(0.0));
        let (out, inb) = self.conns.values().fold((0, 0), |(o, i), c| {
            (
                o + c.meta.out_streams.load(Ordering::Relaxed),
                i + c.meta.in_streams.load(Ordering::Relaxed),
            )
        });
        m.active_out.set(out as f64);
        m.active_in.set(inb as f64);
        m.streams_opened
            .absolute(self.shared.streams_opened.load(Ordering::Relaxed));
        let totals: Vec<u64> = self
            .shared
            .traffic_totals
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .collect();
        m.bytes_sent.absolute(totals[0]);
        m.bytes_received.absolute(totals[1]);
        m.lost_packets.absolute(totals[2]);
        m.touch();
    }

    /// Feeds the state machine; logs and publishes a change of state.
    fn apply(&mut self, event: PeerEvent) {
        if let Some((from, to)) = self.machine.on(event) {
            tracing::info!(peer = %self.name(), id = %self.shared.id().short(), from = from.as_str(), to = to.as_str(), connections = self.machine.live(), "peer state changed");
            crate::metrics::peer_state_change(Some(from.as_str()), Some(to.as_str()));
            self.shared.metrics.set_state(to);
            self.shared.routes().state = to;
            self.shared.notify_changed();
        }
    }

    fn connection_infos(&self) -> Vec<ConnectionInfo> {
        self.shared.connections()
    }

    fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let live = self.machine.live();
        let outcome = match self.machine.state() {
            PeerState::Draining => Some(Err(PoolError::Draining {
                peer: self.name().to_string(),
            })),
            PeerState::Unreachable => Some(Err(PoolError::PeerUnreachable {
                peer: self.name().to_string(),
                retry_in: self
                    .planner
                    .next_wakeup()
                    .map(|t| t.saturating_sub(self.node.now()))
                    .unwrap_or_default(),
            })),
            _ if live >= self.shared.target => Some(Ok(())),
            // Nothing more will be dialled soon: report what there is.
            _ if live > 0 && (!self.planner.can_dial() || self.planner.settled()) => Some(Ok(())),
            _ => None,
        };
        let Some(outcome) = outcome else {
            return;
        };
        let infos = outcome.as_ref().ok().map(|_| self.connection_infos());
        for waiter in self.waiters.drain(..) {
            let answer = match (&outcome, &infos) {
                (Ok(()), Some(infos)) => Ok(infos.clone()),
                (Err(e), _) => Err(clone_error(e)),
                _ => Err(PoolError::Stopped),
            };
            let _ = waiter.send(answer);
        }
    }
}

fn clone_error(e: &PoolError) -> PoolError {
    match e {
        PoolError::Draining { peer } => PoolError::Draining { peer: peer.clone() },
        PoolError::PeerUnreachable { peer, retry_in } => PoolError::PeerUnreachable {
            peer: peer.clone(),
            retry_in: *retry_in,
        },
        _ => PoolError::Stopped,
    }
}

/// Accepts the streams a peer opens on one connection and hands each to the
/// node's stream handler, until the connection closes.
async fn serve_inbound(
    meta: Arc<ConnMeta>,
    peer: Arc<PeerShared>,
    handler: Arc<dyn super::context::StreamHandler>,
) {
    while let Ok((mut send, mut recv)) = meta.conn.accept_bi().await {
        if peer.is_draining() {
            let code = quinn::VarInt::from_u32(codes::stream::DRAINING);
            let _ = send.reset(code);
            let _ = recv.stop(code);
            continue;
        }
        let guard = Arc::new(StreamGuard::new(meta.clone(), true));
        let stream = IncomingStream {
            peer: peer.name_arc.clone(),
            peer_id: peer.id(),
            send: PooledSend::new(send, guard.clone()),
            recv: PooledRecv::new(recv, guard),
        };
        tokio::spawn(handler.handle(stream));
    }
}

impl Actor for PeerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        crate::metrics::peer_state_change(None, Some(self.machine.state().as_str()));
        self.shared.metrics.set_state(self.machine.state());
        let addr = ctx.address();
        self.shared.set_report(Some(Box::new(move |key| {
            addr.do_send(RouteFailed { key });
        })));
        {
            let mut routes = self.shared.routes();
            routes.state = self.machine.state();
        }
        self.shared.metrics.target.set(self.shared.target as f64);
        ctx.run_interval(TICK, |act, _| act.tick());
        self.drive(ctx);
    }
}

/// Tells the supervisor when a `PeerActor` ends without being asked to, and
/// closes the connections it leaves behind so the restarted actor starts
/// clean (the peer redials or is redialled).
struct Lifeline {
    armed: bool,
    shared: Arc<PeerShared>,
    supervisor: Addr<Supervisor>,
    generation: u64,
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        // Whether stopped on purpose or not, this peer leaves its state gauge.
        let state = self.shared.routes().state;
        crate::metrics::peer_state_change(Some(state.as_str()), None);
        if !self.armed {
            return;
        }
        let conns: Vec<Route> = {
            let mut routes = self.shared.routes();
            routes.state = PeerState::Connecting;
            std::mem::take(&mut routes.conns)
        };
        for route in conns {
            codes::RESTART.close(&route.meta.conn);
        }
        self.shared.set_report(None);
        self.shared.metrics.connections_in.set(0.0);
        self.shared.metrics.connections_out.set(0.0);
        self.shared.notify_changed();
        self.supervisor.do_send(PeerDied {
            id: self.shared.id(),
            generation: self.generation,
        });
    }
}

/// A connection failed under a stream open: treat it as gone.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RouteFailed {
    pub key: ConnKey,
}

impl Handler<RouteFailed> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: RouteFailed, _ctx: &mut Self::Context) {
        // open_bi only fails on a closed connection, so its `closed()`
        // watcher fires too and does the bookkeeping; closing here makes
        // sure of it.
        if let Some(c) = self.conns.get(&msg.key) {
            c.meta
                .conn
                .close(quinn::VarInt::from_u32(0), b"stream open failed");
        }
    }
}

/// The peer retires a connection (RETIRE on its control stream): retire it
/// here too, so neither end opens streams on it and both say DONE.
#[derive(Message)]
#[rtype(result = "()")]
struct PeerRetires {
    key: ConnKey,
}

impl Handler<PeerRetires> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: PeerRetires, ctx: &mut Self::Context) {
        self.retire(msg.key, codes::EXCESS, ctx);
    }
}

/// An inbound connection passed TLS and sent its hello: admit it or not.
#[derive(Message)]
#[rtype(result = "Result<(), CloseCode>")]
pub(crate) struct Admit {
    pub conn: quinn::Connection,
    pub received: hello::Received,
}

impl Handler<Admit> for PeerActor {
    type Result = Result<(), CloseCode>;

    fn handle(&mut self, msg: Admit, ctx: &mut Self::Context) -> Self::Result {
        if self.draining {
            crate::metrics::inbound_refused("draining");
            return Err(codes::DRAINING);
        }
        let hello = msg.received.hello;
        let rank = ConnRank {
            dialed_by_smaller_id: self.shared.id() < self.node.local_id(),
            seq: hello.seq,
        };
        self.drop_stale(hello.instance);
        let (_, ranks) = self.usable_ranks();
        if crate::pool::admit(&ranks, rank, self.shared.target) == crate::pool::Admission::Refuse {
            crate::metrics::inbound_refused("over_limit");
            tracing::debug!(peer = %self.name(), "refused an inbound connection over the limit");
            return Err(codes::OVER_LIMIT);
        }
        let key = self.node.next_conn_key();
        self.planner.connection_added(key, self.node.now());
        let answer = hello::encode_answer(self.node.instance).to_vec();
        self.add_conn(
            key,
            NewConn {
                conn: msg.conn,
                direction: Direction::Inbound,
                rank,
                instance: hello.instance,
                control: msg.received.control,
                first: Some(answer),
            },
            ctx,
        );
        self.resolve_excess(ctx);
        self.drive(ctx);
        Ok(())
    }
}

/// `Pool::dial_peer`: make sure the peer is being dialled and answer when it
/// holds N connections, runs out of attempts, or settles below N.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Dial {
    pub reply: DialWaiter,
}

impl Handler<Dial> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: Dial, ctx: &mut Self::Context) {
        if self.planner.exhausted() {
            // An explicit dial starts a fresh dial with all its attempts.
            self.planner.redial_now(self.node.now());
            self.apply(PeerEvent::Redial);
        }
        self.waiters.push(msg.reply);
        self.drive(ctx);
    }
}

/// Stop serving new streams, let open ones finish (or time out), close every
/// connection with `code`, then stop.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain {
    pub code: CloseCode,
    pub timeout: Duration,
}

impl Handler<Drain> for PeerActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        self.draining = true;
        self.shared.set_draining();
        self.apply(PeerEvent::Drain);
        self.drive(ctx);
        let metas: Vec<Arc<ConnMeta>> = self.conns.values().map(|c| c.meta.clone()).collect();
        let Drain { code, timeout } = msg;
        let name = self.name().to_string();
        Box::pin(
            async move {
                let all_idle = async {
                    for m in &metas {
                        m.wait_idle().await;
                    }
                };
                let finished = tokio::time::timeout(timeout, all_idle).await.is_ok();
                if !finished {
                    tracing::warn!(peer = %name, ?timeout, "drain timed out; closing connections with streams still open");
                }
                for m in &metas {
                    code.close(&m.conn);
                }
            }
            .into_actor(self)
            .map(|_, act, ctx| {
                act.lifeline.armed = false;
                act.shared.set_report(None);
                ctx.stop();
            }),
        )
    }
}

/// Test hook: makes the actor panic, to prove the supervisor restarts it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct InjectPanic;

impl Handler<InjectPanic> for PeerActor {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _ctx: &mut Self::Context) {
        panic!("injected panic in the PeerActor of {}", self.name());
    }
}
