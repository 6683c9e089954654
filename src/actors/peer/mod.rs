//! `PeerActor`: owns one peer's [`PeerCore`] and carries out what it says:
//! resolving its name, dials, the retire handover, closes, ejections, the
//! drain. After every change it publishes what it derives from the core,
//! in one place ([`PeerActor::publish`]).
//!
//! It never waits on the network inside a handler: resolutions, dials,
//! retires and drains run as futures spawned in its context, and stream
//! opens do not pass through it at all (they read the published table, see
//! `routes`).
//!
//! - this file: the actor, `drive` and `publish`, the tick, dial waiters,
//!   ejections, and what a restart leaves behind;
//! - `discover`: the peer's address set, from its config or its DNS name;
//! - `dial`: connections coming and going: dials, inbound admissions, the
//!   IO each connection gets, closes, the peer's drain announcements;
//! - `retire`: taking connections out of service: excess (the RETIRE/DONE
//!   handover), those of a restarted process, those of vanished endpoints;
//! - `drain`: this node draining the peer, announced first.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;

mod dial;
mod discover;
mod drain;
#[cfg(feature = "test-util")]
mod hooks;
mod retire;

use super::conn::ConnMeta;
use super::context::NodeContext;
use super::endpoints::{EndpointFailing, EndpointStats};
use super::error::PoolError;
use super::messages::{Dial, DialWaiter, PeerDied, RemovePeer};
use super::shared::{EndpointRoute, PeerShared, Route, Snapshot};
use super::telemetry::{self, Sample, Seen};
use crate::pool::peer::PeerCore;
use crate::pool::{Direction, EndpointState, PeerState};
use crate::transport::codes;
use crate::transport::control::ControlTx;

/// How often RTT, byte counters and gauges are refreshed.
const TICK: Duration = Duration::from_secs(1);
/// Time constant of the RTT peak-EWMA used by the `latency` strategy.
const RTT_TAU: Duration = Duration::from_secs(10);

/// What the actor keeps per connection: the core stores it, opaque.
pub(crate) struct LiveConn {
    pub(crate) meta: Arc<ConnMeta>,
    /// Signals to the peer on the connection's control stream.
    control: ControlTx,
    seen: Seen,
}

/// The core of a peer: connections held as [`LiveConn`], endpoints named by
/// their address, each with the measurements openers share.
type Core = PeerCore<LiveConn, Arc<EndpointStats>, SocketAddr>;

/// Whom a peer actor reports to.
pub(crate) struct Supervision {
    pub(crate) died: Recipient<PeerDied>,
    pub(crate) remove: Recipient<RemovePeer>,
    pub(crate) generation: u64,
}

pub(crate) struct PeerActor {
    node: Arc<NodeContext>,
    shared: Arc<PeerShared>,
    core: Core,
    timer: Option<SpawnHandle>,
    waiters: Vec<DialWaiter>,
    rng: SmallRng,
    supervision: Supervision,
    /// Cleared when the actor stops on purpose (a drain); otherwise its
    /// drop closes what it held and tells the supervisor to restart it.
    restart_on_drop: bool,
    /// Dial attempts of earlier generations of this peer's actor.
    attempts_before: u64,
    /// The last resolution error, logged once until it changes.
    dns_error: Option<String>,
}

impl PeerActor {
    pub(crate) fn new(
        node: Arc<NodeContext>,
        shared: Arc<PeerShared>,
        supervision: Supervision,
    ) -> PeerActor {
        let core = PeerCore::new(
            node.retry.clone(),
            node.config.retry.reset_after,
            shared.target,
            node.ejection.clone(),
        );
        PeerActor {
            attempts_before: shared.snapshot().dial_attempts,
            node,
            shared,
            core,
            timer: None,
            waiters: Vec::new(),
            rng: SmallRng::from_os_rng(),
            supervision,
            restart_on_drop: true,
            dns_error: None,
        }
    }

    fn name(&self) -> &str {
        self.shared.name()
    }

