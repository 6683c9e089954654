//! The `Registry`: every peer of a node, by name and by pinned id. The TLS
//! verifier asks it on every inbound handshake whether the presenter may
//! connect; admission asks it which peer an admitted connection is; the
//! `Pool` handle reads it to find a peer's published table.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::error::PoolError;
use super::shared::PeerShared;
use crate::identity::{PeerId, Verified};
use crate::metrics::labels::HandshakeReason;
use crate::transport::tls::InboundPolicy;

#[derive(Debug)]
pub(crate) struct Registry {
    inner: RwLock<Inner>,
    accept_unknown: bool,
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, Arc<PeerShared>>,
    /// Pinned ids, to the name of their peer.
    by_id: HashMap<PeerId, String>,
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

    /// The peer pinned to `id`.
    pub(crate) fn get(&self, id: &PeerId) -> Option<Arc<PeerShared>> {
        let inner = self.read();
        inner
            .by_id
            .get(id)
            .and_then(|name| inner.by_name.get(name))
            .cloned()
    }

    pub(crate) fn by_name(&self, name: &str) -> Option<Arc<PeerShared>> {
        self.read().by_name.get(name).cloned()
    }

    /// The peer a verified certificate belongs to: the one pinned to its id,
    /// else (a CA-issued certificate) the unpinned peer of its name.
    pub(crate) fn find(&self, who: &Verified) -> Option<Arc<PeerShared>> {
        if let Some(p) = self.get(&who.id) {
            return Some(p);
        }
        let name = who.name.as_deref()?;
        self.by_name(name)
            .filter(|p| p.config.id.is_none() && p.config.ids.is_empty())
    }

    /// Adds a peer unless its name or one of its ids is taken.
    pub(crate) fn insert(&self, peer: Arc<PeerShared>) -> Result<(), PoolError> {
        let mut inner = self.write();
        if inner.by_name.contains_key(peer.name()) {
            return Err(PoolError::PeerExists(format!(
                "a peer named {:?} exists",
                peer.name()
            )));
        }
        let ids = peer.config.pinned_ids();
        if let Some(id) = ids.iter().find(|id| inner.by_id.contains_key(id)) {
            return Err(PoolError::PeerExists(format!("a peer with id {id} exists")));
        }
        for id in ids {
            inner.by_id.insert(id, peer.name().to_string());
        }
        inner.by_name.insert(peer.name().to_string(), peer);
        Ok(())
    }

    pub(crate) fn remove(&self, name: &str) {
        let mut inner = self.write();
        if let Some(peer) = inner.by_name.remove(name) {
            for id in peer.config.pinned_ids() {
                inner.by_id.remove(&id);
            }
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
        let mut all: Vec<_> = self.read().by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }
}

impl InboundPolicy for Registry {
    fn check(&self, who: &Verified) -> Result<(), HandshakeReason> {
        if self.accept_unknown || self.find(who).is_some() {
            Ok(())
        } else {
            Err(HandshakeReason::UnknownPeer)
        }
    }
}
