//! The `Supervisor`: one per node. It starts a `PeerActor` per peer, adds
//! and removes peers at run time, routes admitted inbound connections to
//! their peer's actor, and restarts a `PeerActor` that dies (a panic or an
//! unexpected stop) with the same configuration.
//!
//! Whether a peer is being removed is its actor's to know (its core drains,
//! and publishes `draining`): the supervisor asks the published state, and
//! a second removal of the same peer is answered by the actor itself.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::context::NodeContext;
use super::error::PoolError;
use super::messages::{
    AddPeer, Dial, DialPeer, Drain, Inbound, PeerDied, RemovePeer, ReplacePeer, Shutdown,
};
use super::peer::{PeerActor, Supervision};
use super::shared::PeerShared;
use crate::config::{check_peer, PeerConfig};
use crate::metrics::{self, labels::ActorKind, labels::InboundRefused};
use crate::pool::PeerState;
use crate::transport::codes::{self, CloseCode};

struct Entry {
    shared: Arc<PeerShared>,
    addr: Addr<PeerActor>,
    generation: u64,
}

pub(crate) struct Supervisor {
    node: Arc<NodeContext>,
    /// By peer name.
    peers: HashMap<String, Entry>,
    /// Unique across the node's actors, so a death report of an actor that
    /// was replaced never restarts its successor.
    next_generation: u64,
}

impl Supervisor {
    /// Creates the supervisor with the configured peers already registered,
    /// so no inbound handshake can arrive before they are known.
    pub(crate) fn start(node: Arc<NodeContext>) -> Result<Addr<Supervisor>, PoolError> {
        let mut failure = None;
        let addr = Supervisor::create(|ctx| {
            let mut sup = Supervisor {
                node: node.clone(),
                peers: HashMap::new(),
                next_generation: 0,
            };
            for peer in node.config.peers.clone() {
                if let Err(e) = sup.add(peer, false, ctx) {
                    failure = Some(e);
                }
            }
            sup
        });
        match failure {
            Some(e) => Err(e),
            None => Ok(addr),
        }
    }

    fn spawn_actor(
        &self,
        shared: &Arc<PeerShared>,
        generation: u64,
        ctx: &mut Context<Self>,
    ) -> Addr<PeerActor> {
        let supervision = Supervision {
            died: ctx.address().recipient(),
            remove: ctx.address().recipient(),
            generation,
        };
        PeerActor::new(self.node.clone(), shared.clone(), supervision).start()
    }

    fn add(
        &mut self,
        config: PeerConfig,
        ephemeral: bool,
        ctx: &mut Context<Self>,
    ) -> Result<Arc<PeerShared>, PoolError> {
        let ca = self.node.tls().trust.is_some();
        if let Some(problem) = check_peer(&config, Some(self.node.local_id()), ca)
            .into_iter()
            .next()
        {
            return Err(PoolError::InvalidPeer(problem.to_string()));
        }
        let shared = Arc::new(PeerShared::new(
            config,
            &self.node.config.pool,
            self.node.ejection.consecutive_failures,
            ephemeral,
        ));
        self.node.registry.insert(shared.clone())?;
        let generation = self.generation();
        let addr = self.spawn_actor(&shared, generation, ctx);
        tracing::info!(peer = %shared.name(), ids = ?shared.config.pinned_ids(), addr = ?shared.config.addr, ephemeral, "peer added");
        self.peers.insert(
            shared.name().to_string(),
            Entry {
                shared: shared.clone(),
                addr,
                generation,
            },
        );
        Ok(shared)
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Drains a peer: the future resolves once its actor has closed its
    /// connections (`Ok`), or at once if the actor drains already
    /// (`Err(Draining)`). The drain request is sent now, so drains asked for
    /// together run together.
    fn drain(
        entry: &Entry,
        code: CloseCode,
        timeout: Duration,
        announce: bool,
    ) -> impl Future<Output = Result<(), PoolError>> {
        let request = entry.addr.send(Drain {
            code,
            timeout,
            announce,
        });
        async move {
            match request.await {
                Ok(result) => result,
                // The actor died during its drain: its connections are gone.
                Err(_) => Ok(()),
            }
        }
    }

    /// Forgets a peer whose drain finished.
    fn forget(&mut self, name: &str) {
        if self.peers.remove(name).is_some() {
            self.node.registry.remove(name);
            tracing::info!(peer = %name, "peer removed");
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(metrics::TOUCH_INTERVAL, |act, _| {
            let ready = act.node.registry.not_ready().is_empty();
            let m = &act.node.node_metrics;
            m.ready.set(if ready { 1.0 } else { 0.0 });
            m.backlogged.set(act.node.backlog.streams() as f64);
            m.touch();
        });
    }
}

impl Handler<AddPeer> for Supervisor {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: AddPeer, ctx: &mut Self::Context) -> Self::Result {
        if self.node.is_shutting_down() {
            return Err(PoolError::Stopped);
        }
        self.add(msg.0, false, ctx).map(|_| ())
    }
}

impl Handler<RemovePeer> for Supervisor {
    type Result = ResponseActFuture<Self, Result<(), PoolError>>;

