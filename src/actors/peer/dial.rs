//! Connections coming and going: dials and their results, the admission of
//! inbound connections, the IO every connection gets (its control stream,
//! its close watcher, its inbound streams), and closes.

use std::sync::Arc;

use actix::prelude::*;

use super::{LiveConn, PeerActor, RTT_TAU};
use crate::actors::conn::ConnMeta;
use crate::actors::inbound::serve_inbound;
use crate::actors::messages::{Admit, PeerRetires, RemovePeer};
use crate::actors::telemetry::Seen;
use crate::metrics::labels::{DialResult, InboundRefused};
use crate::pool::conn::Conn;
use crate::pool::limit::{Admission, ConnRank};
use crate::pool::peer::AfterFailure;
use crate::pool::{ConnKey, Direction, PeakEwma};
use crate::transport::control::{Control, Signal};
use crate::transport::{self, codes, codes::CloseCode, hello};

impl PeerActor {
    pub(super) fn start_dial(&mut self, slot: usize, ctx: &mut Context<Self>) {
        let (Some(addr), Some(cfg)) = (self.shared.config.addr, self.client_config.clone()) else {
            return;
        };
        let seq = self.node.next_dial_seq();
        let hello = hello::Hello {
            version: hello::VERSION,
            seq,
            id: self.node.local_id(),
            instance: self.node.instance,
        };
        let endpoint = self.node.endpoint.clone();
        let timeout = self.node.config.pool.connection_timeout;
        let fut = async move { transport::dial(&endpoint, cfg, addr, hello, timeout).await };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |result, act, ctx| act.on_dial_result(slot, seq, result, ctx)),
        );
    }

    pub(super) fn on_dial_result(
        &mut self,
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
                self.core.dial_abandoned(slot);
            }
            Ok(dialled) => {
                self.shared.metrics.dial_attempt(DialResult::Ok);
                self.shared.metrics.record_dial(dialled.took);
                let rank = ConnRank {
                    dialed_by_smaller_id: self.node.local_id() < self.shared.id(),
                    seq,
                };
                self.drop_stale(dialled.instance);
                let key = self.node.next_conn_key();
                let conn = self.start_conn(
                    key,
                    dialled.conn,
                    Direction::Outbound,
                    rank,
                    dialled.instance,
                    dialled.control,
                    None,
                    ctx,
                );
                self.core.dial_succeeded(slot, key, conn, now);
                self.resolve_excess(ctx);
            }
            Err(e) => {
                self.shared.metrics.dial_attempt(e.label());
                match self.core.dial_failed(slot, now, &mut self.rng) {
                    AfterFailure::Retry(delay) => {
                        tracing::debug!(peer = %self.name(), slot, error = %e, retry_in = ?delay, "dial attempt failed");
                    }
                    AfterFailure::Exhausted(delay) => {
                        tracing::warn!(peer = %self.name(), slot, error = %e, probe_in = ?delay, "dial ran out of attempts");
                    }
                }
            }
        }
        self.drive(ctx);
    }

    /// Sets up the IO of a connection that passed its hello, in either
    /// direction: its control stream, its close watcher, its inbound
    /// streams. Returns what the core keeps of it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_conn(
        &mut self,
        key: ConnKey,
        conn: quinn::Connection,
        direction: Direction,
        rank: ConnRank,
        instance: u64,
        control: Control,
        first: Option<Vec<u8>>,
        ctx: &mut Context<Self>,
    ) -> Conn<LiveConn> {
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
        tracing::debug!(peer = %self.name(), conn = key, direction = direction.as_str(), remote = %conn.remote_address(), "connection up");
        ctx.spawn(
            async move { conn.closed().await }
                .into_actor(self)
                .map(move |err, act, ctx| act.on_closed(key, err, ctx)),
        );
        actix::spawn(serve_inbound(
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

    pub(super) fn on_closed(
        &mut self,
        key: ConnKey,
        err: quinn::ConnectionError,
        ctx: &mut Context<Self>,
    ) {
        let (reason, failure) = transport::close_reason(&err);
        let now = self.node.now();
        let Some(mut closed) = self.core.closed(key, failure, now, &mut self.rng) else {
            return;
        };
        let live = &mut closed.handle;
        live.seen
            .fold(&live.meta.conn.stats(), &self.shared.traffic);
        self.shared.metrics.connection_closed(reason);
        tracing::debug!(peer = %self.name(), conn = key, %reason, error = %err, "connection closed");
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
    pub(super) fn forget_if_still_idle(&mut self, ctx: &mut Context<Self>) {
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

impl Handler<Admit> for PeerActor {
    type Result = Result<(), CloseCode>;

    fn handle(&mut self, msg: Admit, ctx: &mut Self::Context) -> Self::Result {
        if self.core.is_draining() {
            crate::metrics::inbound_refused(InboundRefused::Draining);
            return Err(codes::DRAINING);
        }
        let hello = msg.received.hello;
        let rank = ConnRank {
            dialed_by_smaller_id: self.shared.id() < self.node.local_id(),
            seq: hello.seq,
        };
        self.drop_stale(hello.instance);
        let admitted = if self.core.admission(rank) == Admission::Refuse {
            crate::metrics::inbound_refused(InboundRefused::OverLimit);
            tracing::debug!(peer = %self.name(), "refused an inbound connection over the limit");
            Err(codes::OVER_LIMIT)
        } else {
            let key = self.node.next_conn_key();
            let answer = hello::encode_answer(self.node.instance).to_vec();
            let conn = self.start_conn(
                key,
                msg.conn,
                Direction::Inbound,
                rank,
                hello.instance,
                msg.received.control,
                Some(answer),
                ctx,
            );
            self.core.add_inbound(key, conn, self.node.now());
            self.resolve_excess(ctx);
            Ok(())
        };
        self.drive(ctx);
        admitted
    }
}