    /// Ends due ejections, starts due dials, re-arms the timer, publishes,
    /// answers waiters. Every handler that changes the core ends here.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        let now = self.node.now();
        for addr in self.core.end_ejections(now) {
            tracing::info!(peer = %self.name(), endpoint = %addr, "endpoint back in the balancing");
        }
        for (addr, slot) in self.core.due(now) {
            self.start_dial(addr, slot, ctx);
        }
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = self.core.next_wakeup() {
            let delay = at.saturating_sub(self.node.now());
            self.timer = Some(ctx.run_later(delay, |act, ctx| {
                act.timer = None;
                act.drive(ctx);
            }));
        }
        self.publish();
        self.answer_waiters();
    }

    /// The one place the peer's published view is made: the routing table,
    /// the status, the state gauges and the state-change log line, all
    /// derived from the core.
    fn publish(&self) {
        let before = self.shared.state();
        let state = self.core.state();
        let backoff = self.core.current_backoff();
        let mut held = [0usize; 2];
        let mut by_state = [0usize; EndpointState::ALL.len()];
        let mut endpoints = Vec::new();
        let mut routes = Vec::new();
        for (i, (addr, e)) in self.core.endpoints().enumerate() {
            let endpoint_state = e.state();
            by_state[endpoint_state as usize] += 1;
            endpoints.push(EndpointRoute {
                addr: *addr,
                stats: e.handle.clone(),
                state: endpoint_state,
                connections: e.held(),
                ejected_until: e.ejection.until.map(|t| self.node.instant(t)),
            });
            for (_, c) in e.conns() {
                held[c.direction as usize] += 1;
                routes.push(Route {
                    meta: c.handle.meta.clone(),
                    usable: c.usable() && e.routable(),
                    rtt: c.ewma.value(),
                    endpoint: i,
                });
            }
        }
        self.shared.publish(Snapshot {
            state,
            endpoints,
            routes,
            retry_at: self.core.next_dial().map(|t| self.node.instant(t)),
            dial_attempts: self.attempts_before + self.core.total_attempts(),
            backoff,
        });
        let m = &self.shared.metrics;
        m.backoff.set(backoff.as_secs_f64());
        for d in Direction::ALL {
            m.connections(d).set(held[d as usize] as f64);
        }
        m.set_endpoints(&by_state);
        if before != state {
            tracing::info!(peer = %self.name(), from = before.as_str(), to = state.as_str(), connections = self.core.usable(), "peer state changed");
            crate::metrics::peer_state_change(Some(before), Some(state));
            m.set_state(state);
        }
    }

    /// Refreshes RTT estimates and the traffic counters; keeps series alive.
    fn tick(&mut self) {
        let now = self.node.now();
        let mut sample = Sample::default();
        for (_, e) in self.core.endpoints_mut() {
            for (_, c) in e.conns_mut() {
                let stats = c.handle.meta.conn.stats();
                let rtt = stats.path.rtt.as_secs_f64();
                c.ewma.observe(rtt, now);
                sample.add(&c.handle.meta, rtt);
                c.handle.seen.fold(&stats, &self.shared.traffic);
            }
        }
        let opened = self.shared.streams_opened.load(Ordering::Relaxed);
        telemetry::publish(&self.shared.metrics, &sample, &self.shared.traffic, opened);
        self.publish();
    }

    fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let usable = self.core.usable();
        let full = self.core.state() == PeerState::Healthy;
        let ready = match self.core.state() {
            PeerState::Draining | PeerState::Unreachable => true,
            _ if full => true,
            // Nothing more will be dialled soon: report what there is.
            _ => usable > 0 && (!self.core.can_dial() || self.core.settled()),
        };
        if !ready {
            return;
        }
        let infos = self.shared.connections();
        for waiter in self.waiters.drain(..) {
            let answer = match self.core.state() {
                PeerState::Draining => Err(PoolError::Draining {
                    peer: self.shared.name().to_string(),
                }),
                PeerState::Unreachable => Err(PoolError::PeerUnreachable {
                    peer: self.shared.name().to_string(),
                    retry_in: self
                        .core
                        .next_dial()
                        .map(|t| t.saturating_sub(self.node.now()))
                        .unwrap_or_default(),
                }),
                _ => Ok(infos.clone()),
            };
            let _ = waiter.send(answer);
        }
    }
}

impl Actor for PeerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // This actor takes over the peer's place in the state gauges from
        // what is published (by a previous generation, or nothing yet).
        let inherited = self.shared.state();
        crate::metrics::peer_state_change(None, Some(inherited));
        self.shared.metrics.set_state(inherited);
        self.shared.metrics.target.set(self.shared.target as f64);
        self.shared.failures.attach(Some(ctx.address().recipient()));
        ctx.run_interval(TICK, |act, ctx| {
            act.tick();
            act.replace_aged(ctx);
        });
        self.discover(ctx);
        self.drive(ctx);
    }
}

impl Drop for PeerActor {
    /// The actor lets go of its connections and publishes that, and the
    /// peer leaves the state gauges. An actor that ends unasked (a panic)
    /// also closes the connections so its successor starts clean (the peer
    /// redials or is redialled), and asks the supervisor for the successor;
    /// after a drain they are closed already.
    fn drop(&mut self) {
        self.shared.failures.attach(None);
        for live in self.core.take_all() {
            if self.restart_on_drop {
                codes::RESTART.close(&live.meta.conn);
            }
        }
        self.publish();
        if self.restart_on_drop {
            self.supervision.died.do_send(PeerDied {
                name: self.shared.name().to_string(),
                generation: self.supervision.generation,
            });
        }
        crate::metrics::peer_state_change(Some(self.shared.state()), None);
    }
}

impl Handler<Dial> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: Dial, ctx: &mut Self::Context) {
        if self.core.exhausted() {
            // An explicit dial starts a fresh dial with all its attempts.
            self.core.redial_now(self.node.now());
        }
        self.waiters.push(msg.reply);
        self.drive(ctx);
    }
}

impl Handler<EndpointFailing> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: EndpointFailing, ctx: &mut Self::Context) {
        let addr = msg.0;
        match self.core.eject(&addr, self.node.now()) {
            Some(time) => {
                self.shared.metrics.ejection();
                tracing::warn!(peer = %self.name(), endpoint = %addr, ?time, "endpoint failed too often in a row; ejected");
            }
            None => {
                tracing::debug!(peer = %self.name(), endpoint = %addr, "endpoint failing, not ejected (already, or at outlier.max_ejection_percent)");
            }
        }
        // A new run starts, whether or not this one ejected.
        if let Some((_, e)) = self.core.endpoints().find(|(a, _)| **a == addr) {
            e.handle.succeeded();
        }
        self.drive(ctx);
    }
}
