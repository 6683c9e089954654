//! Opening a stream: the hot path. It reads the table the peer's actor
//! publishes ([`PeerShared::pick`]) and never sends the actor a message.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use std::net::SocketAddr;

use super::endpoints::EndpointHandle;
use super::error::PoolError;
use super::shared::{PeerShared, Picked, Route};
use super::streams::{PooledStream, StreamGuard};
use crate::pool::ConnKey;

type Bi = (quinn::SendStream, quinn::RecvStream);
type OpenFuture = Pin<Box<dyn Future<Output = Result<Bi, quinn::ConnectionError>> + Send>>;

/// A stream being opened on one connection; its guard counts it as load on
/// that connection while it waits, so the strategy sees the pressure.
struct Opening {
    guard: StreamGuard,
    open: OpenFuture,
    endpoint: Option<EndpointHandle>,
}

impl Opening {
    fn start(route: &Route) -> Opening {
        let conn = route.meta.conn.clone();
        Opening {
            guard: StreamGuard::new(route.meta.clone(), false),
            open: Box::pin(async move { conn.open_bi().await }),
            endpoint: None,
        }
    }

    fn picked(p: Picked<Opening>) -> Opening {
        let mut o = p.opening;
        o.endpoint = Some(p.endpoint);
        o
    }

    fn key(&self) -> ConnKey {
        self.guard.meta().key
    }
}

/// The first of `pending` to complete, removed from it (the others keep
/// waiting; dropping a pending open allocates nothing).
async fn first_ready(pending: &mut Vec<Opening>) -> (Opening, Result<Bi, quinn::ConnectionError>) {
    let (i, result) = std::future::poll_fn(|cx| {
        for (i, o) in pending.iter_mut().enumerate() {
            if let Poll::Ready(r) = o.open.as_mut().poll(cx) {
                return Poll::Ready((i, r));
            }
        }
        Poll::Pending
    })
    .await;
    (pending.swap_remove(i), result)
}

impl PeerShared {
    /// Opens a bidi stream on a connection chosen by the strategy. Waits for a
    /// first connection while the peer is connecting, moves on to the next
    /// connection when the chosen one is dead or has no stream credit left
    /// (the peer's `max_concurrent_streams`), waits for whichever saturated
    /// connection frees a slot first, and never waits longer than
    /// `stream_open_timeout` in all. Endpoints in `exclude` are avoided
    /// while another endpoint has a usable connection (a retry elsewhere).
    pub(crate) async fn open_stream(
        self: &Arc<Self>,
        exclude: &[SocketAddr],
    ) -> Result<PooledStream, PoolError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.open_timeout;
        // Connections already tried: dead ones and saturated ones.
        let mut tried: Vec<ConnKey> = Vec::new();
        let mut saturated: Vec<Opening> = Vec::new();
        let mut last_err: Option<quinn::ConnectionError> = None;
        loop {
            let mut opening = match self.pick(&tried, exclude, Opening::start) {
                Err(e) => return Err(self.fail(e)),
                Ok(Some(picked)) => Opening::picked(picked),
                Ok(None) if !saturated.is_empty() => {
                    // Every usable connection is out of credit: take the
                    // first slot any of them frees.
                    match tokio::time::timeout_at(deadline, first_ready(&mut saturated)).await {
                        Err(_) => {
                            return Err(self.fail(PoolError::Timeout {
                                peer: self.config.name.clone(),
                                after: self.open_timeout,
                            }));
                        }
                        Ok((opening, Ok(stream))) => {
                            return Ok(self.opened(opening, stream, started));
                        }
                        Ok((opening, Err(e))) => {
                            self.open_failed(&opening, &e);
                            last_err = Some(e);
                            continue;
                        }
                    }
                }
                Ok(None) if !tried.is_empty() => {
                    let err = match last_err.take() {
                        Some(source) => PoolError::Connection {
                            peer: self.config.name.clone(),
                            source,
                        },
                        None => PoolError::NoHealthyConnection {
                            peer: self.config.name.clone(),
                        },
                    };
                    return Err(self.fail(err));
                }
                Ok(None) => {
                    // Nothing usable yet: wait for the actor to publish a
                    // connection or a state, within the deadline. Register
                    // first, then look again, so no change slips between.
                    let notified = self.changed().notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    match self.pick(&tried, exclude, Opening::start) {
                        Ok(Some(picked)) => Opening::picked(picked),
                        // The loop's own pick reports why.
                        Err(_) => continue,
                        Ok(None) => {
                            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                                return Err(self.fail(PoolError::NoHealthyConnection {
                                    peer: self.config.name.clone(),
                                }));
                            }
                            continue;
                        }
                    }
                }
            };
            tried.push(opening.key());
            // open_bi completes at once while the peer grants credit; a
            // pending open means the connection is saturated.
            match std::future::poll_fn(|cx| Poll::Ready(opening.open.as_mut().poll(cx))).await {
                Poll::Ready(Ok(stream)) => return Ok(self.opened(opening, stream, started)),
                Poll::Ready(Err(e)) => {
                    self.open_failed(&opening, &e);
                    last_err = Some(e);
                }
                Poll::Pending => saturated.push(opening),
            }
        }
    }

    fn opened(&self, opening: Opening, stream: Bi, started: Instant) -> PooledStream {
        // The counters and gauges of streams are set from these atomics by
        // the actor's tick: no metrics call per stream but the histogram.
        self.streams_opened.fetch_add(1, Ordering::Relaxed);
        self.metrics.record_open(started.elapsed());
        PooledStream::new(opening.guard, stream, opening.endpoint, started)
    }

    /// An open failed on a connection: quinn fails `open_bi` only on a
    /// closed connection, whose close the actor sees by itself; this open
    /// moves on to another connection. It counts against the endpoint.
    fn open_failed(&self, opening: &Opening, e: &quinn::ConnectionError) {
        tracing::debug!(peer = %self.config.name, conn = opening.key(), error = %e, "open failed; trying another connection");
        if let Some(endpoint) = &opening.endpoint {
            endpoint.failed();
        }
    }
}
