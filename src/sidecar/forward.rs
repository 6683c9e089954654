//! `[[forward]]`: every connection accepted on `listen` (TCP or a Unix
//! socket) becomes one
//! stream to `peer` (opened through the pool, so by strategy) asking for
//! `service`.
//!
//! Safe retry: until the first byte of the answer reaches the client, the
//! client's bytes are kept (up to [`RETRY_BUFFER`]); a stream that fails
//! before that (no stream, a failing status, a reset) is tried again on
//! another endpoint of the peer, up to `retries` times and only while
//! `pool.stream_open_timeout` since the accept has not passed. Once a byte
//! of the answer reached the client, or the client sent more than
//! [`RETRY_BUFFER`] before any answer, nothing is retried: a failure then
//! resets the client's connection.
//!
//! Bounds: at `max_connections` held connections the forward stops
//! accepting (new ones wait in the kernel's listen backlog, as HAProxy's
//! `maxconn`); with `idle_timeout` set, a connection that moves no byte
//! either way for that long is reset on both sides (result `idle`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::access_log::{AccessLog, Entry, Kind};
use super::budget::StreamBudget;
use super::client::Client;
use super::header::{self, Status};
use super::limit::{Held, Slot};
use super::local::{Accept, Stream};
use super::pipe::{self, Activity, Fault, Outcome, Started, PIPE_BUFFER};
use crate::config::ForwardConfig;
use crate::metrics::labels::{RetryReason, TransferResult};
use crate::metrics::sidecar::ForwardMetrics;
use crate::{Pool, PoolError, PooledRecv, PooledSend, PooledStream, StreamOutcome};

/// Client bytes kept for a retry before the answer starts; a client that
/// sends more before any answer is not retried.
pub(crate) const RETRY_BUFFER: usize = 64 * 1024;

/// How long a stream the serving node stopped may take to say why.
const ANSWER_AFTER_STOP: Duration = Duration::from_secs(1);

