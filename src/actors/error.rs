use std::time::Duration;

/// Everything the pool's API can fail with. Messages name the peer.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("unknown peer {0:?}: not configured on this node")]
    UnknownPeer(String),
    #[error("peer {peer:?} is unreachable: its last dial ran out of attempts; next probe in {:.1}s", retry_in.as_secs_f64())]
    PeerUnreachable { peer: String, retry_in: Duration },
    #[error("peer {peer:?} has no healthy connection")]
    NoHealthyConnection { peer: String },
    #[error("opening a stream to peer {peer:?} timed out after {after:?} (every stream slot of the peer is in use?)")]
    Timeout { peer: String, after: Duration },
    #[error("peer {peer:?} is draining: no new streams")]
    Draining { peer: String },
    #[error("connection to peer {peer:?} failed: {source}")]
    Connection {
        peer: String,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("{0}")]
    PeerExists(String),
    #[error("invalid peer: {0}")]
    InvalidPeer(String),
    #[error("cannot start the pool: {0}")]
    Start(String),
    #[error("the pool has stopped")]
    Stopped,
}

impl PoolError {
    /// The `reason` label for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            PoolError::UnknownPeer(_) => "unknown_peer",
            PoolError::PeerUnreachable { .. } => "unreachable",
            PoolError::NoHealthyConnection { .. } => "no_connection",
            PoolError::Timeout { .. } => "timeout",
            PoolError::Draining { .. } => "draining",
            PoolError::Connection { .. } => "connection",
            PoolError::PeerExists(_) | PoolError::InvalidPeer(_) => "invalid",
            PoolError::Start(_) | PoolError::Stopped => "stopped",
        }
    }
}

impl From<actix::MailboxError> for PoolError {
    fn from(_: actix::MailboxError) -> Self {
        PoolError::Stopped
    }
}
