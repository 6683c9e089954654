//! The streams the pool hands out and receives: [`PooledStream`] (opened
//! by this node), [`IncomingStream`] (opened by a peer) and the guard that
//! keeps a connection's stream count right for as long as either half of a
//! stream lives.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::ConnMeta;
use super::endpoints::EndpointHandle;
use crate::identity::PeerId;
use crate::transport::backlog::Waiting;

/// Counts a stream on its connection while alive (the active-streams gauge
/// and the retire and drain waits are set from these counts).
pub(crate) struct StreamGuard {
    meta: Arc<ConnMeta>,
    inbound: bool,
}

impl StreamGuard {
    pub(crate) fn new(meta: Arc<ConnMeta>, inbound: bool) -> StreamGuard {
        let guard = StreamGuard { meta, inbound };
        guard.counter().fetch_add(1, Ordering::AcqRel);
        guard
    }

    pub(crate) fn meta(&self) -> &Arc<ConnMeta> {
        &self.meta
    }

    fn counter(&self) -> &std::sync::atomic::AtomicUsize {
        if self.inbound {
            &self.meta.in_streams
        } else {
            &self.meta.out_streams
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.counter().fetch_sub(1, Ordering::AcqRel) == 1 {
            self.meta.count_reached_zero();
        }
    }
}

/// A bidi stream from the pool. Dropping both halves releases its slot in
/// the connection's active-stream count.
pub struct PooledStream {
    pub send: PooledSend,
    pub recv: PooledRecv,
    /// The number of the connection it runs on (see
    /// [`crate::ConnectionInfo::number`]).
    pub connection: u64,
    /// The endpoint it runs on.
    pub remote: SocketAddr,
    /// How it went, for the endpoint's latency and outlier detection.
    pub outcome: StreamOutcome,
}

/// Reports how a pooled stream went, for the balancing between a peer's
/// endpoints: when its first response byte came, and whether it failed
/// (a failed open, a reset, a failing status) or succeeded. Cloning is
/// cheap; reporting nothing changes nothing.
#[derive(Clone)]
pub struct StreamOutcome {
    endpoint: Option<EndpointHandle>,
    opened: Instant,
}

impl StreamOutcome {
    /// The first byte of the answer arrived now: the time since the open
    /// feeds the endpoint's latency estimate.
    pub fn first_byte(&self) {
        if let Some(e) = &self.endpoint {
            e.first_byte_after(self.opened.elapsed());
        }
    }

    /// Time since the stream was opened.
    pub fn elapsed(&self) -> Duration {
        self.opened.elapsed()
    }

    /// The stream did what it was for: the endpoint's run of failures ends.
    pub fn succeeded(&self) {
        if let Some(e) = &self.endpoint {
            e.ok();
        }
    }

    /// The stream failed in a way that counts against its endpoint.
    pub fn failed(&self) {
        if let Some(e) = &self.endpoint {
            e.failed();
        }
    }
}

impl PooledStream {
    pub(crate) fn new(
        guard: StreamGuard,
        (send, recv): (quinn::SendStream, quinn::RecvStream),
        endpoint: Option<EndpointHandle>,
        opened: Instant,
    ) -> PooledStream {
        let (connection, remote) = (guard.meta.key, guard.meta.conn.remote_address());
        let guard = Arc::new(guard);
        PooledStream {
            outcome: StreamOutcome { endpoint, opened },
            send: PooledSend::new(send, guard.clone()),
            recv: PooledRecv::new(recv, guard),
            connection,
            remote,
        }
    }

