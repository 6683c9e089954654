//! Copying bytes between a local connection (TCP or a Unix socket, see
//! [`super::local`]; "TCP" below) and a QUIC stream, both ways.
//!
//! - No copy in user space: TCP is read into blocks of [`PIPE_BUFFER`]
//!   bytes handed to quinn as they are (`write_chunk`), and the chunks quinn
//!   received are written to TCP as they are, gathered (`read_chunks`, one
//!   `writev`). Memory per stream stays bounded however fast or slow either
//!   side reads: quinn's send window and receive window hold the chunks,
//!   QUIC flow control and TCP backpressure do the rest.
//! - A half-close maps across: TCP FIN becomes QUIC `finish()`, a finished
//!   QUIC stream becomes a TCP FIN.
//! - A reset maps across: a TCP reset resets the QUIC stream (both halves,
//!   code [`RESET_TCP`]); a QUIC reset, a stop or a lost connection resets
//!   the TCP connection (RST, never a FIN that could pass for a complete
//!   answer). Each is seen while the pipe waits for something else: a TCP
//!   reset while quinn's flow control holds a chunk back (nothing reads
//!   TCP then), the peer's stop of the stream while a write to TCP waits
//!   for its reader (nothing reads the stream then).
//! - No false FIN, ever: a TCP socket's write half sends a FIN only
//!   through [`WriteHalf::finish`]; any other end closes with RST (see
//!   [`super::local`]). A stream dropped unfinished is reset (`PooledSend`).
//! - A finished stream's pipe waits (up to [`ACK_WAIT`]) until the peer
//!   has acknowledged it, so a drain that waits for streams never closes a
//!   connection under a completed answer still in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use quinn::VarInt;
use tokio::io::AsyncReadExt;

use super::header::{Status, RESET_TCP};
use super::local::{self, ReadHalf, WriteHalf};
use crate::metrics::labels::TransferResult;
use crate::transport::backlog::{Waiting, SLOW_READER};
use crate::{PooledRecv, PooledSend};

/// Bytes buffered per direction per stream.
pub(crate) const PIPE_BUFFER: usize = 32 * 1024;

/// Below this much room left in the TCP read block, start a new block.
const MIN_READ: usize = 4 * 1024;

/// Chunks of a stream written to TCP in one gathered write.
const GATHER: usize = 32;

/// The longest wait for the peer to acknowledge a finished stream.
pub(crate) const ACK_WAIT: Duration = Duration::from_secs(5);

/// Writes every chunk, gathered into as few writes as the socket takes,
/// and returns the bytes written.
///
/// A write that waits longer than [`SLOW_READER`] marks the stream
/// `behind` in the node's backlog (the socket then splits what it
/// receives, `transport::backlog`). If the node was receiving whole
/// batches, it first copies the chunks it holds into one buffer of their
/// own: each may be a slice of a 64 KiB batch that would otherwise stay
/// alive for as long as the reader dawdles. The stream keeps up again once
/// everything is written.
///
/// While a write waits, `gone` is watched: a local reader that never
/// reads must not hold the stream after the peer gave up on it.
async fn write_all_chunks(
    w: &mut WriteHalf,
    chunks: &mut [Bytes],
    waiting: &mut Waiting,
    gone: &mut PeerGone<'_, impl Future<Output = Result<Option<VarInt>, quinn::StoppedError>>>,
) -> Result<u64, Fault> {
    let mut total = 0u64;
    let mut first = 0;
    while first < chunks.len() {
        let mut slices = [std::io::IoSlice::new(&[]); GATHER];
        let k = (chunks.len() - first).min(GATHER);
        for (slice, chunk) in slices.iter_mut().zip(&chunks[first..]) {
            *slice = std::io::IoSlice::new(chunk);
        }
        let written = {
            let write = w.write_vectored(&slices[..k]);
            tokio::pin!(write);
            // Polled once before any timer: a socket with room (nearly
            // every write) costs no timer.
            match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
                Poll::Ready(r) => Some(r),
                Poll::Pending => {
                    let limit = (!waiting.is_backlogged()).then_some(SLOW_READER);
                    let wait = async {
                        match limit {
                            None => Some(write.await),
                            Some(limit) => tokio::time::timeout(limit, write).await.ok(),
                        }
                    };
                    tokio::select! {
                        written = wait => written,
                        fault = gone.wait() => return Err(fault),
                    }
                }
            }
        };
        let Some(written) = written else {
            // Nothing was written: a socket write that is still pending
            // has taken no byte. Chunks received split pin only their own
            // datagrams; copying them would cost more than it frees
            // (measured: 13 KiB more per stalled stream).
            if !waiting.split() {
                own_copy(&mut chunks[first..]);
            }
            waiting.behind();
            continue;
        };
        let mut n = written.map_err(|_| Fault::Tcp)?;
        if n == 0 {
            return Err(Fault::Tcp);
        }
        total += n as u64;
        while n > 0 {
            let c = &mut chunks[first];
            let take = n.min(c.len());
            c.advance(take);
            n -= take;
            if c.is_empty() {
                first += 1;
            }
        }
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    waiting.keeping_up();
    Ok(total)
}

