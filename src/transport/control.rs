//! The control stream: the hello's stream, kept open for the life of the
//! connection.
//!
//! After the hello and its answer, either end may send one-byte signals on
//! it. They exist for one job: closing an excess connection without losing a
//! stream. Either end may be opening a stream on a connection at the moment
//! the other decides to retire it, and a close would take that stream down
//! with it. So an end that retires a connection sends `RETIRE` (open no new
//! streams here); the other end stops routing to it and answers `RETIRE`
//! too. Each end sends `DONE` once every stream it opened there has
//! finished end to end, and the connection is closed only after both `DONE`s
//! (or after `admin.drain_timeout`, whichever comes first).
//!
//! The second job: a graceful drain without a refused stream. A node that
//! drains (it shuts down, or removes that peer) sends `DRAINING` on every
//! connection before it refuses anything; the peer stops routing new
//! streams to that node at once and answers `DRAINED`. Only connections
//! whose peer did not answer within a short bound get new streams refused.
//!
//! ```text
//! 0x01  RETIRE    this connection is being retired: open no new streams on it
//! 0x02  DONE      every stream I opened on it has finished
//! 0x03  DRAINING  this node drains: open no new streams on any connection to it
//! 0x04  DRAINED   (the answer to DRAINING) no new stream will come from me
//! ```
//!
//! Unknown bytes are ignored (logged), so later versions can add signals.
//! Each end sends `RETIRE` and `DONE` at most once per connection: a second
//! one is a protocol violation and closes the connection with
//! [`codes::PROTOCOL_VIOLATION`]. A repeated `DRAINING` or `DRAINED` is
//! ignored, so a peer cannot make this end queue answers without bound.

use tokio::sync::mpsc;

use super::codes;

/// A control signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Retire = 0,
    Done,
    Draining,
    Drained,
}

impl Signal {
    pub(crate) const ALL: [Signal; 4] = [
        Signal::Retire,
        Signal::Done,
        Signal::Draining,
        Signal::Drained,
    ];

    pub(crate) fn byte(self) -> u8 {
        match self {
            Signal::Retire => 0x01,
            Signal::Done => 0x02,
            Signal::Draining => 0x03,
            Signal::Drained => 0x04,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.byte() == b)
    }
}

/// What the peer has sent on one control stream so far: decides, byte by
/// byte, what reaches the connection's owner. Pure, so it is fuzzed.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    seen: [bool; Signal::ALL.len()],
}

/// The peer broke the control stream's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Violation {
    #[error("the peer sent {0:?} twice on one connection")]
    Repeated(Signal),
}

impl Inbox {
    /// The signal `byte` carries for the owner, `None` for one to ignore
    /// (unknown, or a repeated drain signal), or the rule it breaks.
    pub(crate) fn accept(&mut self, byte: u8) -> Result<Option<Signal>, Violation> {
        let Some(signal) = Signal::from_byte(byte) else {
            return Ok(None);
        };
        let seen = &mut self.seen[signal as usize];
        if !std::mem::replace(seen, true) {
            return Ok(Some(signal));
        }
        match signal {
            Signal::Retire | Signal::Done => Err(Violation::Repeated(signal)),
            Signal::Draining | Signal::Drained => Ok(None),
        }
    }
}

/// Both halves of a connection's control stream, right after the hello.
pub(crate) struct Control {
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
}

/// Queues signals to the peer; they are written in order by the stream's
/// task. Cheap to clone; sending after the connection closed does nothing.
#[derive(Clone, Debug)]
pub(crate) struct ControlTx(mpsc::UnboundedSender<Signal>);

impl ControlTx {
    pub(crate) fn send(&self, signal: Signal) {
        let _ = self.0.send(signal);
    }
}

impl Control {
    /// Starts the one task that serves this control stream: it writes
    /// `first` (the hello answer, on the accepting end), then every queued
    /// signal, and hands every signal the peer sends to `on_signal` (once
    /// each, see [`Inbox`]); a peer that breaks the rules gets `conn`
    /// closed. It ends when the connection does.
    pub(crate) fn serve(
        self,
        conn: quinn::Connection,
        first: Option<Vec<u8>>,
        mut on_signal: impl FnMut(Signal) + Send + 'static,
    ) -> ControlTx {
        // At most four signals per end and connection: unbounded is bounded.
        let (tx, mut rx) = mpsc::unbounded_channel::<Signal>();
        let Control { mut send, mut recv } = self;
        tokio::spawn(async move {
            if let Some(first) = first {
                if send.write_all(&first).await.is_err() {
                    return;
                }
            }
            let mut byte = [0u8; 1];
            let mut inbox = Inbox::default();
            let mut queue_open = true;
            loop {
                tokio::select! {
                    signal = rx.recv(), if queue_open => match signal {
                        Some(s) => {
                            if send.write_all(&[s.byte()]).await.is_err() {
                                return;
                            }
                        }
                        // The connection's owner let go; keep listening.
                        None => queue_open = false,
                    },
                    read = recv.read(&mut byte) => match read {
                        Ok(Some(1)) => match inbox.accept(byte[0]) {
                            Ok(Some(s)) => on_signal(s),
                            Ok(None) => tracing::debug!(byte = byte[0], "control byte ignored"),
                            Err(violation) => {
                                tracing::warn!(remote = %conn.remote_address(), %violation, "closing the connection");
                                codes::PROTOCOL_VIOLATION.close(&conn);
                                return;
                            }
                        },
                        Ok(Some(_)) => {}
                        // Finished, reset or the connection is gone.
                        Ok(None) | Err(_) => return,
                    },
                }
            }
        });
        ControlTx(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_round_trips_and_other_bytes_are_not_signals() {
        for s in Signal::ALL {
            assert_eq!(Signal::from_byte(s.byte()), Some(s));
        }
        let known = (0..=255u8)
            .filter(|b| Signal::from_byte(*b).is_some())
            .count();
        assert_eq!(known, Signal::ALL.len());
    }

    #[test]
    fn retire_and_done_count_once_and_a_repeat_is_a_violation() {
        for s in [Signal::Retire, Signal::Done] {
            let mut inbox = Inbox::default();
            assert_eq!(inbox.accept(s.byte()), Ok(Some(s)));
            assert_eq!(inbox.accept(0x7f), Ok(None));
            assert_eq!(inbox.accept(s.byte()), Err(Violation::Repeated(s)));
        }
    }

    #[test]
    fn a_repeated_drain_signal_is_ignored_not_answered_again() {
        for s in [Signal::Draining, Signal::Drained] {
            let mut inbox = Inbox::default();
            assert_eq!(inbox.accept(s.byte()), Ok(Some(s)));
            for _ in 0..3 {
                assert_eq!(inbox.accept(s.byte()), Ok(None));
            }
        }
    }
}
