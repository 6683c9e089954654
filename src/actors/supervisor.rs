//! The `Supervisor`: one per node. It starts a `PeerActor` per peer, adds and
//! removes peers at run time, routes inbound connections to their peer, and
//! restarts a `PeerActor` that dies (a panic or an unexpected stop) with the
//! same configuration.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::context::NodeContext;
use super::peer::{Admit, Dial, Drain, InjectPanic, PeerActor};
use super::shared::{ConnectionInfo, PeerShared};
use super::PoolError;
use crate::config::{check_peer_name, PeerConfig};
use crate::identity::PeerId;
use crate::metrics;
use crate::transport::codes::{self, CloseCode};
use crate::transport::hello::{self, ExchangeError, HelloError};
use crate::transport::tls;

struct Entry {
    shared: Arc<PeerShared>,
    addr: Addr<PeerActor>,
    generation: u64,
    removing: bool,
}

pub(crate) struct Supervisor {
    node: Arc<NodeContext>,
    peers: HashMap<PeerId, Entry>,
}

impl Supervisor {
    /// Creates the supervisor with the configured peers already registered,
    /// so no inbound handshake can arrive before they are known.
    pub fn start(node: Arc<NodeContext>) -> Result<Addr<Supervisor>, PoolError> {
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

    fn add(
        &mut self,
        config: PeerConfig,
        ephemeral: bool,
        ctx: &mut Context<Self>,
    ) -> Result<Arc<PeerShared>, PoolError> {
        check_peer_name(&config.name).map_err(|m| PoolError::InvalidPeer(format!("name: {m}")))?;
        if config.id == self.node.local_id() {
            return Err(PoolError::InvalidPeer(format!(
                "id {} is this node's own id",
                config.id
            )));
        }
        if config.addr.is_some_and(|a| a.port() == 0) {
            return Err(PoolError::InvalidPeer(
                "addr: port 0 cannot be dialled".into(),
            ));
        }
        let pool = &self.node.config.pool;
        let shared = Arc::new(PeerShared::new(
            config,
            pool.max_connections_per_peer,
            pool.load_balancing_strategy,
            pool.stream_open_timeout(),
            ephemeral,
        ));
        self.node.registry.insert(shared.clone())?;
        let addr = PeerActor::new(self.node.clone(), shared.clone(), ctx.address(), 0).start();
        tracing::info!(peer = %shared.name(), id = %shared.id(), addr = ?shared.config.addr, ephemeral, "peer added");
        self.peers.insert(
            shared.id(),
            Entry {
                shared: shared.clone(),
                addr,
                generation: 0,
                removing: false,
            },
        );
        Ok(shared)
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(metrics::TOUCH_INTERVAL, |act, _| {
            let ready = act.node.registry.ready();
            act.node
                .node_metrics
                .ready
                .set(if ready { 1.0 } else { 0.0 });
            act.node.node_metrics.touch();
        });
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub(crate) struct AddPeer(pub PeerConfig);

impl Handler<AddPeer> for Supervisor {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: AddPeer, ctx: &mut Self::Context) -> Self::Result {
        if self.node.is_shutting_down() {
            return Err(PoolError::Stopped);
        }
        self.add(msg.0, false, ctx).map(|_| ())
    }
}

/// Drains and removes a peer by name.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub(crate) struct RemovePeer(pub String);

impl Handler<RemovePeer> for Supervisor {
    type Result = ResponseActFuture<Self, Result<(), PoolError>>;

    fn handle(&mut self, msg: RemovePeer, _ctx: &mut Self::Context) -> Self::Result {
        let found = self
            .peers
            .iter_mut()
            .find(|(_, e)| e.shared.name() == msg.0 && !e.removing);
        let Some((id, entry)) = found else {
            return Box::pin(fut::ready(Err(PoolError::UnknownPeer(msg.0))));
        };
        let id = *id;
        entry.removing = true;
        let drain = entry.addr.send(Drain {
            code: codes::REMOVED,
            timeout: self.node.drain_timeout(),
        });
        Box::pin(drain.into_actor(self).map(move |_, act, _| {
            act.peers.remove(&id);
            act.node.registry.remove(&id);
            tracing::info!(peer = %msg.0, "peer removed");
            Ok(())
        }))
    }
}

/// An inbound connection passed TLS and its hello.
#[derive(Message)]
#[rtype(result = "Result<(), CloseCode>")]
pub(crate) struct Inbound {
    pub conn: quinn::Connection,
    /// The hello; the peer actor that admits it writes the answer.
    pub received: hello::Received,
}

impl Handler<Inbound> for Supervisor {
    type Result = ResponseFuture<Result<(), CloseCode>>;

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) -> Self::Result {
        if self.node.is_shutting_down() {
            return Box::pin(async { Err(codes::GOING_AWAY) });
        }
        let id = msg.received.hello.id;
        let addr = match self.peers.get(&id) {
            Some(e) if e.removing => {
                metrics::inbound_refused("draining");
                return Box::pin(async { Err(codes::DRAINING) });
            }
            Some(e) => e.addr.clone(),
            None if self.node.registry.accept_unknown() => {
                let name = format!("u-{}", id.short());
                let config = PeerConfig {
                    name,
                    id,
                    addr: None,
                };
                match self.add(config, true, ctx) {
                    Ok(_) => self.peers[&id].addr.clone(),
                    Err(e) => {
                        tracing::warn!(peer = %id, error = %e, "cannot admit an unknown peer");
                        metrics::inbound_refused("unknown");
                        return Box::pin(async { Err(codes::UNKNOWN_PEER) });
                    }
                }
            }
            None => {
                metrics::inbound_refused("unknown");
                return Box::pin(async { Err(codes::UNKNOWN_PEER) });
            }
        };
        Box::pin(async move {
            addr.send(Admit {
                conn: msg.conn,
                received: msg.received,
            })
            .await
            .unwrap_or(Err(codes::RESTART))
        })
    }
}

/// A `PeerActor` ended without being asked to.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PeerDied {
    pub id: PeerId,
    pub generation: u64,
}