    pub fn into_split(self) -> (PooledSend, PooledRecv) {
        (self.send, self.recv)
    }
}

/// A stream a peer opened to this node.
pub struct IncomingStream {
    /// The configured name of the peer (or `u-<id prefix>` for an unknown
    /// peer admitted by `accept_unknown_peers`).
    pub peer: Arc<str>,
    /// The id of the certificate the calling process presented.
    pub peer_id: PeerId,
    /// The address of the calling process.
    pub remote: SocketAddr,
    pub send: PooledSend,
    pub recv: PooledRecv,
}

impl IncomingStream {
    pub(crate) fn new(
        peer: Arc<str>,
        meta: Arc<ConnMeta>,
        (send, recv): (quinn::SendStream, quinn::RecvStream),
    ) -> IncomingStream {
        let peer_id = meta.remote.id;
        let remote = meta.conn.remote_address();
        let guard = Arc::new(StreamGuard::new(meta, true));
        IncomingStream {
            peer,
            peer_id,
            remote,
            send: PooledSend::new(send, guard.clone()),
            recv: PooledRecv::new(recv, guard),
        }
    }
}

/// What the node does with streams peers open to it.
pub trait StreamHandler: Send + Sync + 'static {
    fn handle(&self, stream: IncomingStream) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl<F, Fut> StreamHandler for F
where
    F: Fn(IncomingStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(&self, stream: IncomingStream) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self(stream))
    }
}

/// The sending half of a pooled stream; derefs to [`quinn::SendStream`].
///
/// End it with [`PooledSend::finish`] (or `AsyncWrite::poll_shutdown`):
/// dropped otherwise (a failed or aborted task, a panic) it is reset with
/// code `0x17`, where quinn would finish it, so the peer never takes a cut
/// stream for a complete one. (A `finish` called on the inner
/// `quinn::SendStream` is not seen: the drop then resets the stream.)
pub struct PooledSend {
    inner: quinn::SendStream,
    /// Finished or reset on purpose.
    ended: bool,
    _guard: Arc<StreamGuard>,
}

impl PooledSend {
    fn new(inner: quinn::SendStream, guard: Arc<StreamGuard>) -> PooledSend {
        PooledSend {
            inner,
            ended: false,
            _guard: guard,
        }
    }

    /// Finishes the stream: the peer reads to its end.
    pub fn finish(&mut self) -> Result<(), quinn::ClosedStream> {
        self.ended = true;
        self.inner.finish()
    }

    /// Resets the stream with `code`.
    pub fn reset(&mut self, code: quinn::VarInt) -> Result<(), quinn::ClosedStream> {
        self.ended = true;
        self.inner.reset(code)
    }
}

impl Drop for PooledSend {
    fn drop(&mut self) {
        if !self.ended {
            let code = quinn::VarInt::from_u32(crate::transport::codes::stream::DROPPED);
            let _ = self.inner.reset(code);
        }
    }
}

/// The receiving half of a pooled stream; derefs to [`quinn::RecvStream`].
///
/// Until its reader says it keeps up (the sidecar's pipes do), the stream
/// counts as backlogged: its data may wait unread, so the node's socket
/// hands quinn one datagram per buffer (`transport::backlog`).
pub struct PooledRecv {
    inner: quinn::RecvStream,
    waiting: Waiting,
    _guard: Arc<StreamGuard>,
}

impl PooledRecv {
    fn new(inner: quinn::RecvStream, guard: Arc<StreamGuard>) -> PooledRecv {
        PooledRecv {
            inner,
            waiting: Waiting::new(guard.meta().backlog.clone()),
            _guard: guard,
        }
    }

    /// The stream's place in the node's backlog.
    pub(crate) fn waiting(&mut self) -> &mut Waiting {
        &mut self.waiting
    }
}

impl std::ops::Deref for PooledSend {
    type Target = quinn::SendStream;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for PooledSend {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl std::ops::Deref for PooledRecv {
    type Target = quinn::RecvStream;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for PooledRecv {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl AsyncWrite for PooledSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.inner), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.inner), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.ended = true;
        AsyncWrite::poll_shutdown(Pin::new(&mut self.inner), cx)
    }
}

impl AsyncRead for PooledRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.inner), cx, buf)
    }
}
