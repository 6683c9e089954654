//! The per-peer state machine, a pure function of events.
//!
//! | state         | meaning                                                        | streams  |
//! |---------------|----------------------------------------------------------------|----------|
//! | `connecting`  | no connection yet, dialling (or waiting to be dialled)         | wait     |
//! | `healthy`     | holds its target of N connections                              | served   |
//! | `degraded`    | holds at least one connection but fewer than N                 | served   |
//! | `unreachable` | no connection, and the last dial ran out of attempts; probing  | fail fast|
//! | `draining`    | being removed or shut down: no new streams, existing finish     | refused  |

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    Connecting,
    Healthy,
    Degraded,
    Unreachable,
    Draining,
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

    /// Whether streams can be opened in this state right now.
    pub fn serves_streams(self) -> bool {
        matches!(self, PeerState::Healthy | PeerState::Degraded)
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// A connection passed its hello and can carry streams.
    ConnectionUp,
    /// A usable connection closed, failed, or was retired.
    ConnectionDown,
    /// A dial used its last attempt without success.
    DialExhausted,
    /// A fresh dial was asked for (`dial_peer`): an unreachable peer is
    /// connecting again.
    Redial,
    /// The peer is being removed or the node shuts down.
    Drain,
}

/// A peer's state together with the counts that decide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStateMachine {
    state: PeerState,
    live: usize,
    target: usize,
}

impl PeerStateMachine {
    pub fn new(target: usize) -> PeerStateMachine {
        PeerStateMachine {
            state: PeerState::Connecting,
            live: 0,
            target: target.max(1),
        }
    }

    pub fn state(&self) -> PeerState {
        self.state
    }

    pub fn live(&self) -> usize {
        self.live
    }

    pub fn target(&self) -> usize {
        self.target
    }

    /// Applies `event`; returns `Some((from, to))` when the state changed.
    pub fn on(&mut self, event: PeerEvent) -> Option<(PeerState, PeerState)> {
        let from = self.state;
        match event {
            PeerEvent::ConnectionUp => self.live += 1,
            PeerEvent::ConnectionDown => self.live = self.live.saturating_sub(1),
            PeerEvent::DialExhausted | PeerEvent::Redial | PeerEvent::Drain => {}
        }
        self.state = match (from, event) {
            (PeerState::Draining, _) | (_, PeerEvent::Drain) => PeerState::Draining,
            _ if self.live >= self.target => PeerState::Healthy,
            _ if self.live > 0 => PeerState::Degraded,
            (_, PeerEvent::DialExhausted) => PeerState::Unreachable,
            (_, PeerEvent::Redial) => PeerState::Connecting,
            // Losing the last connection while unreachable cannot happen (there
            // was none); losing it otherwise means dialling again.
            (PeerState::Unreachable, _) => PeerState::Unreachable,
            _ => PeerState::Connecting,
        };
        (from != self.state).then_some((from, self.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: [PeerEvent; 5] = [
        PeerEvent::ConnectionUp,
        PeerEvent::ConnectionDown,
        PeerEvent::DialExhausted,
        PeerEvent::Redial,
        PeerEvent::Drain,
    ];

    /// Every reachable (state, live) pair for targets 1..=4, by breadth-first
    /// search from `new`, so the invariants below are checked on all of them.
    fn reachable(target: usize) -> Vec<PeerStateMachine> {
        let mut seen = vec![PeerStateMachine::new(target)];
        let mut i = 0;
        while i < seen.len() {
            for ev in EVENTS {
                let mut m = seen[i].clone();
                m.on(ev);
                // Bound the live count: beyond target + 2 nothing new happens.
                if m.live <= target + 2 && !seen.contains(&m) {
                    seen.push(m);
                }
            }
            i += 1;
        }
        seen
    }

    #[test]
    fn the_state_always_agrees_with_the_counts() {
        for target in 1..=4 {
            for m in reachable(target) {
                match m.state {
                    PeerState::Healthy => assert!(m.live >= target, "{m:?}"),
                    PeerState::Degraded => assert!(m.live > 0 && m.live < target, "{m:?}"),
                    PeerState::Connecting | PeerState::Unreachable => {
                        assert_eq!(m.live, 0, "{m:?}")
                    }
                    PeerState::Draining => {}
                }
            }
        }
    }

    #[test]
    fn every_state_is_reachable() {
        for target in 2..=4 {
            let states: Vec<_> = reachable(target).iter().map(|m| m.state).collect();
            for s in PeerState::ALL {
                assert!(states.contains(&s), "{s} unreachable for target {target}");
            }
        }
    }

    #[test]
    fn exhaustive_transition_table() {
        // (state, live before, event) -> expected state, for target 2.
        let target = 2;
        for m in reachable(target) {
            for ev in EVENTS {
                let mut next = m.clone();
                next.on(ev);
                let live = next.live;
                let expected = if m.state == PeerState::Draining || ev == PeerEvent::Drain {
                    PeerState::Draining
                } else if live >= target {
                    PeerState::Healthy
                } else if live > 0 {
                    PeerState::Degraded
                } else if ev == PeerEvent::DialExhausted {
                    PeerState::Unreachable
                } else if ev == PeerEvent::Redial {
                    PeerState::Connecting
                } else if m.state == PeerState::Unreachable {
                    PeerState::Unreachable
                } else {
                    PeerState::Connecting
                };
                assert_eq!(next.state, expected, "{m:?} + {ev:?}");
            }
        }
    }

    #[test]
    fn draining_is_final() {
        for m in reachable(3) {
            let mut d = m.clone();
            d.on(PeerEvent::Drain);
            for ev in EVENTS {
                d.on(ev);
                assert_eq!(d.state(), PeerState::Draining);
            }
        }
    }

    #[test]
    fn unreachable_recovers_on_the_first_connection() {
        let mut m = PeerStateMachine::new(3);
        assert_eq!(
            m.on(PeerEvent::DialExhausted),
            Some((PeerState::Connecting, PeerState::Unreachable))
        );
        assert_eq!(m.on(PeerEvent::DialExhausted), None);
        assert_eq!(
            m.on(PeerEvent::ConnectionUp),
            Some((PeerState::Unreachable, PeerState::Degraded))
        );
        m.on(PeerEvent::ConnectionUp);
        assert_eq!(
            m.on(PeerEvent::ConnectionUp),
            Some((PeerState::Degraded, PeerState::Healthy))
        );
        // Losing every connection means dialling again, not unreachable yet.
        for _ in 0..3 {
            m.on(PeerEvent::ConnectionDown);
        }
        assert_eq!(m.state(), PeerState::Connecting);
    }
}