impl Handler<PeerDied> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: PeerDied, ctx: &mut Self::Context) {
        let Some(entry) = self.peers.get_mut(&msg.id) else {
            return;
        };
        if entry.generation != msg.generation || entry.removing {
            return;
        }
        entry.generation += 1;
        metrics::actor_restart("peer");
        tracing::error!(peer = %entry.shared.name(), generation = entry.generation, "PeerActor stopped unexpectedly; restarting it");
        entry.addr = PeerActor::new(
            self.node.clone(),
            entry.shared.clone(),
            ctx.address(),
            entry.generation,
        )
        .start();
    }
}

/// `Pool::dial_peer`, routed to the peer's actor.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub(crate) struct DialPeer {
    pub id: PeerId,
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<ConnectionInfo>, PoolError>>,
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

/// Test hook: panic the actor of `id`.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub(crate) struct PanicPeer(pub PeerId);

impl Handler<PanicPeer> for Supervisor {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: PanicPeer, _ctx: &mut Self::Context) -> Self::Result {
        let entry = self
            .peers
            .get(&msg.0)
            .ok_or_else(|| PoolError::UnknownPeer(msg.0.to_string()))?;
        entry.addr.do_send(InjectPanic);
        Ok(())
    }
}

/// Drain every peer, close every connection with "going away", stop.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown {
    pub timeout: Duration,
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        self.node.shutting_down.store(true, Ordering::Release);
        let drains: Vec<_> = self
            .peers
            .values_mut()
            .map(|e| {
                e.removing = true;
                e.addr.send(Drain {
                    code: codes::GOING_AWAY,
                    timeout: msg.timeout,
                })
            })
            .collect();
        let endpoint = self.node.endpoint.clone();
        Box::pin(
            async move {
                for d in drains {
                    let _ = d.await;
                }
                endpoint.close(
                    codes::GOING_AWAY.var_int(),
                    codes::GOING_AWAY.reason.as_bytes(),
                );
                // Let the close frames go out; bounded, a peer may be gone.
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        )
    }
}

/// Accepts inbound connections until the endpoint closes.
pub(crate) async fn accept_loop(node: Arc<NodeContext>, supervisor: Addr<Supervisor>) {
    while let Some(incoming) = node.endpoint.accept().await {
        if node.is_shutting_down() {
            incoming.refuse();
            continue;
        }
        actix::spawn(handle_incoming(incoming, node.clone(), supervisor.clone()));
    }
}

/// TLS handshake, hello, admission by the peer's actor, answer.
async fn handle_incoming(
    incoming: quinn::Incoming,
    node: Arc<NodeContext>,
    supervisor: Addr<Supervisor>,
) {
    let timeout = node.config.pool.connection_timeout();
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            if let Some(reason) = tls::uncounted_handshake_failure(&e) {
                metrics::handshake_failure(reason);
            }
            tracing::debug!(%remote, error = %e, "inbound handshake failed");
            return;
        }
        Err(_) => {
            metrics::handshake_failure("timeout");
            tracing::debug!(%remote, "inbound handshake timed out");
            return;
        }
    };
    let Some(id) = tls::remote_id(&conn) else {
        codes::BAD_HELLO.close(&conn);
        return;
    };
    let received = match tokio::time::timeout(timeout, hello::accept(&conn)).await {
        Ok(Ok(r)) => r,
        Ok(Err(ExchangeError::Hello(HelloError::Version { theirs }))) => {
            metrics::handshake_failure("version");
            tracing::warn!(peer = %id, %remote, theirs, ours = hello::VERSION, "peer speaks another hello version; closing");
            codes::VERSION_MISMATCH.close(&conn);
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %id, %remote, error = %e, "bad hello");
            codes::BAD_HELLO.close(&conn);
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %id, %remote, "no hello in time");
            codes::BAD_HELLO.close(&conn);
            return;
        }
    };
    if received.hello.id != id {
        metrics::handshake_failure("wrong_id");
        tracing::warn!(peer = %id, claimed = %received.hello.id, "hello names another identity than the certificate");
        codes::BAD_HELLO.close(&conn);
        return;
    }
    // Admitted: the peer actor answers on the control stream it keeps.
    match supervisor
        .send(Inbound {
            conn: conn.clone(),
            received,
        })
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(code)) => code.close(&conn),
        Err(_) => codes::GOING_AWAY.close(&conn),
    }
}
