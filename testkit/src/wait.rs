//! Waiting on a condition with a deadline. Both poll: they are for state
//! that lives in another process (or behind an API with no event to await);
//! a test that can await an event does that instead.

use std::time::{Duration, Instant};

/// Polls `cond` every 5 ms until it holds; panics naming `what` after
/// `limit`. Returns how long it took.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `cond` every 20 ms from a blocking thread; panics naming `what`
/// after `limit`. Returns how long it took.
pub fn wait_blocking(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    try_wait_blocking(limit, &mut cond)
        .unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Like [`wait_blocking`], but says `None` instead of panicking (for tools
/// that report the failure themselves).
pub fn try_wait_blocking(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(start.elapsed())
}
