//! Connections coming and going: dials and their results, the admission of
//! inbound connections, the IO every connection gets (its control stream,
//! its close watcher, its inbound streams), closes, and the drains the
//! peer announces.

use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;

use super::{LiveConn, PeerActor, RTT_TAU};
use crate::actors::conn::ConnMeta;
use crate::actors::inbound::serve_inbound;
use crate::actors::messages::{Admit, PeerDrains, PeerRetires, RemovePeer};
use crate::actors::telemetry::Seen;
use crate::identity::Verified;
use crate::metrics::labels::{DialResult, InboundRefused};
use crate::pool::conn::{expiry, Conn};
use crate::pool::endpoint::AfterFailure;
use crate::pool::limit::{Admission, ConnRank};
use crate::pool::{ConnKey, Direction, PeakEwma};
use crate::transport::control::{Control, Signal};
use crate::transport::tls::{self, Expected};
use crate::transport::{self, codes, codes::CloseCode, hello};

impl PeerActor {
    /// Who a dial must find at the other end: a pinned id, or this peer's
    /// name in a certificate of a trusted CA.
    fn expected(&self) -> Expected {
        let ids = self.shared.config.pinned_ids();
        if ids.is_empty() {
            Expected::Named(self.shared.config.name.clone())
        } else {
            Expected::Pinned(ids)
        }
    }

    pub(super) fn start_dial(&mut self, addr: SocketAddr, slot: usize, ctx: &mut Context<Self>) {
        let tls = self.node.tls();
        let cfg = match transport::dial_config(
            &self.node.config.node,
            &tls.identity,
            self.expected(),
            tls.trust.clone(),
            self.node.transport.clone(),
        ) {
            Ok(cfg) => cfg,
            Err(e) => {
                tracing::error!(peer = %self.name(), error = %e, "cannot build a TLS client config; not dialling");
                self.core.dial_abandoned(&addr, slot);
                return;
            }
        };
        let seq = self.node.next_dial_seq();
        let hello = hello::Hello {
            version: hello::VERSION,
            seq,
            id: tls.identity.id,
            instance: self.node.instance,
        };
        let endpoint = self.node.endpoint.clone();
        let timeout = self.node.config.pool.connection_timeout;
        let fut = async move { transport::dial(&endpoint, cfg, addr, hello, timeout).await };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |result, act, ctx| act.on_dial_result(addr, slot, seq, result, ctx)),
        );
    }

    fn on_dial_result(
        &mut self,
        addr: SocketAddr,
        slot: usize,
        seq: u64,
        result: Result<transport::Dialled, transport::DialError>,
        ctx: &mut Context<Self>,
    ) {
        let now = self.node.now();
        match result {
            Ok(dialled) if self.core.is_draining() => {
                self.shared.metrics.dial_attempt(DialResult::Ok);
                codes::REMOVED.close(&dialled.conn);
                self.core.dial_abandoned(&addr, slot);
            }
            Ok(dialled) => {
                self.shared.metrics.dial_attempt(DialResult::Ok);
                self.shared.metrics.record_dial(dialled.took);
                let Some(remote) = tls::remote_identity(&dialled.conn) else {
                    codes::BAD_HELLO.close(&dialled.conn);
                    self.core.dial_abandoned(&addr, slot);
                    return self.drive(ctx);
                };
                let rank = ConnRank {
                    dialed_by_smaller_id: self.node.local_id() < remote.id,
                    seq,
                };
                self.drop_stale(&addr, dialled.instance);
                let key = self.node.next_conn_key();
                let conn = self.start_conn(
                    key,
                    Start {
                        conn: dialled.conn,
                        direction: Direction::Outbound,
                        rank,
                        instance: dialled.instance,
                        remote,
                        control: dialled.control,
                        first: None,
                    },
                    ctx,
                );
                // Only the dialler replaces a connection for its age.
                let age = self.node.config.pool.max_connection_age;
                let conn = conn.expiring_at(expiry(now, age, &mut self.rng));
                if !self.core.dial_succeeded(&addr, slot, key, conn, now) {
                    // Its endpoint left the address set while it dialled.
                    self.retire(key, codes::EXCESS, ctx);
                }
                self.resolve_excess(ctx);
            }
            Err(e) => {
                self.shared.metrics.dial_attempt(e.label());
                match self.core.dial_failed(&addr, slot, now, &mut self.rng) {
                    AfterFailure::Retry(delay) => {
                        tracing::debug!(peer = %self.name(), endpoint = %addr, slot, error = %e, retry_in = ?delay, "dial attempt failed");
                    }
                    AfterFailure::Exhausted(delay) => {
                        tracing::warn!(peer = %self.name(), endpoint = %addr, slot, error = %e, probe_in = ?delay, "dial ran out of attempts");
                    }
                }
            }
        }
        self.drive(ctx);
    }

    /// Sets up the IO of a connection that passed its hello, in either
    /// direction: its control stream, its close watcher, its inbound
    /// streams. Returns what the core keeps of it.
    fn start_conn(&mut self, key: ConnKey, s: Start, ctx: &mut Context<Self>) -> Conn<LiveConn> {
        let Start {
            conn,
            direction,
            rank,
            instance,
            remote,
            control,
            first,
        } = s;
        let meta = Arc::new(ConnMeta::new(
            key,
            conn.clone(),
            direction,
            rank.seq,
            remote,
            self.node.backlog.clone(),
        ));
        let control = {
            let meta = meta.clone();
            let addr = ctx.address();
            control.serve(conn.clone(), first, move |signal| match signal {
                Signal::Retire => addr.do_send(PeerRetires { key }),
                Signal::Done => meta.set_peer_done(),
                Signal::Draining => addr.do_send(PeerDrains { key }),
                Signal::Drained => meta.set_drained(),
            })
        };
        let mut ewma = PeakEwma::new(RTT_TAU);
        ewma.observe(conn.rtt().as_secs_f64(), self.node.now());
        tracing::debug!(peer = %self.name(), conn = key, direction = direction.as_str(), remote = %conn.remote_address(), "connection up");
        ctx.spawn(
            async move { conn.closed().await }
                .into_actor(self)
                .map(move |err, act, ctx| act.on_closed(key, err, ctx)),
        );
        tokio::spawn(serve_inbound(
            meta.clone(),
            self.shared.clone(),
            self.node.handler.clone(),
        ));
        let live = LiveConn {
            meta,
            control,
            seen: Seen::default(),
        };
        Conn::new(live, direction, rank, instance, ewma)
    }

    fn on_closed(&mut self, key: ConnKey, err: quinn::ConnectionError, ctx: &mut Context<Self>) {
        let (reason, failure) = transport::close_reason(&err);
        let now = self.node.now();
        let endpoint = self.core.endpoint_of(key).copied();
        let Some(mut closed) = self.core.closed(key, failure, now, &mut self.rng) else {
            return;
        };
        let live = &mut closed.handle;
        live.seen
            .fold(&live.meta.conn.stats(), &self.shared.traffic);
        self.shared.metrics.connection_closed(reason);
        tracing::debug!(peer = %self.name(), conn = key, endpoint = ?endpoint, %reason, error = %err, "connection closed");
        if closed.failure && self.core.can_dial() && !self.core.is_draining() {
            self.shared.metrics.connection_restart(reason);
        }
        if self.shared.ephemeral && self.core.held() == 0 {
            self.forget_if_still_idle(ctx);
        }
        self.drive(ctx);
    }

    /// An unknown peer admitted by `accept_unknown_peers` is not kept
    /// forever: once it has had no connection for an idle timeout, it goes.
    fn forget_if_still_idle(&mut self, ctx: &mut Context<Self>) {
        let grace = self.node.config.node.idle_timeout;
        ctx.run_later(grace, |act, _| {
            if act.core.held() == 0 && !act.core.is_draining() {
                act.supervision
                    .remove
                    .do_send(RemovePeer(act.name().to_string()));
            }
        });
    }
}

