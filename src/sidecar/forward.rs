//! `[[forward]]`: every TCP connection accepted on `listen` becomes one
//! stream to `peer` (opened through the pool, so by strategy) asking for
//! `service`.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::header;
use super::pipe::{self, Outcome};
use crate::config::ForwardConfig;
use crate::metrics::labels::TransferResult;
use crate::metrics::sidecar::ForwardMetrics;
use crate::Pool;

/// Accepts TCP connections until the task is aborted (on shutdown).
pub(crate) async fn serve(
    listener: TcpListener,
    config: ForwardConfig,
    pool: Pool,
    metrics: Arc<ForwardMetrics>,
) {
    let Some(head) = header::encode(&config.service) else {
        tracing::error!(forward = %config.listen, service = %config.service, "service name cannot be sent; forward disabled");
        return;
    };
    let head: Arc<[u8]> = head.into();
    let config = Arc::new(config);
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(forward_one(
                    tcp,
                    pool.clone(),
                    config.clone(),
                    head.clone(),
                    metrics.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: keep serving.
                tracing::warn!(forward = %config.listen, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn forward_one(
    tcp: TcpStream,
    pool: Pool,
    config: Arc<ForwardConfig>,
    head: Arc<[u8]>,
    metrics: Arc<ForwardMetrics>,
) {
    let started = Instant::now();
    let result = match pool.open_stream_to(&config.peer).await {
        Err(e) => {
            tracing::debug!(forward = %config.listen, peer = %config.peer, error = %e, "no stream for a TCP connection");
            pipe::abort(tcp);
            e.reason().into()
        }
        Ok(stream) => {
            let (mut send, recv) = stream.into_split();
            if send.write_all(&head).await.is_err() {
                pipe::abort(tcp);
                TransferResult::StreamReset
            } else {
                let outcome = pipe::pipe(tcp, send, recv, true).await;
                if !matches!(outcome, Outcome::Done { .. }) {
                    tracing::debug!(forward = %config.listen, peer = %config.peer, ?outcome, "forwarded connection failed");
                }
                outcome.label()
            }
        }
    };
    metrics.record(result, started.elapsed());
}
