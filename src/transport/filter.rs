//! The node's UDP socket as quinn sees it.
//!
//! - Initial packets from a source address that cools off (`pool::gate`)
//!   are dropped here, before quinn parses or decrypts them: an attacker
//!   that failed too often costs one byte compare and one table lookup per
//!   datagram. The kernel's filter (`super::bpf`) drops them before this
//!   as soon as it lists the source; this catches the rest.
//! - GRO batches reach quinn whole (received straight into quinn's
//!   buffers) while a few streams are open and none is backlogged, and
//!   split one datagram per buffer otherwise (`super::backlog`): quinn copies each buffer into
//!   one allocation shared by the datagrams in it, so a stream that is not
//!   read would keep a whole 64 KiB batch alive for a datagram of its own
//!   (measured with 290 stalled uploads: 904 KiB per stream with batches
//!   handed over whole, 213 KiB split). Split, the kernel still coalesces
//!   (one system call per batch); the cost is one copy of each received
//!   byte and quinn's work per buffer, a tenth to a fifth of parallel
//!   bulk throughput.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use super::backlog::Backlog;
use crate::pool::gate::{Gate, GateRules};
use crate::pool::Time;

/// The node's handshake gate, shared by the socket (drops Initials of
/// sources cooling off) and the accept loop (every other verdict).
pub(crate) struct GateHandle {
    gate: Mutex<Gate>,
    epoch: Instant,
    /// Told when a cooling-off period starts, when every source is
    /// forgiven, and when the socket is dropped: the kernel's filter
    /// (`super::bpf`) follows.
    changed: tokio::sync::Notify,
}

