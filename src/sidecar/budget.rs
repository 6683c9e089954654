//! The node-wide budget of stream memory (`node.stream_memory`).
//!
//! A stream can make the node hold what its peer may send before the node
//! reads it (`node.stream_receive_window`) plus its two pipe buffers: that
//! is its reservation ([`crate::config::stream_reservation`]), taken before
//! the stream is opened (forward) or served (service) and given back when
//! it ends. Past the budget a forward waits for room (within
//! `pool.stream_open_timeout`) and a service refuses with `0x09
//! overloaded`, which the forwarding side retries elsewhere: memory stays
//! bounded however many clients stall.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{stream_reservation, NodeConfig};

/// Reservations are counted in KiB so that any budget fits the semaphore.
const UNIT: u64 = 1024;

pub(crate) struct StreamBudget {
    room: Arc<Semaphore>,
    total: u32,
    per_stream: u32,
}

/// One stream's reservation; dropping it gives the room back.
pub(crate) struct Reserved(#[allow(dead_code)] OwnedSemaphorePermit);

impl StreamBudget {
    pub(crate) fn new(node: &NodeConfig) -> Arc<StreamBudget> {
        let units = |bytes: u64| u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        let per_stream = units(stream_reservation(node.stream_receive_window)).max(1);
        // `check` keeps the budget at one stream or more.
        let total = units(node.stream_memory).max(per_stream);
        Arc::new(StreamBudget {
            room: Arc::new(Semaphore::new(total as usize)),
            total,
            per_stream,
        })
    }

    /// A reservation if there is room now.
    pub(crate) fn try_reserve(&self) -> Option<Reserved> {
        self.room
            .clone()
            .try_acquire_many_owned(self.per_stream)
            .ok()
            .map(Reserved)
    }

    /// A reservation as soon as there is room, or `None` at `deadline`.
    pub(crate) async fn reserve(&self, deadline: Instant) -> Option<Reserved> {
        if let Some(r) = self.try_reserve() {
            return Some(r);
        }
        let wait = self.room.clone().acquire_many_owned(self.per_stream);
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(permit)) => Some(Reserved(permit)),
            _ => None,
        }
    }

    /// Bytes reserved by the streams alive now.
    pub(crate) fn reserved_bytes(&self) -> u64 {
        u64::from(self.total).saturating_sub(self.room.available_permits() as u64) * UNIT
    }

    pub(crate) fn limit_bytes(&self) -> u64 {
        u64::from(self.total) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn budget(streams: u64) -> Arc<StreamBudget> {
        let mut node = NodeConfig::default();
        node.stream_memory = streams * stream_reservation(node.stream_receive_window);
        StreamBudget::new(&node)
    }

    #[test]
    fn holds_exactly_as_many_streams_as_the_budget_allows() {
        let b = budget(3);
        let held: Vec<_> = (0..3).map(|_| b.try_reserve().expect("room")).collect();
        assert!(
            b.try_reserve().is_none(),
            "a fourth stream fits a budget of three"
        );
        assert_eq!(b.reserved_bytes(), b.limit_bytes());
        drop(held);
        assert_eq!(b.reserved_bytes(), 0);
        assert!(b.try_reserve().is_some());
    }

    #[tokio::test]
    async fn a_waiting_stream_gets_the_room_a_finished_one_gives_back() {
        let b = budget(1);
        let first = b.try_reserve().expect("room");
        let deadline = Instant::now() + Duration::from_secs(5);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.reserve(deadline).await.is_some() }
        });
        tokio::task::yield_now().await;
        drop(first);
        assert!(waiter.await.unwrap(), "the freed room went to the waiter");
        // With no room and nobody finishing, the wait ends at the deadline.
        let _held = b.try_reserve().expect("room");
        let deadline = Instant::now() + Duration::from_millis(100);
        assert!(b.reserve(deadline).await.is_none());
        assert!(Instant::now() >= deadline);
    }
}
