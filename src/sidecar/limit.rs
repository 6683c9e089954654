//! A forward's connection limit (`forward.max_connections`): the accept
//! loop waits for room before it accepts, so connections past the limit
//! wait in the kernel's listen backlog instead of costing a task, a file
//! descriptor and stream memory each.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::metrics::sidecar::ForwardMetrics;

/// The connections one forward holds.
#[derive(Debug, Default)]
pub(crate) struct Held {
    count: AtomicUsize,
    freed: Notify,
}

impl Held {
    /// Waits until fewer than `limit(settings)` are held, re-reading the
    /// limit when `settings` change (a reload may raise or lower it).
    /// `full` is called each time the wait starts or goes on.
    pub(crate) async fn room<T>(
        &self,
        settings: &mut watch::Receiver<T>,
        limit: impl Fn(&T) -> usize,
        mut full: impl FnMut(&T),
    ) {
        loop {
            // Registered before the count is read: a slot freed in between
            // still wakes this wait.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let current = settings.borrow();
                if self.count.load(Ordering::Acquire) < limit(&current) {
                    return;
                }
                full(&current);
            }
            tokio::select! {
                () = freed.as_mut() => {}
                changed = settings.changed() => {
                    if changed.is_err() {
                        // The forward is being removed; only a freed slot
                        // can matter now.
                        freed.as_mut().await;
                    }
                }
            }
        }
    }
}

/// One held connection: counted (and in the forward's gauge) until dropped.
pub(crate) struct Slot {
    held: Arc<Held>,
    metrics: Arc<ForwardMetrics>,
}

impl Slot {
    pub(crate) fn take(held: &Arc<Held>, metrics: Arc<ForwardMetrics>) -> Slot {
        held.count.fetch_add(1, Ordering::AcqRel);
        metrics.held(1.0);
        Slot {
            held: held.clone(),
            metrics,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.held.count.fetch_sub(1, Ordering::AcqRel);
        self.metrics.held(-1.0);
        self.held.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn metrics() -> Arc<ForwardMetrics> {
        Arc::new(ForwardMetrics::new("127.0.0.1:1"))
    }

    #[tokio::test]
    async fn waits_at_the_limit_until_a_slot_is_freed_or_the_limit_is_raised() {
        let bound = Duration::from_secs(5);
        let held = Arc::new(Held::default());
        let (tx, mut rx) = watch::channel(2usize);
        let a = Slot::take(&held, metrics());
        let _b = Slot::take(&held, metrics());
        let mut fulls = 0;
        let at_limit = held.room(&mut rx, |l| *l, |_| fulls += 1);
        let blocked = tokio::time::timeout(Duration::from_millis(50), at_limit).await;
        assert!(blocked.is_err(), "room with 2 of 2 held");
        assert_eq!(fulls, 1);
        // A freed slot ends the wait.
        let freed = async { tokio::join!(held.room(&mut rx, |l| *l, |_| {}), async { drop(a) }) };
        tokio::time::timeout(bound, freed)
            .await
            .expect("a freed slot makes room");
        // So does a raised limit.
        let _c = Slot::take(&held, metrics());
        let raised = async {
            tokio::join!(held.room(&mut rx, |l| *l, |_| {}), async {
                tx.send(3).expect("the receiver is alive")
            })
        };
        tokio::time::timeout(bound, raised)
            .await
            .expect("a raised limit makes room");
    }
}
