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
use crate::metrics::{FORWARD_CONNECTIONS, FORWARD_DURATION};
use crate::Pool;

/// Accepts TCP connections until the task is aborted (on shutdown).
pub async fn serve(listener: TcpListener, config: ForwardConfig, pool: Pool) {
    let label = config.listen.to_string();
    // Created at zero so that dashboards see the forward before traffic.
    metrics::counter!(FORWARD_CONNECTIONS, "forward" => label.clone(), "result" => "ok")
        .increment(0);
    let Some(head) = header::encode(&config.service) else {
        tracing::error!(forward = %label, service = %config.service, "service name cannot be sent; forward disabled");
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
                    label.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: keep serving.
                tracing::warn!(forward = %label, error = %e, "accept failed");
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
    label: String,
) {
    let started = Instant::now();
    let result = match pool.open_stream_to(&config.peer).await {
        Err(e) => {
            tracing::debug!(forward = %label, peer = %config.peer, error = %e, "no stream for a TCP connection");
            pipe::abort(tcp);
            e.reason()
        }
        Ok(stream) => {
            let (mut send, recv) = stream.into_split();
            if send.write_all(&head).await.is_err() {
                pipe::abort(tcp);
                "stream_reset"
            } else {
                let outcome = pipe::pipe(tcp, send, recv, true).await;
                if !matches!(outcome, Outcome::Done { .. }) {
                    tracing::debug!(forward = %label, peer = %config.peer, ?outcome, "forwarded connection failed");
                }
                outcome.label()
            }
        }
    };
    metrics::counter!(FORWARD_CONNECTIONS, "forward" => label.clone(), "result" => result)
        .increment(1);
    metrics::histogram!(FORWARD_DURATION, "forward" => label)
        .record(started.elapsed().as_secs_f64());
}
