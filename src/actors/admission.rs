//! Admission of inbound connections: the accept loop, the TLS handshake
//! (the verifiers decide who may connect), the hello, then the peer's
//! actor (through the supervisor) decides whether the connection is kept.

use std::sync::Arc;

use actix::prelude::*;

use super::context::NodeContext;
use super::messages::Inbound;
use crate::metrics::{self, labels::HandshakeReason};
use crate::transport::codes;
use crate::transport::hello::{self, ExchangeError, HelloError};
use crate::transport::tls;

/// Accepts inbound connections until the endpoint closes.
pub(crate) async fn accept_loop(node: Arc<NodeContext>, admit: Recipient<Inbound>) {
    while let Some(incoming) = node.endpoint.accept().await {
        if node.is_shutting_down() {
            incoming.refuse();
            continue;
        }
        actix::spawn(handle_incoming(incoming, node.clone(), admit.clone()));
    }
}

/// TLS handshake, hello, admission by the peer's actor, answer.
async fn handle_incoming(
    incoming: quinn::Incoming,
    node: Arc<NodeContext>,
    admit: Recipient<Inbound>,
) {
    let timeout = node.config.pool.connection_timeout;
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            if let Some(reason) = tls::uncounted_handshake_failure(&e) {
                metrics::handshake_failure(reason);
            }
            tracing::debug!(%remote, error = %e, "inbound handshake failed");
            return;
        }
        Err(_) => {
            metrics::handshake_failure(HandshakeReason::Timeout);
            tracing::debug!(%remote, "inbound handshake timed out");
            return;
        }
    };
    let Some(id) = tls::remote_identity(&conn).map(|who| who.id) else {
        codes::BAD_HELLO.close(&conn);
        return;
    };
    let received = match tokio::time::timeout(timeout, hello::accept(&conn)).await {
        Ok(Ok(r)) => r,
        Ok(Err(ExchangeError::Hello(HelloError::Version { theirs }))) => {
            metrics::handshake_failure(HandshakeReason::Version);
            tracing::warn!(peer = %id, %remote, theirs, ours = hello::VERSION, "peer speaks another hello version; closing");
            codes::VERSION_MISMATCH.close(&conn);
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %id, %remote, error = %e, "bad hello");
            codes::BAD_HELLO.close(&conn);
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %id, %remote, "no hello in time");
            codes::BAD_HELLO.close(&conn);
            return;
        }
    };
    if received.hello.id != id {
        metrics::handshake_failure(HandshakeReason::WrongId);
        tracing::warn!(peer = %id, claimed = %received.hello.id, "hello names another identity than the certificate");
        codes::BAD_HELLO.close(&conn);
        return;
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
}