    fn handle(&mut self, msg: RemovePeer, _ctx: &mut Self::Context) -> Self::Result {
        let Some(entry) = self.peers.get(&msg.0) else {
            return Box::pin(fut::ready(Err(PoolError::UnknownPeer(msg.0))));
        };
        let drain = Supervisor::drain(
            entry,
            codes::REMOVED,
            self.node.config.admin.drain_timeout,
            true,
        );
        Box::pin(
            drain
                .into_actor(self)
                .map(move |result, act, _| match result {
                    Ok(()) => {
                        act.forget(&msg.0);
                        Ok(())
                    }
                    // Another removal of this peer is under way.
                    Err(_) => Err(PoolError::UnknownPeer(msg.0)),
                }),
        )
    }
}

impl Handler<ReplacePeer> for Supervisor {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: ReplacePeer, ctx: &mut Self::Context) -> Self::Result {
        let config = msg.0;
        let name = config.name.clone();
        let ca = self.node.tls().trust.is_some();
        if let Some(problem) = check_peer(&config, Some(self.node.local_id()), ca)
            .into_iter()
            .next()
        {
            return Err(PoolError::InvalidPeer(problem.to_string()));
        }
        let Some(old) = self.peers.remove(&name) else {
            return Err(PoolError::UnknownPeer(name));
        };
        if old.shared.state() == PeerState::Draining {
            self.peers.insert(name.clone(), old);
            return Err(PoolError::Draining { peer: name });
        }
        self.node.registry.remove(&name);
        if let Err(e) = self.add(config, false, ctx) {
            // The new config cannot be registered (an id another peer
            // holds): the old actor goes on as it was.
            let _ = self.node.registry.insert(old.shared.clone());
            self.peers.insert(name, old);
            return Err(e);
        }
        let retire = Supervisor::drain(
            &old,
            codes::REMOVED,
            self.node.config.admin.drain_timeout,
            false,
        );
        ctx.spawn(
            async move {
                let _ = retire.await;
                tracing::info!(peer = %name, "replaced peer's old connections retired");
            }
            .into_actor(self),
        );
        Ok(())
    }
}

