//! Every message the actors exchange. Kept apart from the actors so that
//! the supervisor and the peer actors need not import each other: a peer
//! actor knows its supervisor only as the recipient of these messages.

use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::error::PoolError;
use super::status::ConnectionInfo;
use crate::config::PeerConfig;
use crate::pool::ConnKey;
use crate::transport::codes::CloseCode;
use crate::transport::hello;

/// Where `Pool::dial_peer` waits for its answer.
pub(crate) type DialWaiter = oneshot::Sender<Result<Vec<ConnectionInfo>, PoolError>>;

// To the supervisor.

/// Adds a peer at run time.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub(crate) struct AddPeer(pub(crate) PeerConfig);

/// Drains and removes a peer by name.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub(crate) struct RemovePeer(pub(crate) String);

/// An inbound connection passed TLS and its hello.
#[derive(Message)]
#[rtype(result = "Result<(), CloseCode>")]
pub(crate) struct Inbound {
    pub(crate) conn: quinn::Connection,
    /// The hello; the peer actor that admits it writes the answer.
    pub(crate) received: hello::Received,
}

/// Replaces a peer's configuration (a reload): an actor with the new
/// configuration takes the peer's name at once; the old one retires its
/// connections (no stream is lost) and stops.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub(crate) struct ReplacePeer(pub(crate) PeerConfig);

/// A `PeerActor` ended without being asked to.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PeerDied {
    pub(crate) name: String,
    pub(crate) generation: u64,
}

/// `Pool::dial_peer`, routed to the peer's actor.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub(crate) struct DialPeer {
    pub(crate) name: String,
    pub(crate) reply: DialWaiter,
}

/// Drain every peer, close every connection with "going away", stop.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown {
    pub(crate) timeout: Duration,
}

// To a peer actor.

/// An inbound connection passed TLS and sent its hello: admit it or not.
#[derive(Message)]
#[rtype(result = "Result<(), CloseCode>")]
pub(crate) struct Admit {
    pub(crate) conn: quinn::Connection,
    pub(crate) received: hello::Received,
}

/// Make sure the peer is being dialled and answer when it holds N
/// connections, runs out of attempts, or settles below N.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Dial {
    pub(crate) reply: DialWaiter,
}

/// Stop serving new streams, let open ones finish (or time out), close
/// every connection with `code`, then stop. `Err(Draining)` at once if the
/// peer drains already.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub(crate) struct Drain {
    pub(crate) code: CloseCode,
    pub(crate) timeout: Duration,
    /// Announce the drain (DRAINING: the whole node or this peer goes
    /// away), or retire each connection (RETIRE/DONE: another actor of the
    /// same peer takes over, so the peer must not stop routing here).
    pub(crate) announce: bool,
}

/// The peer retires a connection (RETIRE on its control stream): retire it
/// here too, so neither end opens streams on it and both say DONE.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PeerRetires {
    pub(crate) key: ConnKey,
}

/// The peer process behind a connection drains (DRAINING on its control
/// stream): route nothing new to it, and answer DRAINED.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PeerDrains {
    pub(crate) key: ConnKey,
}

/// Test hooks (feature `test-util`): make an actor panic, read its core.
#[cfg(feature = "test-util")]
pub(crate) mod hooks {
    use super::*;
    use crate::actors::inspect::CoreView;

    /// To the supervisor: panic the actor of this peer (by name).
    #[derive(Message)]
    #[rtype(result = "Result<(), PoolError>")]
    pub(crate) struct PanicPeer(pub(crate) String);

    /// To the supervisor: what the core of this peer's actor holds.
    #[derive(Message)]
    #[rtype(result = "Result<CoreView, PoolError>")]
    pub(crate) struct InspectPeer(pub(crate) String);

    /// To a peer actor: panic.
    #[derive(Message)]
    #[rtype(result = "()")]
    pub(crate) struct InjectPanic;

    /// To a peer actor: describe the core.
    #[derive(Message)]
    #[rtype(result = "CoreView")]
    pub(crate) struct Inspect;
}