/// The peer stopped the stream or the connection was lost, watched through
/// the other half's [`quinn::SendStream::stopped`]: a peer that gives up
/// resets its half and stops ours together, and quinn wakes a stopped
/// stream through a notifier of its own, apart from the waker reads use.
/// Made once per pipe (a clone of the connection handle) and polled only
/// while a write waits, so a stream whose writes go at once takes no lock
/// for it.
struct PeerGone<'a, F> {
    stopped: Pin<&'a mut F>,
    /// It resolved with no stop: this half was finished and acknowledged,
    /// after which the peer can no longer stop it.
    quiet: bool,
}

impl<F> PeerGone<'_, F>
where
    F: Future<Output = Result<Option<VarInt>, quinn::StoppedError>>,
{
    /// Resolves once the peer stopped the stream or the connection is lost;
    /// never after this half was finished and acknowledged.
    async fn wait(&mut self) -> Fault {
        if !self.quiet {
            match self.stopped.as_mut().await {
                Ok(Some(code)) => return Fault::Quic(Some(code.into_inner())),
                Ok(None) => self.quiet = true,
                Err(_) => return Fault::Quic(None),
            }
        }
        std::future::pending().await
    }
}

/// Replaces `chunks` (not empty) by one buffer of their own holding the
/// same bytes, followed by empty chunks.
fn own_copy(chunks: &mut [Bytes]) {
    let mut own = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks.iter_mut() {
        own.extend_from_slice(c);
        *c = Bytes::new();
    }
    chunks[0] = own.freeze();
}

/// How a pipe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Both directions finished cleanly (the bytes are in the pipe's
    /// [`Activity`]).
    Done,
    /// The TCP side reset or failed; the QUIC stream was reset.
    TcpReset,
    /// The QUIC side reset, stopped, or lost its connection; the TCP
    /// connection was reset.
    QuicReset(Option<u64>),
    /// The serving node answered with an error status.
    Refused(Status),
    /// The serving node answered with a byte that is no status.
    BadStatus(u8),
}

impl Outcome {
    /// The `result` label for metrics.
    pub(crate) fn label(&self) -> TransferResult {
        match self {
            Outcome::Done => TransferResult::Ok,
            Outcome::TcpReset => TransferResult::TcpReset,
            Outcome::QuicReset(Some(code))
                if *code == u64::from(crate::transport::codes::stream::DRAINING) =>
            {
                TransferResult::Draining
            }
            Outcome::QuicReset(_) => TransferResult::StreamReset,
            Outcome::Refused(s) => s.label(),
            Outcome::BadStatus(_) => TransferResult::BadStatus,
        }
    }
}

/// Why a direction stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Tcp,
    Quic(Option<u64>),
    Refused(Status),
    BadStatus(u8),
}

impl Fault {
    pub(crate) fn outcome(self) -> Outcome {
        match self {
            Fault::Tcp => Outcome::TcpReset,
            Fault::Quic(code) => Outcome::QuicReset(code),
            Fault::Refused(s) => Outcome::Refused(s),
            Fault::BadStatus(b) => Outcome::BadStatus(b),
        }
    }
}

