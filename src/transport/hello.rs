//! The application hello: the first bidi stream of every connection.
//!
//! TLS alone is not enough to call a connection healthy: a client whose
//! certificate the server rejects only learns so on its first stream. So the
//! dialler sends a hello, and the connection counts only once the acceptor
//! has admitted it and answered.
//!
//! ```text
//! hello (dialler -> acceptor), 53 bytes
//!   0..4    magic "PPHL"
//!   4       protocol version (2)
//!   5..13   dialler's sequence number for this connection, u64 big-endian
//!   13..45  dialler's peer id (32 bytes; must match its certificate)
//!   45..53  dialler's instance: random per process start, u64 big-endian
//! answer (acceptor -> dialler), 14 bytes
//!   0..4    magic "PPHL"
//!   4       protocol version (2)
//!   5       status: 0 = admitted
//!   6..14   acceptor's instance, u64 big-endian
//! ```
//!
//! The instance lets each end tell a restarted peer from the one it knew:
//! connections to an earlier instance are dead (their process is gone) and
//! are dropped at once instead of after an idle timeout.
//!
//! Refusals are connection closes with a code from [`super::codes`] (a close
//! frame would discard an answer written just before it).
//!
//! Neither end finishes the stream after the hello: it stays open as the
//! connection's control stream ([`super::control`]). It holds one of the
//! acceptor's stream slots for the dialler for the connection's life.

use super::control::Control;

use crate::identity::PeerId;

pub(crate) const MAGIC: [u8; 4] = *b"PPHL";
pub(crate) const VERSION: u8 = 2;
pub(crate) const HELLO_LEN: usize = 53;
pub(crate) const ANSWER_LEN: usize = 14;
const ADMITTED: u8 = 0;

/// What the dialler says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) version: u8,
    pub(crate) seq: u64,
    pub(crate) id: PeerId,
    pub(crate) instance: u64,
}

/// Why a hello or its answer is unacceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HelloError {
    #[error("not a peerpool hello (magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("hello version {theirs}, this node speaks {VERSION}")]
    Version { theirs: u8 },
    #[error("hello refused with status {0}")]
    Status(u8),
}

impl Hello {
    pub(crate) fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = self.version;
        b[5..13].copy_from_slice(&self.seq.to_be_bytes());
        b[13..45].copy_from_slice(self.id.as_bytes());
        b[45..].copy_from_slice(&self.instance.to_be_bytes());
        b
    }

    /// Checks magic and version first, so that a node speaking another
    /// version is told so even if the rest of its hello differs.
    pub(crate) fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, HelloError> {
        check_prefix(b)?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[13..45]);
        Ok(Hello {
            version: b[4],
            seq: be_u64(&b[5..13]),
            id: PeerId::from_bytes(id),
            instance: be_u64(&b[45..53]),
        })
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_be_bytes(x)
}

fn check_prefix(b: &[u8]) -> Result<(), HelloError> {
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&b[..4]);
    if magic != MAGIC {
        return Err(HelloError::BadMagic(magic));
    }
    if b[4] != VERSION {
        return Err(HelloError::Version { theirs: b[4] });
    }
    Ok(())
}

pub(crate) fn encode_answer(instance: u64) -> [u8; ANSWER_LEN] {
    let mut b = [0u8; ANSWER_LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4] = VERSION;
    b[5] = ADMITTED;
    b[6..].copy_from_slice(&instance.to_be_bytes());
    b
}

/// The acceptor's instance, if it admitted the connection.
pub(crate) fn decode_answer(b: &[u8; ANSWER_LEN]) -> Result<u64, HelloError> {
    check_prefix(b)?;
    match b[5] {
        ADMITTED => Ok(be_u64(&b[6..14])),
        other => Err(HelloError::Status(other)),
    }
}

/// Why the hello exchange failed on the wire.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("connection lost during hello: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("hello stream: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("hello stream: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("hello stream closed early")]
    Closed,
    #[error(transparent)]
    Hello(#[from] HelloError),
}

/// Dialler side: sends `hello` and waits for the acceptor's answer; returns
/// the acceptor's instance and the stream, which stays open as the control
/// stream.
pub(crate) async fn dial(
    conn: &quinn::Connection,
    hello: Hello,
) -> Result<(u64, Control), ExchangeError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&hello.encode()).await?;
    let mut answer = [0u8; ANSWER_LEN];
    recv.read_exact(&mut answer).await?;
    let instance = decode_answer(&answer)?;
    Ok((instance, Control { send, recv }))
}

/// The acceptor's half of a hello exchange, before it answers: the answer
/// ([`encode_answer`]) is the first thing the acceptor writes on `control`.
pub(crate) struct Received {
    pub(crate) hello: Hello,
    pub(crate) control: Control,
}

/// Acceptor side: reads the dialler's hello from the first stream.
pub(crate) async fn accept(conn: &quinn::Connection) -> Result<Received, ExchangeError> {
    let (send, mut recv) = conn.accept_bi().await?;
    let mut buf = [0u8; HELLO_LEN];
    recv.read_exact(&mut buf).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => ExchangeError::Closed,
        other => ExchangeError::Read(other),
    })?;
    let hello = Hello::decode(&buf)?;
    Ok(Received {
        hello,
        control: Control { send, recv },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let h = Hello {
            version: VERSION,
            seq: 7,
            id: PeerId::from_bytes([9; 32]),
            instance: 0xdead_beef,
        };
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        assert_eq!(decode_answer(&encode_answer(42)), Ok(42));
    }

    #[test]
    fn another_version_is_named() {
        let mut b = Hello {
            version: VERSION,
            seq: 1,
            id: PeerId::from_bytes([1; 32]),
            instance: 1,
        }
        .encode();
        b[4] = VERSION + 1;
        assert_eq!(
            Hello::decode(&b),
            Err(HelloError::Version {
                theirs: VERSION + 1
            })
        );
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in any::<[u8; HELLO_LEN]>()) {
            let _ = Hello::decode(&bytes);
            let mut a = [0u8; ANSWER_LEN];
            a.copy_from_slice(&bytes[..ANSWER_LEN]);
            let _ = decode_answer(&a);
        }
    }
}