impl GateHandle {
    pub(crate) fn new(config: GateRules) -> Arc<GateHandle> {
        Arc::new(GateHandle {
            gate: Mutex::new(Gate::new(config)),
            epoch: Instant::now(),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// A handshake from `from` failed to authenticate (`Gate::failed`).
    pub(crate) fn failed(&self, from: std::net::IpAddr) -> Option<std::time::Duration> {
        let period = self.lock().failed(from, self.now());
        if period.is_some() {
            self.changed.notify_one();
        }
        period
    }

    /// The sources cooling off now, with the time left of each period.
    pub(crate) fn cooling_off(&self) -> Vec<(crate::pool::gate::Cooling, std::time::Duration)> {
        let now = self.now();
        self.lock()
            .cooling_off(now)
            .into_iter()
            .map(|c| (c, c.until.saturating_sub(now)))
            .collect()
    }

    /// Forgets every source (`Gate::forgive_all`); returns how many were
    /// cooling off.
    pub(crate) fn forgive_all(&self) -> usize {
        let forgiven = self.lock().forgive_all(self.now());
        self.changed.notify_one();
        forgiven
    }

    /// Completes at the next [`GateHandle::failed`] that starts a period
    /// or [`GateHandle::forgive_all`] (or at once if one came since the
    /// last call).
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The gate's clock.
    pub(crate) fn now(&self) -> Time {
        self.epoch.elapsed()
    }
}

/// A long-header Initial (RFC 9000, 17.2.2): form bit set, type 0. Checked
/// on the first byte only; short-header packets of established
/// connections never reach the table.
fn is_initial(datagram: &[u8]) -> bool {
    datagram
        .first()
        .is_some_and(|b| b & 0x80 != 0 && b & 0x30 == 0)
}

/// Moves the datagrams of `batch` (each `stride` long, the last maybe
/// shorter) that `drops` does not pick to its front; returns their length.
/// Only the last can be short, so the stride still holds.
fn keep(batch: &mut [u8], stride: usize, mut drops: impl FnMut(&[u8]) -> bool) -> usize {
    let stride = stride.max(1);
    let (mut kept, mut at) = (0, 0);
    while at < batch.len() {
        let len = stride.min(batch.len() - at);
        if !drops(&batch[at..at + len]) {
            if kept != at {
                batch.copy_within(at..at + len, kept);
            }
            kept += len;
        }
        at += len;
    }
    kept
}

/// Batches in a row that were dropped whole before the driver yields, so a
/// flood cannot hold the endpoint's task.
const MAX_DROPPED_BATCHES: usize = 16;

/// The most a GRO batch holds: one IP packet's worth.
const GRO_MAX: usize = 65_535;

/// quinn's largest UDP payload (`max_udp_payload_size`, which
/// `endpoint_config` leaves at quinn's default): the unit in which quinn
/// sizes its receive buffers.
const QUINN_PAYLOAD: usize = 1472;

/// Buffers of the staging area, each for one GRO batch of up to 64 KiB.
const STAGE_BUFFERS: usize = 4;
const STAGE_LEN: usize = 64 * 1024;

/// Datagrams received from the kernel and not yet handed to quinn.
struct Staging {
    buf: Box<[u8]>,
    metas: [RecvMeta; STAGE_BUFFERS],
    /// (start in `buf`, length, metadata) of each datagram, in order.
    ready: VecDeque<(usize, usize, RecvMeta)>,
}

pub(crate) struct Filtered {
    inner: Arc<dyn AsyncUdpSocket>,
    /// The same socket, for its kernel filter (`super::bpf`).
    kernel: Option<std::net::UdpSocket>,
    gate: Arc<GateHandle>,
    backlog: Arc<Backlog>,
    staging: Mutex<Staging>,
}

impl Drop for Filtered {
    fn drop(&mut self) {
        // `bpf::keep_in_step` ends when it finds the socket gone.
        self.gate.changed.notify_one();
    }
}

impl fmt::Debug for Filtered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filtered")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Filtered {
    /// `kernel` is the socket under `inner` (a clone of its descriptor),
    /// if the kernel is to drop Initials of sources cooling off too.
    pub(crate) fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        kernel: Option<std::net::UdpSocket>,
        gate: Arc<GateHandle>,
        backlog: Arc<Backlog>,
    ) -> Filtered {
        Filtered {
            inner,
            kernel,
            gate,
            backlog,
            staging: Mutex::new(Staging {
                buf: vec![0u8; STAGE_BUFFERS * STAGE_LEN].into_boxed_slice(),
                metas: [RecvMeta::default(); STAGE_BUFFERS],
                ready: VecDeque::new(),
            }),
        }
    }

    /// Receives batches until one holds a datagram to keep; `Pending` when
    /// the socket has none, or after `MAX_DROPPED_BATCHES` dropped whole.
    fn stage(&self, cx: &mut Context, st: &mut Staging) -> Poll<io::Result<()>> {
        for _ in 0..MAX_DROPPED_BATCHES {
            let Staging { buf, metas, ready } = st;
            let mut chunks = buf.chunks_mut(STAGE_LEN);
            let mut iovs: [IoSliceMut<'_>; STAGE_BUFFERS] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            let n = match self.inner.poll_recv(cx, &mut iovs, metas) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            for (i, m) in metas.iter().enumerate().take(n) {
                let base = i * STAGE_LEN;
                let stride = m.stride.max(1);
                let mut at = 0;
                while at < m.len {
                    let len = stride.min(m.len - at);
                    let start = base + at;
                    at += len;
                    if !self.drops(&buf[start..start + len], m.addr) {
                        ready.push_back((start, len, *m));
                    }
                }
            }
            if !ready.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Replaces the socket's kernel filter with `program`.
    pub(crate) fn set_kernel_filter(&self, program: &[socket2::SockFilter]) -> io::Result<()> {
        match &self.kernel {
            Some(socket) => socket2::SockRef::from(socket).attach_filter(program),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no kernel filter on this socket",
            )),
        }
    }

    /// Receives whole batches straight into quinn's buffers, then drops the
    /// datagrams the gate ignores from them.
    fn recv_whole(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
            if let Some(batch) = buf.get_mut(..m.len) {
                // A batch emptied whole is handed on empty: quinn skips it.
                m.len = keep(batch, m.stride, |d| self.drops(d, m.addr));
            }
        }
        Poll::Ready(Ok(n))
    }

