//! A peer's state: a pure function of the facts [`super::PeerCore`] holds,
//! never stored beside them.
//!
//! | state         | derived from                                                    | streams  |
//! |---------------|-----------------------------------------------------------------|----------|
//! | `draining`    | the peer is being removed or the node shuts down                 | refused  |
//! | `healthy`     | every endpoint taking streams holds N usable connections         | served   |
//! | `degraded`    | some usable connection, but not N on every endpoint              | served   |
//! | `unreachable` | no connection, every dial ran out of attempts, none pending      | fail fast|
//! | `connecting`  | anything else: no usable connection yet, dialling or waiting     | wait     |

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    Connecting,
    Healthy,
    Degraded,
    Unreachable,
    Draining,
}

/// What a peer's state is derived from (over all its endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StateFacts {
    pub(crate) draining: bool,
    /// Connections that take new streams (not being retired).
    pub(crate) usable: usize,
    /// Every endpoint that takes new streams holds N usable connections,
    /// and there is at least one.
    pub(crate) all_full: bool,
    /// No connection at all, and every endpoint this node dials ran out of
    /// attempts with no dial with attempts left under way or scheduled.
    pub(crate) unreachable: bool,
}

impl PeerState {
    pub const ALL: [PeerState; 5] = [
        PeerState::Connecting,
        PeerState::Healthy,
        PeerState::Degraded,
        PeerState::Unreachable,
        PeerState::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Connecting => "connecting",
            PeerState::Healthy => "healthy",
            PeerState::Degraded => "degraded",
            PeerState::Unreachable => "unreachable",
            PeerState::Draining => "draining",
        }
    }

    /// The state these facts mean.
    pub(crate) fn derive(f: StateFacts) -> PeerState {
        if f.draining {
            PeerState::Draining
        } else if f.all_full && f.usable > 0 {
            PeerState::Healthy
        } else if f.usable > 0 {
            PeerState::Degraded
        } else if f.unreachable {
            PeerState::Unreachable
        } else {
            PeerState::Connecting
        }
    }
}

/// One endpoint of a peer, as `/peers` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// No usable connection yet; dialling or waiting to be dialled.
    Connecting,
    /// Holds N usable connections.
    Healthy,
    /// Holds 1 to N-1 usable connections.
    Degraded,
    /// No connection, its dial ran out of attempts; probing.
    Unreachable,
    /// Taken out of the balancing for a while by outlier detection.
    Ejected,
    /// Gone from the peer's address set, or announced its drain: finishing
    /// what runs on it, taking nothing new.
    Draining,
}

impl EndpointState {
    pub const ALL: [EndpointState; 6] = [
        EndpointState::Connecting,
        EndpointState::Healthy,
        EndpointState::Degraded,
        EndpointState::Unreachable,
        EndpointState::Ejected,
        EndpointState::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Connecting => "connecting",
            EndpointState::Healthy => "healthy",
            EndpointState::Degraded => "degraded",
            EndpointState::Unreachable => "unreachable",
            EndpointState::Ejected => "ejected",
            EndpointState::Draining => "draining",
        }
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_exactly_the_facts_that_define_it() {
        for draining in [false, true] {
            for unreachable in [false, true] {
                for all_full in [false, true] {
                    for usable in 0..=3 {
                        let f = StateFacts {
                            draining,
                            usable,
                            all_full,
                            unreachable,
                        };
                        let expected = match () {
                            _ if draining => PeerState::Draining,
                            _ if all_full && usable > 0 => PeerState::Healthy,
                            _ if usable > 0 => PeerState::Degraded,
                            _ if unreachable => PeerState::Unreachable,
                            _ => PeerState::Connecting,
                        };
                        assert_eq!(PeerState::derive(f), expected, "{f:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn labels_are_distinct_and_round_trip_through_serde() {
        for (i, a) in PeerState::ALL.iter().enumerate() {
            let json = serde_json::to_string(a).unwrap();
            assert_eq!(json, format!("\"{}\"", a.as_str()));
            assert_eq!(serde_json::from_str::<PeerState>(&json).unwrap(), *a);
            for b in &PeerState::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
        for (i, a) in EndpointState::ALL.iter().enumerate() {
            let json = serde_json::to_string(a).unwrap();
            assert_eq!(json, format!("\"{}\"", a.as_str()));
            assert_eq!(serde_json::from_str::<EndpointState>(&json).unwrap(), *a);
            for b in &EndpointState::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
    }
}