impl Handler<Inbound> for Supervisor {
    type Result = ResponseFuture<Result<(), CloseCode>>;

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) -> Self::Result {
        let refuse = |code| -> Self::Result { Box::pin(async move { Err(code) }) };
        if self.node.is_shutting_down() {
            return refuse(codes::GOING_AWAY);
        }
        let Some(who) = crate::transport::tls::remote_identity(&msg.conn) else {
            return refuse(codes::BAD_HELLO);
        };
        let known = self
            .node
            .registry
            .find(&who)
            .and_then(|p| self.peers.get(p.name()));
        let addr = match known {
            // A draining peer's actor refuses it (and counts that).
            Some(e) => e.addr.clone(),
            None if self.node.registry.accept_unknown() => {
                let config = PeerConfig::pinned(format!("u-{}", who.id.short()), who.id, None);
                let name = config.name.clone();
                match self.add(config, true, ctx) {
                    Ok(_) => self.peers[&name].addr.clone(),
                    Err(e) => {
                        tracing::warn!(peer = %who.id, error = %e, "cannot admit an unknown peer");
                        metrics::inbound_refused(InboundRefused::Unknown);
                        return refuse(codes::UNKNOWN_PEER);
                    }
                }
            }
            None => {
                metrics::inbound_refused(InboundRefused::Unknown);
                return refuse(codes::UNKNOWN_PEER);
            }
        };
        Box::pin(async move {
            addr.send(super::messages::Admit {
                conn: msg.conn,
                received: msg.received,
            })
            .await
            .unwrap_or(Err(codes::RESTART))
        })
    }
}

impl Handler<PeerDied> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: PeerDied, ctx: &mut Self::Context) {
        let Some(entry) = self.peers.get(&msg.name) else {
            return;
        };
        // An actor that dies during its drain is not replaced: the drain's
        // requester forgets the peer.
        if entry.generation != msg.generation || entry.shared.state() == PeerState::Draining {
            return;
        }
        let shared = entry.shared.clone();
        let generation = self.generation();
        metrics::actor_restart(ActorKind::Peer);
        tracing::error!(peer = %shared.name(), generation, "PeerActor stopped unexpectedly; restarting it");
        let addr = self.spawn_actor(&shared, generation, ctx);
        if let Some(entry) = self.peers.get_mut(&msg.name) {
            entry.addr = addr;
            entry.generation = generation;
        }
    }
}

impl Handler<DialPeer> for Supervisor {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: DialPeer, _ctx: &mut Self::Context) -> Self::Result {
        let entry = self
            .peers
            .get(&msg.name)
            .ok_or_else(|| PoolError::UnknownPeer(msg.name.clone()))?;
        entry.addr.do_send(Dial { reply: msg.reply });
        Ok(())
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        self.node.start_shutdown();
        let drains: Vec<_> = self
            .peers
            .values()
            .map(|e| Supervisor::drain(e, codes::GOING_AWAY, msg.timeout, true))
            .collect();
        let endpoint = self.node.endpoint.clone();
        Box::pin(
            async move {
                for drain in drains {
                    let _ = drain.await;
                }
                endpoint.close(
                    codes::GOING_AWAY.var_int(),
                    codes::GOING_AWAY.reason.as_bytes(),
                );
                // Let the close frames go out; bounded, a peer may be gone.
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| {
                let names: Vec<String> = act.peers.keys().cloned().collect();
                for name in names {
                    act.forget(&name);
                }
                ctx.stop()
            }),
        )
    }
}

#[cfg(feature = "test-util")]
mod hooks {
    use super::*;
    use crate::actors::inspect::CoreView;
    use crate::actors::messages::hooks::{InjectPanic, Inspect, InspectPeer, PanicPeer};

    impl Supervisor {
        fn actor(&self, name: &str) -> Result<Addr<PeerActor>, PoolError> {
            self.peers
                .get(name)
                .map(|e| e.addr.clone())
                .ok_or_else(|| PoolError::UnknownPeer(name.to_string()))
        }
    }

    impl Handler<PanicPeer> for Supervisor {
        type Result = Result<(), PoolError>;

        fn handle(&mut self, msg: PanicPeer, _ctx: &mut Self::Context) -> Self::Result {
            self.actor(&msg.0)?.do_send(InjectPanic);
            Ok(())
        }
    }

    impl Handler<InspectPeer> for Supervisor {
        type Result = ResponseFuture<Result<CoreView, PoolError>>;

        fn handle(&mut self, msg: InspectPeer, _ctx: &mut Self::Context) -> Self::Result {
            let actor = self.actor(&msg.0);
            Box::pin(async move { Ok(actor?.send(Inspect).await?) })
        }
    }
}
