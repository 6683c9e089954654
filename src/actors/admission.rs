//! Admission of inbound connections: the gate (`pool::gate`: ignore,
//! refuse, Retry or accept, before any cryptography), the TLS handshake
//! (the verifiers decide who may connect), the hello, then the peer's
//! actor (through the supervisor) decides whether the connection is kept.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::context::NodeContext;
use super::messages::Inbound;
use crate::metrics::{self, labels::GateVerdict, labels::HandshakeReason};
use crate::pool::gate::{Gate, Verdict};
use crate::transport::hello::{self, ExchangeError, HelloError};
use crate::transport::tls;
use crate::transport::{codes, GateHandle};

/// The gate, shared by the socket, the accept loop and the handshakes it
/// lets through.
struct Shared {
    gate: Arc<GateHandle>,
    /// Log lines about refusals, at most one per kind per 10 s.
    quiet: Mutex<[Option<Instant>; 2]>,
}

impl Shared {
    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock()
    }

    /// Whether a line of `kind` may be logged now.
    fn may_log(&self, kind: usize) -> bool {
        let mut last = self.quiet.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match last[kind] {
            Some(t) if now.duration_since(t) < Duration::from_secs(10) => false,
            _ => {
                last[kind] = Some(now);
                true
            }
        }
    }

    /// A handshake the gate let through from `from` ended.
    fn finished(&self, from: IpAddr, authenticated: bool) {
        {
            let mut gate = self.gate();
            gate.finished();
            metrics::handshakes_pending(gate.pending());
            if authenticated {
                gate.succeeded(from);
                return;
            }
        }
        if let Some(period) = self.gate.failed(from) {
            if self.may_log(1) {
                tracing::warn!(source = %from, ?period, "repeated failed handshakes; ignoring this source's Initials (further sources: at most one line per 10 s)");
            }
        }
    }
}

/// Accepts inbound connections until the endpoint closes.
pub(crate) async fn accept_loop(node: Arc<NodeContext>, admit: Recipient<Inbound>) {
    let shared = Arc::new(Shared {
        gate: node.gate.clone(),
        quiet: Mutex::new([None; 2]),
    });
    while let Some(incoming) = node.endpoint.accept().await {
        if node.is_shutting_down() {
            incoming.refuse();
            continue;
        }
        let from = incoming.remote_address().ip();
        let now = shared.gate.now();
        let verdict = shared
            .gate()
            .admit(from, incoming.remote_address_validated(), now);
        match verdict {
            Verdict::Ignore => {
                metrics::handshake_gate(GateVerdict::Ignored);
                incoming.ignore();
            }
            Verdict::Refuse => {
                metrics::handshake_gate(GateVerdict::Refused);
                if shared.may_log(0) {
                    tracing::warn!(source = %from, max = node.config.handshake.max_pending, "too many handshakes under way; refusing (at most one line per 10 s)");
                }
                incoming.refuse();
            }
            Verdict::Retry => match incoming.retry() {
                Ok(()) => metrics::handshake_gate(GateVerdict::Retried),
                // It carried a token that did not validate: no second Retry.
                Err(e) => {
                    metrics::handshake_gate(GateVerdict::Refused);
                    e.into_incoming().refuse();
                }
            },
            Verdict::Accept => {
                metrics::handshakes_pending(shared.gate().pending());
                let (node, admit, shared) = (node.clone(), admit.clone(), shared.clone());
                // On a worker thread: the TLS handshake is the costly part.
                tokio::spawn(async move {
                    let authenticated = handle_incoming(incoming, node, admit).await;
                    shared.finished(from, authenticated);
                });
            }
        }
    }
}

/// TLS handshake, hello, admission by the peer's actor, answer. Returns
/// whether the client authenticated (a valid certificate of a peer and its
/// hello), whatever the actor then decided.
async fn handle_incoming(
    incoming: quinn::Incoming,
    node: Arc<NodeContext>,
    admit: Recipient<Inbound>,
) -> bool {
    let timeout = node.config.handshake.timeout;
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            if let Some(reason) = tls::uncounted_handshake_failure(&e) {
                metrics::handshake_failure(reason);
            }
            tracing::debug!(%remote, error = %e, "inbound handshake failed");
            return false;
        }
        Err(_) => {
            metrics::handshake_failure(HandshakeReason::Timeout);
            tracing::debug!(%remote, "inbound handshake timed out");
            return false;
        }
    };
    let Some(id) = tls::remote_identity(&conn).map(|who| who.id) else {
        codes::BAD_HELLO.close(&conn);
        return false;
    };
    let received = match tokio::time::timeout(timeout, hello::accept(&conn)).await {
        Ok(Ok(r)) => r,
        Ok(Err(ExchangeError::Hello(HelloError::Version { theirs }))) => {
            metrics::handshake_failure(HandshakeReason::Version);
            tracing::warn!(peer = %id, %remote, theirs, ours = hello::VERSION, "peer speaks another hello version; closing");
            codes::VERSION_MISMATCH.close(&conn);
            return false;
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %id, %remote, error = %e, "bad hello");
            codes::BAD_HELLO.close(&conn);
            return false;
        }
        Err(_) => {
            tracing::debug!(peer = %id, %remote, "no hello in time");
            codes::BAD_HELLO.close(&conn);
            return false;
        }
    };
    if received.hello.id != id {
        metrics::handshake_failure(HandshakeReason::WrongId);
        tracing::warn!(peer = %id, claimed = %received.hello.id, "hello names another identity than the certificate");
        codes::BAD_HELLO.close(&conn);
        return false;
    }
    // Admitted: the peer actor answers on the control stream it keeps.
    match admit
        .send(Inbound {
            conn: conn.clone(),
            received,
        })
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(code)) => code.close(&conn),
        Err(_) => codes::GOING_AWAY.close(&conn),
    }
    true
}
