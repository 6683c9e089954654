//! [`Pool`]: the public, cheap-to-clone handle to a node's supervisor and
//! the peers' published tables. Reads go to the tables; changes go to the
//! supervisor as messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::admission::accept_loop;
use super::context::{NodeContext, TlsState};
use super::error::PoolError;
use super::messages::{AddPeer, DialPeer, RemovePeer, ReplacePeer, Shutdown};
use super::registry::Registry;
use super::shared::PeerShared;
use super::status::{ConnectionInfo, PeerStatus};
use super::streams::{PooledStream, StreamHandler};
use super::supervisor::Supervisor;
use crate::config::{Config, PeerConfig};
use crate::identity::ca::Trust;
use crate::identity::{Identity, PeerId};
use crate::pool::PeerState;
use crate::transport;

/// A handle to a node's pool: cheap to clone, usable from any thread.
///
/// The API mirrors py-libp2p's multiple-connections-per-peer swarm
/// (`dial_peer`, `get_connections`, `get_connections_map`, `get_connection`,
/// `connections_legacy`) and adds stream opening and peer management.
#[derive(Clone)]
pub struct Pool {
    node: Arc<NodeContext>,
    supervisor: Addr<Supervisor>,
}

impl Pool {
    /// Binds the QUIC endpoint on `config.node.listen`, starts the
    /// supervisor and one `PeerActor` per configured peer, and accepts
    /// inbound connections. Streams peers open go to `handler`.
    ///
    /// Call it on a long-lived actix arbiter (inside `System::run` or
    /// `#[actix_rt::main]`): the endpoint lives and dies with it.
    pub fn start(
        config: Config,
        identity: Identity,
        handler: Arc<dyn StreamHandler>,
    ) -> Result<Pool, PoolError> {
        let socket = transport::bind_socket(&config.node).map_err(PoolError::Start)?;
        Pool::start_with_socket(config, identity, handler, socket)
    }

    /// Like [`Pool::start`] on a UDP socket the caller bound (`node.listen`
    /// is then only a label).
    pub fn start_with_socket(
        config: Config,
        identity: Identity,
        handler: Arc<dyn StreamHandler>,
        socket: std::net::UdpSocket,
    ) -> Result<Pool, PoolError> {
        Pool::start_trusting(config, identity, None, handler, socket)
    }

    /// Like [`Pool::start_with_socket`], also accepting peers by the name in
    /// a certificate of a CA in `trust` (`[trust] ca`).
    pub fn start_trusting(
        config: Config,
        identity: Identity,
        trust: Option<Trust>,
        handler: Arc<dyn StreamHandler>,
        socket: std::net::UdpSocket,
    ) -> Result<Pool, PoolError> {
        config.validate_pool().map_err(|problems| {
            let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
            PoolError::Config(all.join("; "))
        })?;
        let trust = trust.map(Arc::new);
        let registry = Arc::new(Registry::new(config.node.accept_unknown_peers));
        let shared = transport::SocketShared::new(config.handshake.gate_rules());
        let endpoint = transport::endpoint_trusting(
            &config.node,
            &identity,
            registry.clone(),
            trust.clone(),
            Some(shared.clone()),
            socket,
        )
        .map_err(PoolError::Start)?;
        let local_addr = endpoint.local_addr().map_err(|source| {
            PoolError::Start(transport::BindError::Socket {
                addr: config.node.listen,
                source,
            })
        })?;
        let node = Arc::new(NodeContext::new(
            config,
            TlsState { identity, trust },
            endpoint,
            local_addr,
            registry,
            shared,
            handler,
        ));
        let supervisor = Supervisor::start(node.clone())?;
        tokio::spawn(accept_loop(node.clone(), supervisor.clone().recipient()));
        tracing::info!(id = %node.local_id(), listen = %local_addr, "pool started");
        Ok(Pool { node, supervisor })
    }

    pub fn local_id(&self) -> PeerId {
        self.node.local_id()
    }

