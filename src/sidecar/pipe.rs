//! Copying bytes between a TCP connection and a QUIC stream, both ways.
//!
//! - Each direction has one fixed buffer of [`PIPE_BUFFER`] bytes: memory per
//!   stream is bounded however fast or slow either side reads (QUIC flow
//!   control and TCP backpressure do the rest).
//! - A half-close maps across: TCP FIN becomes QUIC `finish()`, a finished
//!   QUIC stream becomes a TCP FIN.
//! - A reset maps across: a TCP reset resets the QUIC stream (both halves,
//!   code [`RESET_TCP`]); a QUIC reset, a stop or a lost connection resets
//!   the TCP connection (RST, never a FIN that could pass for a complete
//!   answer).

use std::time::Duration;

use quinn::VarInt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::header::{Status, RESET_TCP};
use crate::metrics::labels::TransferResult;
use crate::{PooledRecv, PooledSend};

/// Bytes buffered per direction per stream.
pub(crate) const PIPE_BUFFER: usize = 32 * 1024;

/// How a pipe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Both directions finished cleanly.
    Done { up: u64, down: u64 },
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
            Outcome::Done { .. } => TransferResult::Ok,
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

enum Fault {
    Tcp,
    Quic(Option<u64>),
    Refused(Status),
    BadStatus(u8),
}

fn quic_read_fault(e: &quinn::ReadError) -> Fault {
    match e {
        quinn::ReadError::Reset(code) => Fault::Quic(Some(code.into_inner())),
        _ => Fault::Quic(None),
    }
}

fn quic_write_fault(e: &quinn::WriteError) -> Fault {
    match e {
        quinn::WriteError::Stopped(code) => Fault::Quic(Some(code.into_inner())),
        _ => Fault::Quic(None),
    }
}

// The quinn methods (with their typed errors) are called through the
// pooled wrappers' `Deref`, not the tokio traits the wrappers implement.
async fn tcp_to_quic(tcp: &mut OwnedReadHalf, send: &mut PooledSend) -> Result<u64, Fault> {
    let send: &mut quinn::SendStream = send;
    let mut buf = vec![0u8; PIPE_BUFFER];
    let mut total = 0u64;
    loop {
        let n = tcp.read(&mut buf).await.map_err(|_| Fault::Tcp)?;
        if n == 0 {
            // A stream already stopped by the peer cannot be finished; the
            // other direction reports how it ended.
            let _ = send.finish();
            return Ok(total);
        }
        send.write_all(&buf[..n])
            .await
            .map_err(|e| quic_write_fault(&e))?;
        total += n as u64;
    }
}

async fn quic_to_tcp(
    recv: &mut PooledRecv,
    tcp: &mut OwnedWriteHalf,
    expect_status: bool,
) -> Result<u64, Fault> {
    let recv: &mut quinn::RecvStream = recv;
    if expect_status {
        let mut status = [0u8; 1];
        match recv.read_exact(&mut status).await {
            Ok(()) => match Status::from_byte(status[0]) {
                Some(Status::Ok) => {}
                Some(s) => return Err(Fault::Refused(s)),
                None => return Err(Fault::BadStatus(status[0])),
            },
            Err(quinn::ReadExactError::ReadError(e)) => return Err(quic_read_fault(&e)),
            Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(Fault::Quic(None)),
        }
    }
    let mut buf = vec![0u8; PIPE_BUFFER];
    let mut total = 0u64;
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => {
                tcp.write_all(&buf[..n]).await.map_err(|_| Fault::Tcp)?;
                total += n as u64;
            }
            Ok(None) => {
                tcp.shutdown().await.map_err(|_| Fault::Tcp)?;
                return Ok(total);
            }
            Err(e) => return Err(quic_read_fault(&e)),
        }
    }
}

/// Pipes `tcp` and the stream until both directions finish or one fails.
/// With `expect_status` the first byte back must be [`Status::Ok`].
pub(crate) async fn pipe(
    tcp: TcpStream,
    mut send: PooledSend,
    mut recv: PooledRecv,
    expect_status: bool,
) -> Outcome {
    let (mut tcp_r, mut tcp_w) = tcp.into_split();
    let ended = {
        let up = tcp_to_quic(&mut tcp_r, &mut send);
        let down = quic_to_tcp(&mut recv, &mut tcp_w, expect_status);
        tokio::pin!(up, down);
        let (mut up_bytes, mut down_bytes) = (None, None);
        loop {
            tokio::select! {
                r = &mut up, if up_bytes.is_none() => match r {
                    Ok(n) => up_bytes = Some(n),
                    Err(f) => break Err(f),
                },
                r = &mut down, if down_bytes.is_none() => match r {
                    Ok(n) => down_bytes = Some(n),
                    Err(f) => break Err(f),
                },
            }
            if let (Some(up), Some(down)) = (up_bytes, down_bytes) {
                break Ok((up, down));
            }
        }
    };
    match ended {
        Ok((up, down)) => Outcome::Done { up, down },
        Err(Fault::Tcp) => {
            let code = VarInt::from_u32(RESET_TCP);
            let _ = send.reset(code);
            let _ = recv.stop(code);
            reset_tcp(tcp_r, tcp_w);
            Outcome::TcpReset
        }
        Err(fault) => {
            // Whatever the stream's fate, the TCP client must not mistake it
            // for a complete answer: RST, not FIN.
            let code = VarInt::from_u32(RESET_TCP);
            let _ = send.reset(code);
            let _ = recv.stop(code);
            reset_tcp(tcp_r, tcp_w);
            match fault {
                Fault::Quic(code) => Outcome::QuicReset(code),
                Fault::Refused(s) => Outcome::Refused(s),
                Fault::BadStatus(b) => Outcome::BadStatus(b),
                Fault::Tcp => Outcome::TcpReset,
            }
        }
    }
}

/// Closes a TCP connection with RST (linger 0, and no FIN from the write half).
pub(crate) fn reset_tcp(r: OwnedReadHalf, w: OwnedWriteHalf) {
    if let Ok(stream) = r.reunite(w) {
        abort(stream);
    }
}

/// Closes a whole TCP stream with RST.
pub(crate) fn abort(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
