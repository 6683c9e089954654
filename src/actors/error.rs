//! `PoolError`: everything the pool's API can fail with. Messages name the
//! peer; sources are kept, so `{:#}`-style reporters show the whole chain.

use std::time::Duration;

use crate::metrics::labels::FailureReason;
use crate::transport::BindError;

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
    Start(#[source] BindError),
    #[error("cannot start the pool: the config is invalid: {0}")]
    Config(String),
    #[error("the pool has stopped")]
    Stopped,
}

impl PoolError {
    /// The `reason` label of this failure: the only place it is decided.
    pub fn reason(&self) -> FailureReason {
        match self {
            PoolError::UnknownPeer(_) => FailureReason::UnknownPeer,
            PoolError::PeerUnreachable { .. } => FailureReason::Unreachable,
            PoolError::NoHealthyConnection { .. } => FailureReason::NoConnection,
            PoolError::Timeout { .. } => FailureReason::Timeout,
            PoolError::Draining { .. } => FailureReason::Draining,
            PoolError::Connection { .. } => FailureReason::Connection,
            PoolError::PeerExists(_) | PoolError::InvalidPeer(_) => FailureReason::Invalid,
            PoolError::Start(_) | PoolError::Config(_) | PoolError::Stopped => {
                FailureReason::Stopped
            }
        }
    }
}

impl From<actix::MailboxError> for PoolError {
    fn from(_: actix::MailboxError) -> Self {
        PoolError::Stopped
    }
}