    /// The UDP address the endpoint is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.node.local_addr
    }

    /// Whether the supervisor still runs (`GET /healthz`).
    pub fn is_running(&self) -> bool {
        self.supervisor.connected()
    }

    pub fn config(&self) -> &Config {
        &self.node.config
    }

    fn shared(&self, id: &PeerId) -> Result<Arc<PeerShared>, PoolError> {
        self.node
            .registry
            .get(id)
            .ok_or_else(|| PoolError::UnknownPeer(id.to_string()))
    }

    fn shared_by_name(&self, name: &str) -> Result<Arc<PeerShared>, PoolError> {
        self.node
            .registry
            .by_name(name)
            .ok_or_else(|| PoolError::UnknownPeer(name.to_string()))
    }

    /// Makes sure the peer is being dialled up to N connections and returns
    /// them once it holds N, or fewer when no more will come soon. An
    /// unreachable peer gets a fresh dial (all its attempts). Waits at most
    /// what the retry rules allow: every attempt's `connection_timeout` plus
    /// the backoffs between them.
    pub async fn dial_peer(&self, id: &PeerId) -> Result<Vec<ConnectionInfo>, PoolError> {
        let shared = self.shared(id)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.supervisor
            .send(DialPeer {
                name: shared.name().to_string(),
                reply: tx,
            })
            .await??;
        let bound = self.dial_bound(shared.config.addr.is_some());
        match tokio::time::timeout(bound, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(PoolError::Stopped),
            Err(_) => {
                let conns = shared.connections();
                if conns.iter().any(|c| c.usable) {
                    Ok(conns)
                } else {
                    Err(PoolError::NoHealthyConnection {
                        peer: shared.name().to_string(),
                    })
                }
            }
        }
    }

    fn dial_bound(&self, dialable: bool) -> Duration {
        let per_attempt = self.node.config.pool.connection_timeout;
        if !dialable {
            return per_attempt;
        }
        let policy = &self.node.retry;
        let backoffs: Duration = (1..=policy.max_retries)
            .map(|k| policy.base_delay(k).mul_f64(1.0 + policy.jitter))
            .sum();
        per_attempt * policy.attempts_per_dial() + backoffs + Duration::from_secs(1)
    }

    /// Connections to one peer, or to all peers.
    pub fn get_connections(&self, peer: Option<&PeerId>) -> Vec<ConnectionInfo> {
        match peer {
            Some(id) => self.shared(id).map(|s| s.connections()).unwrap_or_default(),
            None => self
                .node
                .registry
                .all()
                .iter()
                .flat_map(|s| s.connections())
                .collect(),
        }
    }

    /// Every peer's connections, by peer id.
    pub fn get_connections_map(&self) -> HashMap<PeerId, Vec<ConnectionInfo>> {
        self.node
            .registry
            .all()
            .iter()
            .filter_map(|s| Some((s.config.pinned_ids().first().copied()?, s.connections())))
            .collect()
    }

    /// The first usable connection to a peer.
    pub fn get_connection(&self, peer: &PeerId) -> Option<ConnectionInfo> {
        self.shared(peer)
            .ok()?
            .connections()
            .into_iter()
            .find(|c| c.usable)
    }

    /// The first usable connection of every peer that has one (the 1:1 view
    /// of code written before multiple connections per peer).
    pub fn connections_legacy(&self) -> HashMap<PeerId, ConnectionInfo> {
        self.node
            .registry
            .all()
            .iter()
            .filter_map(|s| {
                let first = s.connections().into_iter().find(|c| c.usable)?;
                Some((first.peer_id, first))
            })
            .collect()
    }

    /// Opens a bidi stream to a peer over the connection the strategy picks.
    pub async fn open_stream(&self, peer: &PeerId) -> Result<PooledStream, PoolError> {
        self.shared(peer)?.open_stream(&[]).await
    }

    /// Like [`Pool::open_stream`], by the peer's configured name.
    pub async fn open_stream_to(&self, name: &str) -> Result<PooledStream, PoolError> {
        self.shared_by_name(name)?.open_stream(&[]).await
    }

    /// Like [`Pool::open_stream_to`], avoiding the endpoints in `exclude`
    /// while another endpoint has a usable connection (a retry elsewhere
    /// after a stream failed there).
    pub async fn open_stream_avoiding(
        &self,
        name: &str,
        exclude: &[SocketAddr],
    ) -> Result<PooledStream, PoolError> {
        self.shared_by_name(name)?.open_stream(exclude).await
    }

    /// Every peer's status, sorted by name.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.node
            .registry
            .all()
            .iter()
            .map(|s| s.status())
            .collect()
    }

    /// One peer's status, by name.
    pub fn peer(&self, name: &str) -> Option<PeerStatus> {
        self.node.registry.by_name(name).map(|s| s.status())
    }

    /// The peers that have an address but no usable connection: the node is
    /// ready (`GET /readyz`) when this is empty.
    pub fn not_ready(&self) -> Vec<String> {
        self.node.registry.not_ready()
    }

    /// The state of a peer, by id.
    pub fn peer_state(&self, id: &PeerId) -> Option<PeerState> {
        self.node.registry.get(id).map(|s| s.state())
    }

    /// Adds a peer at run time; it is dialled at once if it has an address.
    pub async fn add_peer(&self, peer: PeerConfig) -> Result<(), PoolError> {
        self.supervisor.send(AddPeer(peer)).await??;
        self.forgive_sources("a peer was added");
        Ok(())
    }

    /// Gives a peer a new configuration (a reload): an actor with it takes
    /// the peer at once; the old one's connections are retired without
    /// losing a stream.
    pub async fn replace_peer(&self, peer: PeerConfig) -> Result<(), PoolError> {
        self.supervisor.send(ReplacePeer(peer)).await??;
        self.forgive_sources("a peer was changed");
        Ok(())
    }

    /// Who may connect changed: sources that failed against the old rules
    /// (a peer whose new id was not known yet) are not kept out for up to
    /// an hour by their cooling-off period.
    fn forgive_sources(&self, why: &str) {
        let forgiven = self.forgive_all_sources();
        if forgiven > 0 {
            tracing::info!(
                forgiven,
                "{why}: sources cooling off after failed handshakes may try again"
            );
        }
    }

    /// The source addresses whose Initials are ignored now, in address
    /// order (`handshake.failures_per_source`).
    pub fn cooling_sources(&self) -> Vec<super::status::CoolingSource> {
        self.node
            .gate
            .cooling_off()
            .into_iter()
            .map(|(c, left)| super::status::CoolingSource {
                source: c.source,
                remaining_seconds: left.as_secs_f64(),
                periods: c.periods,
            })
            .collect()
    }

    /// Lets every source try again at once and forgets their failures
    /// (`DELETE /gate`). Returns how many were cooling off.
    pub fn forgive_all_sources(&self) -> usize {
        self.node.gate.forgive_all()
    }

    /// The identity and trust new connections use now.
    pub(crate) fn tls_state(&self) -> Arc<TlsState> {
        self.node.tls()
    }

    /// From now on new connections (both ways) use this identity and trust;
    /// connections up now keep theirs. The stateless-reset key stays
    /// derived from the key the node started with.
    pub fn set_tls(&self, identity: Identity, trust: Option<Trust>) -> Result<(), PoolError> {
        let trust = trust.map(Arc::new);
        let server = transport::server_config(
            &self.node.config.node,
            &identity,
            self.node.registry.clone(),
            trust.clone(),
        )
        .map_err(|e| PoolError::Start(transport::BindError::Tls(e)))?;
        self.node.endpoint.set_server_config(Some(server));
        let trust_changed = self.node.tls().trust != trust;
        self.node.set_tls(TlsState { identity, trust });
        if trust_changed {
            self.forgive_sources("[trust] changed");
        }
        Ok(())
    }

    /// Drains a peer (no new streams; open ones finish or hit
    /// `admin.drain_timeout`), closes its connections, and removes it.
    pub async fn remove_peer(&self, name: &str) -> Result<(), PoolError> {
        self.supervisor.send(RemovePeer(name.to_string())).await?
    }

    /// Drains every peer within `timeout`, closes every connection with
    /// "going away" so peers redial without waiting for an idle timeout,
    /// and stops the pool.
    pub async fn shutdown(&self, timeout: Duration) {
        let _ = self.supervisor.send(Shutdown { timeout }).await;
    }

    /// Closes every connection to a peer (code "closed by operator"); the
    /// pool redials them by its retry rules. For operators and the demo.
    pub fn close_connections(&self, peer: &PeerId) -> Result<usize, PoolError> {
        let shared = self.shared(peer)?;
        let conns = shared.connections();
        for c in &conns {
            self.close_connection(c.number);
        }
        Ok(conns.len())
    }

    /// Closes one connection by its number (code "closed by operator").
    /// Returns whether it existed.
    pub fn close_connection(&self, number: u64) -> bool {
        for shared in self.node.registry.all() {
            if let Some(meta) = shared.meta(number) {
                crate::transport::codes::CLOSED_BY_OPERATOR.close(&meta.conn);
                return true;
            }
        }
        false
    }

    /// Test hook: panics the `PeerActor` of `peer` to exercise the supervisor.
    #[cfg(feature = "test-util")]
    pub async fn inject_actor_panic(&self, peer: &PeerId) -> Result<(), PoolError> {
        use super::messages::hooks::PanicPeer;
        let name = self.shared(peer)?.name().to_string();
        self.supervisor.send(PanicPeer(name)).await?
    }

    /// Test hook: what the `PeerCore` of `peer` holds, read by its actor.
    #[cfg(feature = "test-util")]
    pub async fn inspect_core(&self, peer: &PeerId) -> Result<super::inspect::CoreView, PoolError> {
        use super::messages::hooks::InspectPeer;
        let name = self.shared(peer)?.name().to_string();
        self.supervisor.send(InspectPeer(name)).await?
    }
}
