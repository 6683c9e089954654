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
        let (usable, retiring): (Vec<_>, Vec<_>) = self.core.conns().partition(|(_, c)| c.usable());
        let count = |d: Direction| self.core.conns().filter(|(_, c)| c.direction == d).count();
        MessageResult(CoreView {
            state: self.core.state(),
            usable: usable.iter().map(|(k, _)| *k).collect(),
            retiring: retiring.iter().map(|(k, _)| *k).collect(),
            by_direction: Direction::ALL.map(|d| (d, count(d))),
            dial_attempts: self.attempts_before + self.core.total_attempts(),
            next_retry_in: self
                .core
                .next_wakeup()
                .map(|t| t.saturating_sub(self.node.now())),
            backoff: self.core.current_backoff(),
        })
    }
}