/// A connection that passed its hello, before the core holds it.
struct Start {
    conn: quinn::Connection,
    direction: Direction,
    rank: ConnRank,
    /// The peer process it reaches (from the hello).
    instance: u64,
    remote: Verified,
    control: Control,
    /// Written on the control stream before anything else: the hello
    /// answer, when this end accepted the connection.
    first: Option<Vec<u8>>,
}

impl Handler<Admit> for PeerActor {
    type Result = Result<(), CloseCode>;

    fn handle(&mut self, msg: Admit, ctx: &mut Self::Context) -> Self::Result {
        if self.core.is_draining() {
            crate::metrics::inbound_refused(InboundRefused::Draining);
            return Err(codes::DRAINING);
        }
        let Some(remote) = tls::remote_identity(&msg.conn) else {
            return Err(codes::BAD_HELLO);
        };
        // A node dials from the socket it listens on: the remote address
        // names the same process from both ends.
        let addr = msg.conn.remote_address();
        let hello = msg.received.hello;
        let rank = ConnRank {
            dialed_by_smaller_id: remote.id < self.node.local_id(),
            seq: hello.seq,
        };
        self.drop_stale(&addr, hello.instance);
        let admitted = if self.core.admission(&addr, rank) == Admission::Refuse {
            crate::metrics::inbound_refused(InboundRefused::OverLimit);
            tracing::debug!(peer = %self.name(), endpoint = %addr, "refused an inbound connection over the limit");
            Err(codes::OVER_LIMIT)
        } else {
            let key = self.node.next_conn_key();
            let answer = hello::encode_answer(self.node.instance).to_vec();
            let conn = self.start_conn(
                key,
                Start {
                    conn: msg.conn,
                    direction: Direction::Inbound,
                    rank,
                    instance: hello.instance,
                    remote,
                    control: msg.received.control,
                    first: Some(answer),
                },
                ctx,
            );
            self.core.add_inbound(&addr, key, conn, self.node.now());
            self.resolve_excess(ctx);
            Ok(())
        };
        self.drive(ctx);
        admitted
    }
}

impl Handler<PeerDrains> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: PeerDrains, ctx: &mut Self::Context) {
        if let Some(addr) = self.core.announced_drain(msg.key) {
            tracing::info!(peer = %self.name(), endpoint = %addr, "peer announced its drain; routing nothing new to it");
            // Published before the answer: no stream picks it after DRAINED.
            self.drive(ctx);
            for (a, _, c) in self.core.conns() {
                if *a == addr {
                    c.handle.control.send(Signal::Drained);
                }
            }
        }
    }
}