/// How often a forward at its connection limit says so.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Accepts TCP connections until the task is aborted (on shutdown, or when
/// a reload removes the forward), while it holds fewer than
/// `max_connections`. Each connection is forwarded by the forward's
/// settings at its accept: a reload that changes them sends new ones on
/// `settings`.
pub(crate) async fn serve(listener: Accept, mut settings: watch::Receiver<Arc<Forward>>) {
    let held = Arc::new(Held::default());
    let mut warned: Option<Instant> = None;
    loop {
        held.room(
            &mut settings,
            |f| f.config.max_connections as usize,
            |f| {
                if warned.is_none_or(|at| at.elapsed() >= FULL_WARNING_EVERY) {
                    warned = Some(Instant::now());
                    tracing::warn!(forward = %f.config.listen, max_connections = f.config.max_connections,
                        "forward full: new connections wait in the listen backlog");
                }
            },
        )
        .await;
        match listener.accept().await {
            Ok(conn) => {
                let forward = settings.borrow().clone();
                let slot = Slot::take(&held, forward.metrics.clone());
                tokio::spawn(async move {
                    forward.one(conn).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: keep serving.
                let label = settings.borrow().label.clone();
                tracing::warn!(forward = %label, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One `[[forward]]`'s settings.
pub(crate) struct Forward {
    pub(crate) config: ForwardConfig,
    pool: Pool,
    metrics: Arc<ForwardMetrics>,
    memory: Arc<StreamBudget>,
    log: Arc<AccessLog>,
    /// The listen address and the peer, as access log lines show them.
    label: Arc<str>,
    peer: Arc<str>,
    /// How long after the accept a retry may still start.
    budget: Duration,
}

/// What one connection's access log line needs from its transfer.
#[derive(Default)]
struct Trail {
    /// The endpoint of the last stream opened for it.
    endpoint: Option<SocketAddr>,
    retries: u32,
}

impl Forward {
    /// `None` when the service name cannot be sent (`check` refuses such
    /// a config).
    pub(crate) fn new(
        config: ForwardConfig,
        pool: Pool,
        metrics: Arc<ForwardMetrics>,
        memory: Arc<StreamBudget>,
        log: Arc<AccessLog>,
    ) -> Option<Forward> {
        // Checked once here; each connection encodes its own addresses.
        header::encode(&config.service, None)?;
        Some(Forward {
            budget: pool.config().pool.stream_open_timeout,
            label: config.listen.to_string().into(),
            peer: config.peer.as_str().into(),
            config,
            pool,
            metrics,
            memory,
            log,
        })
    }
}

/// How one try of a stream went.
enum Try {
    /// The answer began (or ended empty): pipe the rest.
    Answered {
        send: PooledSend,
        recv: PooledRecv,
        started: Started,
        outcome: StreamOutcome,
    },
    /// It failed before the answer began and may be tried elsewhere; if it
    /// is not, the connection ends as `otherwise`.
    Failed {
        reason: RetryReason,
        endpoint: SocketAddr,
        otherwise: Outcome,
    },
    /// It ended and must not be tried again (the client's connection was
    /// reset or got its answer).
    Over(Outcome),
}

/// What the serving node sent first.
enum Answer {
    Data(Bytes),
    End,
}

impl Forward {
    async fn one(self: Arc<Self>, conn: Stream) {
        let accepted = Instant::now();
        let activity = Activity::default();
        let mut trail = Trail::default();
        let run = self.run(
            Client::new(conn, &self.config.service),
            accepted,
            &activity,
            &mut trail,
        );
        let limit = self.config.idle_timeout;
        let result = if limit.is_zero() {
            run.await
        } else {
            // Dropping the transfer resets both sides: the client socket
            // is armed (RST) and an unfinished stream resets on drop.
            tokio::select! {
                result = run => result,
                () = activity.idle(limit) => {
                    tracing::debug!(forward = %self.config.listen, ?limit, "idle connection reset");
                    TransferResult::Idle
                }
            }
        };
        let took = accepted.elapsed();
        self.metrics.record(result, took);
        self.log.log(|| {
            let (bytes_up, bytes_down) = activity.bytes();
            Entry {
                time: std::time::SystemTime::now(),
                kind: Kind::Forward,
                name: self.label.clone(),
                peer: self.peer.clone(),
                endpoint: trail.endpoint,
                bytes_up,
                bytes_down,
                duration_ms: took.as_secs_f64() * 1e3,
                result,
                retries: trail.retries,
            }
        });
    }

    async fn run(
        &self,
        mut client: Client,
        accepted: Instant,
        activity: &Activity,
        trail: &mut Trail,
    ) -> TransferResult {
        let deadline = accepted + self.budget;
        // Held until the connection ends: what its streams may buffer.
        let Some(_memory) = self.memory.reserve(deadline.into()).await else {
            tracing::debug!(forward = %self.config.listen, "no room in node.stream_memory within stream_open_timeout");
            client.abort();
            return TransferResult::Overloaded;
        };
        let mut avoid: Vec<SocketAddr> = Vec::new();
        loop {
            let may_retry = |client: &Client| {
                client.replayable
                    && trail.retries < self.config.retries
                    && Instant::now() < deadline
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let opened = tokio::time::timeout(
                left,
                self.pool.open_stream_avoiding(&self.config.peer, &avoid),
            )
            .await;
            let stream = match opened {
                Ok(Ok(stream)) => {
                    trail.endpoint = Some(stream.remote);
                    stream
                }
                Ok(Err(e)) => {
                    // A connection lost under the open is worth another
                    // try; a peer that is unreachable, draining or unknown
                    // is the same on the next.
                    if matches!(e, PoolError::Connection { .. }) && may_retry(&client) {
                        trail.retries += 1;
                        self.metrics.retried(RetryReason::OpenFailed);
                        continue;
                    }
                    tracing::debug!(forward = %self.config.listen, peer = %self.config.peer, error = %e, "no stream for a TCP connection");
                    client.abort();
                    return e.reason().into();
                }
                Err(_) => {
                    client.abort();
                    return TransferResult::Timeout;
                }
            };
            match self.try_stream(&mut client, stream, activity).await {
                Try::Answered {
                    send,
                    recv,
                    started,
                    outcome,
                } => {
                    let ended = pipe::pipe(client.r, client.w, send, recv, started, activity).await;
                    match &ended {
                        Outcome::Done => outcome.succeeded(),
                        Outcome::QuicReset(_) => outcome.failed(),
                        _ => {}
                    }
                    self.log_failure(&ended, trail.retries);
                    return ended.label();
                }
                Try::Over(ended) => {
                    client.abort();
                    self.log_failure(&ended, trail.retries);
                    return ended.label();
                }
                Try::Failed {
                    reason,
                    endpoint,
                    otherwise,
                } => {
                    if may_retry(&client) {
                        trail.retries += 1;
                        self.metrics.retried(reason);
                        tracing::debug!(forward = %self.config.listen, peer = %self.config.peer, %endpoint, ?reason, "retrying on another endpoint");
                        avoid.push(endpoint);
                        continue;
                    }
                    client.abort();
                    self.log_failure(&otherwise, trail.retries);
                    return otherwise.label();
                }
            }
        }
    }

    fn log_failure(&self, outcome: &Outcome, retries: u32) {
        if !matches!(outcome, Outcome::Done) {
            tracing::debug!(forward = %self.config.listen, peer = %self.config.peer, ?outcome, retries, "forwarded connection failed");
        }
    }

    /// Sends the header and what the client sent so far, then goes on
    /// relaying the client's bytes until the serving node's first answer.
    async fn try_stream(
        &self,
        client: &mut Client,
        stream: PooledStream,
        activity: &Activity,
    ) -> Try {
        let PooledStream {
            mut send,
            mut recv,
            remote,
            outcome,
            ..
        } = stream;
        let fail = |fault: Fault, send: PooledSend, recv: PooledRecv| {
            pipe::reset_stream(send, recv);
            if against_endpoint(fault) {
                outcome.failed();
            }
            match retry_reason(fault) {
                Some(reason) => Try::Failed {
                    reason,
                    endpoint: remote,
                    otherwise: fault.outcome(),
                },
                None => Try::Over(fault.outcome()),
            }
        };
        if let Err(e) = quinn::SendStream::write_chunk(&mut send, client.head.clone()).await {
            return fail(pipe::quic_write_fault(&e), send, recv);
        }
        // `sent`: bytes of `client.buf` written to this stream.
        let mut sent = 0usize;
        let mut finished = false;
        let mut chunk = vec![0u8; PIPE_BUFFER];
        let answer = {
            let answer = first_answer(&mut recv);
            tokio::pin!(answer);
            loop {
                if client.fin && sent == client.buf.len() && !finished {
                    finished = true;
                    let _ = send.finish();
                }
                let room = client.buf.len() - sent < PIPE_BUFFER;
                tokio::select! {
                    a = &mut answer => break Some(a),
                    w = quinn::SendStream::write(&mut send, &client.buf[sent..]), if sent < client.buf.len() => match w {
                        Ok(n) => sent += n,
                        // The answer's side says how the stream ended (a
                        // status before the stop, a reset), if it says soon.
                        Err(e) => {
                            let fault = pipe::quic_write_fault(&e);
                            break Some(
                                tokio::time::timeout(ANSWER_AFTER_STOP, &mut answer)
                                    .await
                                    .unwrap_or(Err(fault)),
                            );
                        }
                    },
                    // With its buffer full it is not read, but a reset
                    // of the client (gone while flow control holds its
                    // upload back) still ends the stream.
                    r = async {
                        if room {
                            client.r.read(&mut chunk).await
                        } else {
                            client.r.failed().await;
                            Err(std::io::ErrorKind::ConnectionReset.into())
                        }
                    }, if !client.fin => match r {
                        Ok(0) => {
                            activity.moved();
                            client.fin = true;
                        }
                        Ok(n) => {
                            activity.moved();
                            client.buf.extend_from_slice(&chunk[..n]);
                            if client.replayable && client.buf.len() > RETRY_BUFFER {
                                client.replayable = false;
                            }
                            if !client.replayable {
                                client.flushed += sent as u64;
                                client.buf.drain(..sent);
                                sent = 0;
                            }
                        }
                        // The client reset: nothing to answer.
                        Err(_) => break None,
                    },
                }
            }
        };
        let Some(answer) = answer else {
            pipe::reset_stream(send, recv);
            return Try::Over(Outcome::TcpReset);
        };
        let pending = Bytes::copy_from_slice(&client.buf[sent..]);
        let up = client.flushed + sent as u64;
        let (down, down_done) = match answer {
            Err(fault) => return fail(fault, send, recv),
            Ok(Answer::Data(first)) => {
                // From here on the client has seen the answer: no retry.
                client.replayable = false;
                outcome.first_byte();
                if client.w.write_all(&first).await.is_err() {
                    pipe::reset_stream(send, recv);
                    return Try::Over(Outcome::TcpReset);
                }
                (first.len() as u64, false)
            }
            Ok(Answer::End) => {
                client.replayable = false;
                outcome.first_byte();
                if client.w.finish().await.is_err() {
                    pipe::reset_stream(send, recv);
                    return Try::Over(Outcome::TcpReset);
                }
                (0, true)
            }
        };
        Try::Answered {
            send,
            recv,
            started: Started {
                pending,
                up_fin: client.fin,
                up,
                down,
                down_done,
            },
            outcome,
        }
    }
}

/// A failure that says something about the endpoint (not about the
/// client or the config): it counts towards the endpoint's ejection.
fn against_endpoint(fault: Fault) -> bool {
    // A full node is busy, not broken: ejecting it would only move its
    // load. It is retried elsewhere all the same.
    retry_reason(fault).is_some() && !matches!(fault, Fault::Refused(Status::Overloaded))
}

/// Whether a failure before the answer is worth a try elsewhere: a reset
/// (a lost connection, a draining node's 0x16) or a failing status. Other
/// statuses (unknown service, forbidden, malformed) say the same
/// everywhere.
fn retry_reason(fault: Fault) -> Option<RetryReason> {
    match fault {
        Fault::Quic(_) => Some(RetryReason::Reset),
        Fault::Refused(Status::UpstreamUnreachable | Status::Draining | Status::Overloaded) => {
            Some(RetryReason::Refused)
        }
        Fault::Refused(_) | Fault::BadStatus(_) | Fault::Tcp => None,
    }
}

/// Reads the status byte, then the first chunk of the upstream's answer.
async fn first_answer(recv: &mut PooledRecv) -> Result<Answer, Fault> {
    let recv: &mut quinn::RecvStream = recv;
    let mut status = [0u8; 1];
    match recv.read_exact(&mut status).await {
        Ok(()) => match Status::from_byte(status[0]) {
            Some(Status::Ok) => {}
            Some(s) => return Err(Fault::Refused(s)),
            None => return Err(Fault::BadStatus(status[0])),
        },
        Err(quinn::ReadExactError::ReadError(e)) => return Err(pipe::quic_read_fault(&e)),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(Fault::Quic(None)),
    }
    match recv.read_chunk(PIPE_BUFFER, true).await {
        Ok(Some(chunk)) => Ok(Answer::Data(chunk.bytes)),
        Ok(None) => Ok(Answer::End),
        Err(e) => Err(pipe::quic_read_fault(&e)),
    }
}
