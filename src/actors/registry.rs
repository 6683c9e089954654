//! The `Registry`: every peer of a node, by id and by name. The TLS
//! verifier reads it on every inbound handshake to decide who may connect;
//! the `Pool` handle reads it to find a peer's published table.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::error::PoolError;
use super::shared::PeerShared;
use crate::identity::PeerId;
use crate::metrics::labels::HandshakeReason;
use crate::transport::tls::InboundPolicy;

#[derive(Debug)]
pub(crate) struct Registry {
    inner: RwLock<Inner>,
    accept_unknown: bool,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<PeerId, Arc<PeerShared>>,
    by_name: HashMap<String, PeerId>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("peers", &self.by_name.len())
            .finish()
    }
}

impl Registry {
    pub(crate) fn new(accept_unknown: bool) -> Registry {
        Registry {
            inner: RwLock::new(Inner::default()),
            accept_unknown,
        }
    }

    // Every writer finishes its update before anything that could panic, so
    // a poisoned lock is used as is.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn accept_unknown(&self) -> bool {
        self.accept_unknown
    }

    pub(crate) fn get(&self, id: &PeerId) -> Option<Arc<PeerShared>> {
        self.read().by_id.get(id).cloned()
    }

    pub(crate) fn by_name(&self, name: &str) -> Option<Arc<PeerShared>> {
        let inner = self.read();
        inner
            .by_name
            .get(name)
            .and_then(|id| inner.by_id.get(id))
            .cloned()
    }

    /// Adds a peer unless its name or id is taken.
    pub(crate) fn insert(&self, peer: Arc<PeerShared>) -> Result<(), PoolError> {
        let mut inner = self.write();
        if inner.by_name.contains_key(peer.name()) {
            return Err(PoolError::PeerExists(format!(
                "a peer named {:?} exists",
                peer.name()
            )));
        }
        if inner.by_id.contains_key(&peer.id()) {
            return Err(PoolError::PeerExists(format!(
                "a peer with id {} exists",
                peer.id()
            )));
        }
        inner.by_name.insert(peer.name().to_string(), peer.id());
        inner.by_id.insert(peer.id(), peer);
        Ok(())
    }

    pub(crate) fn remove(&self, id: &PeerId) {
        let mut inner = self.write();
        if let Some(peer) = inner.by_id.remove(id) {
            inner.by_name.remove(peer.name());
        }
    }

    /// The names of the peers with an address but no usable connection:
    /// the node is ready (`/readyz`, `peerpool_ready`) when there are none.
    pub(crate) fn not_ready(&self) -> Vec<String> {
        self.all()
            .iter()
            .filter(|p| p.config.addr.is_some() && !p.has_usable())
            .map(|p| p.name().to_string())
            .collect()
    }

    /// Every peer, sorted by name.
    pub(crate) fn all(&self) -> Vec<Arc<PeerShared>> {
        let mut all: Vec<_> = self.read().by_id.values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }
}

impl InboundPolicy for Registry {
    fn check(&self, id: &PeerId) -> Result<(), HandshakeReason> {
        if self.accept_unknown || self.read().by_id.contains_key(id) {
            Ok(())
        } else {
            Err(HandshakeReason::UnknownPeer)
        }
    }
}
