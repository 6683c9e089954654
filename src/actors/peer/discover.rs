//! The peer's address set: its configured `IP:PORT`, or the addresses its
//! `HOST:PORT` resolves to, followed for as long as the actor lives. A
//! failed resolution keeps the last good set.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use actix::prelude::*;

use super::PeerActor;
use crate::actors::discovery::{next_refresh, Answer};
use crate::config::PeerAddr;
use crate::metrics::labels::DnsResult;
use crate::transport::codes;

impl PeerActor {
    /// Starts following the peer's address set.
    pub(super) fn discover(&mut self, ctx: &mut Context<Self>) {
        match self.shared.config.addr.clone() {
            None => {}
            Some(PeerAddr::Ip(a)) => self.set_addrs(BTreeSet::from([a]), ctx),
            Some(PeerAddr::Name { host, port }) => self.resolve(host, port, ctx),
        }
    }

    fn resolve(&mut self, host: String, port: u16, ctx: &mut Context<Self>) {
        let node = self.node.clone();
        let name = host.clone();
        let lookup = async move {
            let resolver = node.resolver().await?;
            resolver.resolve(&name, port, node.local_addr).await
        };
        ctx.spawn(
            lookup
                .into_actor(self)
                .map(move |result, act, ctx| act.on_resolved(host, port, result, ctx)),
        );
    }

    fn on_resolved(
        &mut self,
        host: String,
        port: u16,
        result: Result<Answer, String>,
        ctx: &mut Context<Self>,
    ) {
        if self.core.is_draining() {
            return;
        }
        let cfg = &self.node.config.discovery;
        let again = match result {
            Ok(answer) => {
                self.shared.metrics.dns_resolution(DnsResult::Ok);
                if self.dns_error.take().is_some() {
                    tracing::info!(peer = %self.name(), %host, "the peer's name resolves again");
                }
                let again = next_refresh(answer.ttl, cfg);
                self.set_addrs(answer.addrs, ctx);
                again
            }
            Err(e) => {
                self.shared.metrics.dns_resolution(DnsResult::Error);
                if self.dns_error.as_ref() != Some(&e) {
                    tracing::warn!(peer = %self.name(), %host, error = %e, "cannot resolve the peer's name; keeping its last known addresses");
                    self.dns_error = Some(e);
                }
                cfg.refresh_min
            }
        };
        ctx.run_later(again, move |act, ctx| act.resolve(host, port, ctx));
        self.drive(ctx);
    }

    /// The address set is now `addrs`: new endpoints are dialled, the
    /// connections of those that left it are retired.
    fn set_addrs(&mut self, addrs: BTreeSet<SocketAddr>, ctx: &mut Context<Self>) {
        let known: BTreeSet<SocketAddr> = self.core.endpoints().map(|(a, _)| *a).collect();
        if !addrs.is_subset(&known) || known.len() != addrs.len() {
            tracing::info!(peer = %self.name(), endpoints = ?addrs, "the peer's address set changed");
        }
        for key in self.core.set_addrs(&addrs, self.node.now()) {
            self.retire(key, codes::EXCESS, ctx);
        }
        self.drive(ctx);
    }
}
