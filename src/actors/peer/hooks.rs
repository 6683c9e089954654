//! Test hooks (feature `test-util`): make the actor panic, describe its core.

use actix::prelude::*;

use super::PeerActor;
use crate::actors::inspect::CoreView;
use crate::actors::messages::hooks::{InjectPanic, Inspect};
use crate::pool::Direction;

impl Handler<InjectPanic> for PeerActor {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _ctx: &mut Self::Context) {
        panic!("injected panic in the PeerActor of {}", self.name());
    }
}

impl Handler<Inspect> for PeerActor {
    type Result = MessageResult<Inspect>;

    fn handle(&mut self, _: Inspect, _ctx: &mut Self::Context) -> Self::Result {
        let mut usable = Vec::new();
        let mut retiring = Vec::new();
        for (_, e) in self.core.endpoints() {
            for (key, c) in e.conns() {
                if c.usable() && e.routable() {
                    usable.push(key);
                } else {
                    retiring.push(key);
                }
            }
        }
        usable.sort_unstable();
        retiring.sort_unstable();
        let count = |d: Direction| {
            self.core
                .conns()
                .filter(|(_, _, c)| c.direction == d)
                .count()
        };
        MessageResult(CoreView {
            state: self.core.state(),
            endpoints: self
                .core
                .endpoints()
                .map(|(a, e)| (*a, e.state()))
                .collect(),
            usable,
            retiring,
            by_direction: Direction::ALL.map(|d| (d, count(d))),
            dial_attempts: self.attempts_before + self.core.total_attempts(),
            next_retry_in: self
                .core
                .next_dial()
                .map(|t| t.saturating_sub(self.node.now())),
            backoff: self.core.current_backoff(),
        })
    }
}
