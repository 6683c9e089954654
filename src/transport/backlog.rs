//! Streams whose received data may wait for its reader, and what the
//! node's socket makes of their number.
//!
//! quinn copies each receive buffer into one allocation shared by every
//! datagram in it, and a stream's unread data keeps its datagrams'
//! allocations alive. A whole GRO batch (up to 64 KiB) handed over as one
//! buffer is fastest, but a stream nobody reads then pins a 64 KiB batch
//! for each 1.2 KB datagram of its own (904 KiB per stalled stream with a
//! 128 KiB window, against 213 KiB split one datagram per buffer). So the
//! socket (`super::filter`) splits batches only while some stream is
//! *backlogged*:
//!
//! - a stream the sidecar is not piping yet (its header, its upstream's
//!   connect), and every stream a library user holds (the pool cannot
//!   tell how promptly it is read), from the moment it exists;
//! - a piped stream whose write to its local socket has waited longer than
//!   [`SLOW_READER`]: the reader is not keeping up, so what arrives next
//!   would stay.
//!
//! And batches are split whenever more than [`WHOLE_UP_TO`] streams are
//! open: a reader that keeps up can still lag by a window when two cores
//! are busy, and with many streams the lag of each pins batches for all
//! (measured: 290 uploads moving through a node in whole batches peaked
//! 36 MB above the same uploads split). Whole batches thus pin at most
//! `WHOLE_UP_TO` windows' worth of batches (about 904 KiB per 128 KiB
//! window).
//!
//! A few streams, each read as it arrives, are what bulk transfers look
//! like: their batches live for microseconds and they run at quinn's own
//! speed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a write of received data to the local socket may wait before
/// its stream counts as backlogged. Short, because whatever arrives for it
/// meanwhile is received whole and stays pinned; long enough that a reader
/// merely descheduled for a scheduler tick does not count.
pub(crate) const SLOW_READER: Duration = Duration::from_millis(5);

/// Up to this many open streams, batches may reach quinn whole.
pub(crate) const WHOLE_UP_TO: usize = 16;

/// The node's count of open and of backlogged streams.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    open: AtomicUsize,
    streams: AtomicUsize,
}

impl Backlog {
    pub(crate) fn new() -> Arc<Backlog> {
        Arc::new(Backlog::default())
    }

    /// Streams backlogged now.
    pub(crate) fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Whether the socket should hand quinn one datagram per buffer.
    pub(crate) fn split(&self) -> bool {
        self.streams() > 0 || self.open.load(Ordering::Relaxed) > WHOLE_UP_TO
    }
}

/// One stream's place in the [`Backlog`]: backlogged from the start,
/// until its reader says it keeps up; out of it when dropped.
#[derive(Debug)]
pub(crate) struct Waiting {
    backlog: Arc<Backlog>,
    backlogged: bool,
}

impl Waiting {
    pub(crate) fn new(backlog: Arc<Backlog>) -> Waiting {
        backlog.open.fetch_add(1, Ordering::Relaxed);
        backlog.streams.fetch_add(1, Ordering::Relaxed);
        Waiting {
            backlog,
            backlogged: true,
        }
    }

    /// Whether the node's socket splits batches now.
    pub(crate) fn split(&self) -> bool {
        self.backlog.split()
    }

    pub(crate) fn is_backlogged(&self) -> bool {
        self.backlogged
    }

    /// The reader keeps up (or the stream has nothing more to receive).
    pub(crate) fn keeping_up(&mut self) {
        if std::mem::replace(&mut self.backlogged, false) {
            self.backlog.streams.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The reader fell behind.
    pub(crate) fn behind(&mut self) {
        if !std::mem::replace(&mut self.backlogged, true) {
            self.backlog.streams.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.keeping_up();
        self.backlog.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_counts_from_its_start_until_it_keeps_up_and_again_when_behind() {
        let backlog = Backlog::new();
        assert!(!backlog.split());
        let mut a = Waiting::new(backlog.clone());
        let b = Waiting::new(backlog.clone());
        assert_eq!(backlog.streams(), 2);
        a.keeping_up();
        a.keeping_up();
        assert_eq!(backlog.streams(), 1, "keeping up twice counts once");
        drop(b);
        assert!(!backlog.split());
        a.behind();
        a.behind();
        assert_eq!(backlog.streams(), 1, "falling behind twice counts once");
        assert!(a.is_backlogged());
        drop(a);
        assert_eq!(backlog.streams(), 0, "a dropped stream leaves the count");
    }

    #[test]
    fn more_open_streams_than_whole_up_to_split_even_when_all_keep_up() {
        let backlog = Backlog::new();
        let mut open: Vec<Waiting> = (0..WHOLE_UP_TO)
            .map(|_| Waiting::new(backlog.clone()))
            .collect();
        open.iter_mut().for_each(Waiting::keeping_up);
        assert!(!backlog.split(), "{WHOLE_UP_TO} streams that keep up");
        let mut one_more = Waiting::new(backlog.clone());
        one_more.keeping_up();
        assert!(backlog.split());
        drop(one_more);
        assert!(!backlog.split());
    }
}
