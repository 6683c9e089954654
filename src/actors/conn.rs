//! `ConnMeta`: what the actor, the stream openers and the stream guards
//! share about one live connection: the quinn handle, its stream counts
//! (quinn has no active-stream counter) and the waits a retire or a drain
//! needs ("no stream left", "the peer said DONE").

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::Notify;

use super::status::{rfc3339, ConnectionInfo};
use crate::identity::Verified;
use crate::pool::{ConnKey, Direction};
use crate::transport::Backlog;

/// One live connection and its stream counts.
#[derive(Debug)]
pub(crate) struct ConnMeta {
    pub(crate) key: ConnKey,
    pub(crate) conn: quinn::Connection,
    pub(crate) direction: Direction,
    /// The dialler's sequence number (from the hello): with `direction`, it
    /// names the connection the same way on both ends.
    pub(crate) dial_seq: u64,
    /// Who is at the other end (its certificate's id, and name if CA-issued).
    pub(crate) remote: Verified,
    opened_at: SystemTime,
    opened: Instant,
    /// Streams this node opened on it, still open.
    pub(crate) out_streams: AtomicUsize,
    /// Streams the peer opened on it, still open.
    pub(crate) in_streams: AtomicUsize,
    /// Woken when a stream count drops to zero while someone waits.
    idle: Notify,
    /// Someone waits in `wait_idle` (a retire or a drain): only then do
    /// stream guards pay for waking it.
    idle_watched: AtomicBool,
    /// The peer said DONE on the control stream: every stream it opened
    /// here has finished.
    peer_done: AtomicBool,
    peer_done_notify: Notify,
    /// The peer answered DRAINED: it opens no new stream here.
    drained: AtomicBool,
    drained_notify: Notify,
    /// This node drains and the peer never answered DRAINED: new streams
    /// it opens here are refused.
    refusing: AtomicBool,
    /// The node's backlog, where each of its streams counts until read.
    pub(crate) backlog: Arc<Backlog>,
}

impl ConnMeta {
    pub(crate) fn new(
        key: ConnKey,
        conn: quinn::Connection,
        direction: Direction,
        dial_seq: u64,
        remote: Verified,
        backlog: Arc<Backlog>,
    ) -> ConnMeta {
        ConnMeta {
            key,
            conn,
            direction,
            dial_seq,
            remote,
            opened_at: SystemTime::now(),
            opened: Instant::now(),
            out_streams: AtomicUsize::new(0),
            in_streams: AtomicUsize::new(0),
            idle: Notify::new(),
            idle_watched: AtomicBool::new(false),
            peer_done: AtomicBool::new(false),
            peer_done_notify: Notify::new(),
            drained: AtomicBool::new(false),
            drained_notify: Notify::new(),
            refusing: AtomicBool::new(false),
            backlog,
        }
    }

    pub(crate) fn streams(&self) -> usize {
        self.out_streams.load(Ordering::Acquire) + self.in_streams.load(Ordering::Acquire)
    }

    /// Resolves once no stream is open on this connection.
    pub(crate) async fn wait_idle(&self) {
        self.wait_until_zero(ConnMeta::streams).await
    }

    /// Resolves once no stream this node opened here is open (or opening).
    pub(crate) async fn wait_out_idle(&self) {
        self.wait_until_zero(|m| m.out_streams.load(Ordering::Acquire))
            .await
    }

    async fn wait_until_zero(&self, count: impl Fn(&ConnMeta) -> usize) {
        self.idle_watched.store(true, Ordering::Release);
        wait_until(&self.idle, || count(self) == 0).await
    }

    /// A stream count went from 1 to 0: wake whoever waits for idleness.
    pub(crate) fn count_reached_zero(&self) {
        // Waiters wait for one count or both to reach zero; they check which.
        if self.idle_watched.load(Ordering::Acquire) {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn set_peer_done(&self) {
        self.peer_done.store(true, Ordering::Release);
        self.peer_done_notify.notify_waiters();
    }

    /// Resolves once the peer said DONE on the control stream.
    pub(crate) async fn wait_peer_done(&self) {
        wait_until(&self.peer_done_notify, || {
            self.peer_done.load(Ordering::Acquire)
        })
        .await
    }

    pub(crate) fn set_drained(&self) {
        self.drained.store(true, Ordering::Release);
        self.drained_notify.notify_waiters();
    }

    /// Resolves once the peer answered DRAINED.
    pub(crate) async fn wait_drained(&self) {
        wait_until(&self.drained_notify, || {
            self.drained.load(Ordering::Acquire)
        })
        .await
    }

    /// From now on, refuse new streams here unless the peer said DRAINED.
    pub(crate) fn refuse_unless_drained(&self) {
        self.refusing.store(true, Ordering::Release);
    }

    /// Whether a stream the peer opens now is refused.
    pub(crate) fn refuses_new_streams(&self) -> bool {
        self.refusing.load(Ordering::Acquire) && !self.drained.load(Ordering::Acquire)
    }

    pub(crate) fn info(&self, usable: bool, rtt_ewma: f64) -> ConnectionInfo {
        let stats = self.conn.stats();
        ConnectionInfo {
            number: self.key,
            direction: self.direction,
            dial_seq: self.dial_seq,
            remote_addr: self.conn.remote_address(),
            peer_id: self.remote.id,
            opened_at: rfc3339(self.opened_at),
            age_seconds: self.opened.elapsed().as_secs_f64(),
            active_streams: self.out_streams.load(Ordering::Relaxed),
            inbound_streams: self.in_streams.load(Ordering::Relaxed),
            rtt_seconds: stats.path.rtt.as_secs_f64(),
            rtt_ewma_seconds: rtt_ewma,
            bytes_sent: stats.udp_tx.bytes,
            bytes_received: stats.udp_rx.bytes,
            lost_packets: stats.path.lost_packets,
            usable,
        }
    }
}

/// Resolves once `cond` holds, re-checking whenever `notify` wakes its
/// waiters. Registers before checking, so no wake-up slips between.
pub(crate) async fn wait_until(notify: &Notify, cond: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if cond() {
            return;
        }
        notified.await;
    }
}
