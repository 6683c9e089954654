//! A peer's state: a pure function of the facts [`super::PeerCore`] holds,
//! never stored beside them.
//!
//! | state         | derived from                                                    | streams  |
//! |---------------|-----------------------------------------------------------------|----------|
//! | `draining`    | the peer is being removed or the node shuts down                 | refused  |
//! | `healthy`     | at least N usable connections                                    | served   |
//! | `degraded`    | 1 to N-1 usable connections                                      | served   |
//! | `unreachable` | no connection, a dial ran out of attempts, no other dial pending | fail fast|
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

/// What a peer's state is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StateFacts {
    pub(crate) draining: bool,
    /// Connections that take new streams (not being retired).
    pub(crate) usable: usize,
    /// N.
    pub(crate) target: usize,
    /// No connection at all, a dial ran out of attempts and no dial with
    /// attempts left is under way or scheduled.
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
        } else if f.usable >= f.target.max(1) {
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
                for target in 1..=4 {
                    for usable in 0..=target + 1 {
                        let f = StateFacts {
                            draining,
                            usable,
                            target,
                            unreachable,
                        };
                        let expected = match () {
                            _ if draining => PeerState::Draining,
                            _ if usable >= target => PeerState::Healthy,
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
    }
}
