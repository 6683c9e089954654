//! Taking connections out of service: the excess beyond N and those of
//! endpoints that left the peer's address set, retired through the
//! RETIRE/DONE handover on the control stream so no stream is lost, and the
//! connections to a peer process that has restarted, closed at once.

use std::net::SocketAddr;

use actix::prelude::*;

use super::PeerActor;
use crate::actors::messages::PeerRetires;
use crate::pool::ConnKey;
use crate::transport::codes::{self, CloseCode};
use crate::transport::control::Signal;

/// How long the end that was asked to retire a connection waits, after the
/// handover, for the asking end to close it.
const PEER_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

impl PeerActor {
    /// A connection from another instance of the process at `addr` means it
    /// restarted: every connection to its earlier instance is dead (that
    /// process is gone), so drop them now rather than after an idle timeout.
    pub(super) fn drop_stale(&mut self, addr: &SocketAddr, instance: u64) {
        let stale = self.core.stale(addr, instance);
        if stale.is_empty() {
            return;
        }
        tracing::info!(peer = %self.name(), endpoint = %addr, stale = stale.len(), "peer restarted; dropping connections to its previous instance");
        for key in stale {
            if let Some(live) = self.core.retire(key) {
                codes::STALE.close(&live.meta.conn);
            }
        }
    }

    /// Retires the worst-ranked connections beyond N (see `pool::limit`).
    pub(super) fn resolve_excess(&mut self, ctx: &mut Context<Self>) {
        for key in self.core.excess() {
            self.retire(key, codes::EXCESS, ctx);
        }
    }

    /// Replaces connections that reached `pool.max_connection_age`: retired
    /// through the handover like an excess one, redialled by `drive`.
    pub(super) fn replace_aged(&mut self, ctx: &mut Context<Self>) {
        let aged = self.core.aged(self.node.now());
        if aged.is_empty() {
            return;
        }
        for key in aged {
            tracing::debug!(peer = %self.name(), conn = key, "connection reached pool.max_connection_age; replacing it");
            self.retire(key, codes::AGED, ctx);
        }
        self.drive(ctx);
    }

    /// Retires a connection both ends agree is excess: stops routing new
    /// streams to it and closes it once no stream of either end can be on it
    /// (the control stream's RETIRE/DONE exchange, see
    /// [`transport::control`]), or after the drain timeout.
    pub(super) fn retire(&mut self, key: ConnKey, code: CloseCode, ctx: &mut Context<Self>) {
        self.retire_as(key, code, false, ctx);
    }

    /// [`Self::retire`]; with `peer_closes` (the peer asked for it) the
    /// peer, whose reason it is, closes once the handover is done, so its
    /// close code is the one both ends count; this end closes only if it
    /// has not within [`PEER_CLOSE_GRACE`].
    fn retire_as(
        &mut self,
        key: ConnKey,
        code: CloseCode,
        peer_closes: bool,
        ctx: &mut Context<Self>,
    ) {
        let Some(live) = self.core.retire(key) else {
            return;
        };
        let (meta, control) = (live.meta.clone(), live.control.clone());
        tracing::debug!(peer = %self.name(), conn = key, reason = code.reason, "retiring connection");
        // Published before the handover starts: an open that picked this
        // connection before counts on it by now, one that did not never will.
        self.publish();
        let timeout = self.node.config.admin.drain_timeout;
        let peer = self.shared.name_arc.clone();
        ctx.spawn(
            async move {
                let handover = async {
                    control.send(Signal::Retire);
                    meta.wait_out_idle().await;
                    control.send(Signal::Done);
                    tracing::debug!(%peer, conn = key, "retiring: DONE sent");
                    meta.wait_peer_done().await;
                    meta.wait_idle().await;
                };
                if tokio::time::timeout(timeout, handover).await.is_err() {
                    tracing::debug!(%peer, conn = key, "retiring: handover timed out");
                } else if peer_closes
                    && tokio::time::timeout(PEER_CLOSE_GRACE, meta.conn.closed())
                        .await
                        .is_ok()
                {
                    return;
                }
                code.close(&meta.conn);
            }
            .into_actor(self),
        );
    }
}

impl Handler<PeerRetires> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: PeerRetires, ctx: &mut Self::Context) {
        self.retire_as(msg.key, codes::EXCESS, true, ctx);
        self.drive(ctx);
    }
}
