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
use super::messages::{AddPeer, Dial, DialPeer, Drain, Inbound, PeerDied, RemovePeer, Shutdown};
use super::peer::{PeerActor, Supervision};
use super::shared::PeerShared;
use crate::config::{check_peer, PeerConfig};
use crate::identity::PeerId;
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
    peers: HashMap<PeerId, Entry>,
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
        if let Some(problem) = check_peer(&config, Some(self.node.local_id()))
            .into_iter()
            .next()
        {
            return Err(PoolError::InvalidPeer(problem.to_string()));
        }
        let pool = &self.node.config.pool;
        let shared = Arc::new(PeerShared::new(
            config,
            pool.max_connections_per_peer,
            pool.load_balancing_strategy,
            pool.stream_open_timeout,
            ephemeral,
        ));
        self.node.registry.insert(shared.clone())?;
        let addr = self.spawn_actor(&shared, 0, ctx);
        tracing::info!(peer = %shared.name(), id = %shared.id(), addr = ?shared.config.addr, ephemeral, "peer added");
        self.peers.insert(
            shared.id(),
            Entry {
                shared: shared.clone(),
                addr,
                generation: 0,
            },
        );
        Ok(shared)
    }

    /// Drains a peer: the future resolves once its actor has closed its
    /// connections (`Ok`), or at once if the actor drains already
    /// (`Err(Draining)`). The drain request is sent now, so drains asked for
    /// together run together.
    fn drain(
        entry: &Entry,
        code: CloseCode,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), PoolError>> {
        let request = entry.addr.send(Drain { code, timeout });
        async move {
            match request.await {
                Ok(result) => result,
                // The actor died during its drain: its connections are gone.
                Err(_) => Ok(()),
            }
        }
    }

    /// Forgets a peer whose drain finished.
    fn forget(&mut self, id: &PeerId) {
        if let Some(entry) = self.peers.remove(id) {
            self.node.registry.remove(id);
            tracing::info!(peer = %entry.shared.name(), "peer removed");
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
        let Some((id, entry)) = self.peers.iter().find(|(_, e)| e.shared.name() == msg.0) else {
            return Box::pin(fut::ready(Err(PoolError::UnknownPeer(msg.0))));
        };
        let id = *id;
        let drain = Supervisor::drain(entry, codes::REMOVED, self.node.config.admin.drain_timeout);
        Box::pin(
            drain
                .into_actor(self)
                .map(move |result, act, _| match result {
                    Ok(()) => {
                        act.forget(&id);
                        Ok(())
                    }
                    // Another removal of this peer is under way.
                    Err(_) => Err(PoolError::UnknownPeer(msg.0)),
                }),
        )
    }
}

impl Handler<Inbound> for Supervisor {
    type Result = ResponseFuture<Result<(), CloseCode>>;

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) -> Self::Result {
        let refuse = |code| -> Self::Result { Box::pin(async move { Err(code) }) };
        if self.node.is_shutting_down() {
            return refuse(codes::GOING_AWAY);
        }
        let id = msg.received.hello.id;
        let addr = match self.peers.get(&id) {
            // A draining peer's actor refuses it (and counts that).
            Some(e) => e.addr.clone(),
            None if self.node.registry.accept_unknown() => {
                let config = PeerConfig {
                    name: format!("u-{}", id.short()),
                    id,
                    addr: None,
                };
                match self.add(config, true, ctx) {
                    Ok(_) => self.peers[&id].addr.clone(),
                    Err(e) => {
                        tracing::warn!(peer = %id, error = %e, "cannot admit an unknown peer");
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
        let Some(entry) = self.peers.get(&msg.id) else {
            return;
        };
        // An actor that dies during its drain is not replaced: the drain's
        // requester forgets the peer.
        if entry.generation != msg.generation || entry.shared.state() == PeerState::Draining {
            return;
        }
        let generation = entry.generation + 1;
        let shared = entry.shared.clone();
        metrics::actor_restart(ActorKind::Peer);
        tracing::error!(peer = %shared.name(), generation, "PeerActor stopped unexpectedly; restarting it");
        let addr = self.spawn_actor(&shared, generation, ctx);
        if let Some(entry) = self.peers.get_mut(&msg.id) {
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
            .get(&msg.id)
            .ok_or_else(|| PoolError::UnknownPeer(msg.id.to_string()))?;
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
            .map(|e| Supervisor::drain(e, codes::GOING_AWAY, msg.timeout))
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
                let ids: Vec<PeerId> = act.peers.keys().copied().collect();
                for id in ids {
                    act.forget(&id);
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
        fn actor(&self, id: &PeerId) -> Result<Addr<PeerActor>, PoolError> {
            self.peers
                .get(id)
                .map(|e| e.addr.clone())
                .ok_or_else(|| PoolError::UnknownPeer(id.to_string()))
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