pub(crate) fn quic_read_fault(e: &quinn::ReadError) -> Fault {
    match e {
        quinn::ReadError::Reset(code) => Fault::Quic(Some(code.into_inner())),
        _ => Fault::Quic(None),
    }
}

pub(crate) fn quic_write_fault(e: &quinn::WriteError) -> Fault {
    match e {
        quinn::WriteError::Stopped(code) => Fault::Quic(Some(code.into_inner())),
        _ => Fault::Quic(None),
    }
}

/// Counts the chunks moved either way on one connection, so a watchdog
/// can tell an idle connection from a busy one without reading the clock
/// per chunk, and the bytes delivered each way (for the access log).
#[derive(Debug, Default)]
pub(crate) struct Activity {
    chunks: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
}

impl Activity {
    pub(crate) fn moved(&self) {
        self.chunks.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` bytes went towards the serving side (TCP -> stream).
    pub(crate) fn sent_up(&self, n: u64) {
        self.up.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` bytes went back (stream -> TCP).
    pub(crate) fn sent_down(&self, n: u64) {
        self.down.fetch_add(n, Ordering::Relaxed);
    }

    /// (bytes up, bytes down) so far.
    pub(crate) fn bytes(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }

    /// Resolves once nothing moved for `limit`. It looks every quarter of
    /// `limit`, so it fires between `limit` and 1.25 × `limit` after the
    /// last chunk.
    pub(crate) async fn idle(&self, limit: Duration) {
        let mut tick = tokio::time::interval(limit / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let (mut last, mut quiet) = (self.chunks.load(Ordering::Relaxed), 0);
        loop {
            tick.tick().await;
            let now = self.chunks.load(Ordering::Relaxed);
            if now != last {
                (last, quiet) = (now, 0);
            } else {
                quiet += 1;
                if quiet == 4 {
                    return;
                }
            }
        }
    }
}

/// Where a pipe starts when something already went each way (a forward
/// that waited for the first byte of the answer before piping).
#[derive(Debug, Default)]
pub(crate) struct Started {
    /// Bytes read from TCP and not yet written to the stream.
    pub(crate) pending: Bytes,
    /// TCP sent its FIN (after `pending`).
    pub(crate) up_fin: bool,
    /// Bytes written to the stream before (counted in the activity).
    pub(crate) up: u64,
    /// Bytes written to TCP before (counted in the activity).
    pub(crate) down: u64,
    /// The stream already ended and TCP got its FIN.
    pub(crate) down_done: bool,
}

// The quinn methods (with their typed errors) are called through the
// pooled wrappers' `Deref`, not the tokio traits the wrappers implement.
async fn tcp_to_quic(
    tcp: &mut ReadHalf,
    send: &mut PooledSend,
    pending: Bytes,
    fin: bool,
    activity: &Activity,
) -> Result<(), Fault> {
    if !pending.is_empty() {
        let n = pending.len() as u64;
        send_chunk(send, tcp, pending).await?;
        activity.sent_up(n);
    }
    if fin {
        let _ = send.finish();
        return Ok(());
    }
    // The buffer exists once the TCP side has something to say: a stream
    // whose upstream only listens (an upload) never holds one.
    tcp.readable().await.map_err(|_| Fault::Tcp)?;
    // Each read lands in a block that is handed to quinn as it is (no copy
    // into quinn's send buffer); the next read fills the rest of the block,
    // and a block comes back once quinn let go of every chunk in it.
    let mut buf = BytesMut::with_capacity(PIPE_BUFFER);
    loop {
        if buf.capacity() < MIN_READ {
            buf.reserve(PIPE_BUFFER);
        }
        let n = tcp.read_buf(&mut buf).await.map_err(|_| Fault::Tcp)?;
        activity.moved();
        if n == 0 {
            // A stream already stopped by the peer cannot be finished; the
            // other direction reports how it ended.
            let _ = send.finish();
            return Ok(());
        }
        send_chunk(send, tcp, buf.split().freeze()).await?;
        activity.sent_up(n as u64);
    }
}

/// Hands `chunk` to quinn. While the peer's flow control holds it back,
/// nothing reads `tcp`, so its reset is watched for instead: a client that
/// gives up on a stalled upload must end the stream, not wait for a window
/// that may never open.
async fn send_chunk(send: &mut PooledSend, tcp: &ReadHalf, chunk: Bytes) -> Result<(), Fault> {
    let write = quinn::SendStream::write_chunk(send, chunk);
    tokio::select! {
        // Nearly every chunk goes at once: no readiness wait is set up.
        biased;
        r = write => r.map_err(|e| quic_write_fault(&e)),
        () = tcp.failed() => Err(Fault::Tcp),
    }
}

async fn quic_to_tcp(
    recv: &mut PooledRecv,
    tcp: &mut WriteHalf,
    mut gone: PeerGone<'_, impl Future<Output = Result<Option<VarInt>, quinn::StoppedError>>>,
    activity: &Activity,
) -> Result<(), Fault> {
    // From here its data is read as it comes, unless TCP holds it up.
    recv.waiting().keeping_up();
    // Every chunk quinn holds for this stream (one per STREAM frame, about
    // 1.2 KB) goes to TCP in one gathered write, without a copy: one write
    // per frame was measured at half the bulk throughput.
    let mut chunks: [Bytes; GATHER] = std::array::from_fn(|_| Bytes::new());
    loop {
        let read = quinn::RecvStream::read_chunks(recv, &mut chunks).await;
        activity.moved();
        match read {
            Ok(Some(k)) => {
                let n = write_all_chunks(tcp, &mut chunks[..k], recv.waiting(), &mut gone).await?;
                activity.sent_down(n);
            }
            Ok(None) => {
                tcp.finish().await.map_err(|_| Fault::Tcp)?;
                return Ok(());
            }
            Err(e) => return Err(quic_read_fault(&e)),
        }
    }
}

/// Pipes TCP and the stream from `start` until both directions finish or
/// one fails, counting every chunk in `activity`.
pub(crate) async fn pipe(
    mut tcp_r: ReadHalf,
    mut tcp_w: WriteHalf,
    mut send: PooledSend,
    mut recv: PooledRecv,
    start: Started,
    activity: &Activity,
) -> Outcome {
    activity.sent_up(start.up);
    activity.sent_down(start.down);
    if start.down_done {
        // Nothing more arrives on it: nothing can wait unread.
        recv.waiting().keeping_up();
    }
    let ended = {
        let stopped = send.stopped();
        tokio::pin!(stopped);
        let gone = PeerGone {
            stopped,
            quiet: false,
        };
        let up = tcp_to_quic(&mut tcp_r, &mut send, start.pending, start.up_fin, activity);
        let down = quic_to_tcp(&mut recv, &mut tcp_w, gone, activity);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, start.down_done);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Ok(()) => up_done = true,
                    Err(f) => break Err(f),
                },
                r = &mut down, if !down_done => match r {
                    Ok(()) => down_done = true,
                    Err(f) => break Err(f),
                },
            }
            if up_done && down_done {
                break Ok(());
            }
        }
    };
    match ended {
        Ok(()) => {
            // Held (and counted as active) until the peer has it all; done
            // only once the peer said so. A connection lost meanwhile, or no
            // word within the bound, and nobody knows the end arrived.
            match tokio::time::timeout(ACK_WAIT, send.stopped()).await {
                Ok(Ok(_)) => Outcome::Done,
                Ok(Err(_)) | Err(_) => Outcome::QuicReset(None),
            }
        }
        Err(fault) => fail(tcp_r, tcp_w, send, recv, fault),
    }
}

/// Ends both sides after `fault`: whatever the stream's fate, the TCP
/// client must not mistake it for a complete answer, so RST, not FIN.
pub(crate) fn fail(
    tcp_r: ReadHalf,
    tcp_w: WriteHalf,
    send: PooledSend,
    recv: PooledRecv,
    fault: Fault,
) -> Outcome {
    reset_stream(send, recv);
    local::reset(tcp_r, tcp_w);
    fault.outcome()
}

/// Resets both halves of a stream (code [`RESET_TCP`]).
pub(crate) fn reset_stream(mut send: PooledSend, mut recv: PooledRecv) {
    let code = VarInt::from_u32(RESET_TCP);
    let _ = send.reset(code);
    let _ = recv.stop(code);
}