    fn drops(&self, datagram: &[u8], from: SocketAddr) -> bool {
        let drop = is_initial(datagram) && self.gate.lock().cooling(from.ip(), self.gate.now());
        if drop {
            crate::metrics::handshake_gate(crate::metrics::labels::GateVerdict::Ignored);
        }
        drop
    }
}

impl AsyncUdpSocket for Filtered {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if st.ready.is_empty() {
            if !self.backlog.split() {
                return self.recv_whole(cx, bufs, meta);
            }
            match self.stage(cx, &mut st) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut filled = 0;
        while filled < bufs.len().min(meta.len()) {
            let Some((start, len, m)) = st.ready.pop_front() else {
                break;
            };
            // quinn's buffers hold one datagram of its largest size.
            let Some(out) = bufs[filled].get_mut(..len) else {
                continue;
            };
            out.copy_from_slice(&st.buf[start..start + len]);
            meta[filled] = RecvMeta {
                len,
                stride: len,
                ..m
            };
            filled += 1;
        }
        Poll::Ready(Ok(filled))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    /// quinn sizes each receive buffer as this many datagrams of its
    /// largest payload (1472 bytes): a buffer must hold a whole GRO batch
    /// (whole mode); split, each holds one datagram and the rest is unused.
    fn max_receive_segments(&self) -> usize {
        self.inner
            .max_receive_segments()
            .min(GRO_MAX.div_ceil(QUINN_PAYLOAD))
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_long_header_initials_are_looked_up() {
        assert!(is_initial(&[0xc0, 0, 0, 0, 1]));
        assert!(is_initial(&[0xc3]));
        // Handshake (type 2), Retry (3), 0-RTT (1), short header, empty.
        assert!(!is_initial(&[0xe0]));
        assert!(!is_initial(&[0xf0]));
        assert!(!is_initial(&[0xd0]));
        assert!(!is_initial(&[0x40]));
        assert!(!is_initial(&[]));
    }

    #[test]
    fn quinn_sizes_its_receive_buffers_in_the_payload_assumed_here() {
        let identity = crate::identity::Identity::generate().unwrap();
        let config = super::super::endpoint_config(&identity);
        assert_eq!(config.get_max_udp_payload_size(), QUINN_PAYLOAD as u64);
        // So a buffer of GRO_MAX.div_ceil(QUINN_PAYLOAD) payloads holds a
        // whole batch.
        assert!(GRO_MAX.div_ceil(QUINN_PAYLOAD) * QUINN_PAYLOAD >= GRO_MAX);
    }

    #[test]
    fn a_batch_keeps_its_other_datagrams_in_order_and_its_stride() {
        // Four datagrams of stride 3, the last one short; the Initials
        // (first byte 0xc0) go.
        let mut batch = [0x40, 1, 1, 0xc0, 2, 2, 0x40, 3, 3, 0x41, 4].to_vec();
        let kept = keep(&mut batch, 3, is_initial);
        assert_eq!(&batch[..kept], &[0x40, 1, 1, 0x40, 3, 3, 0x41, 4]);
        let mut last = [0x40, 1, 1, 0xc0, 9].to_vec();
        assert_eq!(
            keep(&mut last, 3, is_initial),
            3,
            "a short last one dropped"
        );
        let mut all = [0xc0, 1, 0xc0, 2].to_vec();
        assert_eq!(keep(&mut all, 2, is_initial), 0, "emptied whole");
        let mut none = [0x40, 1, 0x40, 2].to_vec();
        assert_eq!(keep(&mut none, 2, is_initial), 4);
        assert_eq!(none, [0x40, 1, 0x40, 2]);
    }
}
