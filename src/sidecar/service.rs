//! `[[service]]`: streams peers open to this node name a service in their
//! header; the node connects to that service's TCP upstream and pipes.
//!
//! A bad stream (unknown service, dead upstream, malformed, oversized or slow
//! header) gets a status byte and is stopped with that code. It costs one
//! task and touches nothing else: other streams and the connection go on.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::header::{self, HeaderError, Parsed, Status};
use super::pipe;
use crate::actors::{IncomingStream, PooledRecv, PooledSend, StreamHandler};
use crate::config::ServiceConfig;
use crate::metrics::SERVICE_STREAMS;

/// The label used for service names that are not configured (peers choose
/// them; labels must stay bounded).
pub const UNKNOWN_SERVICE_LABEL: &str = "_unknown";

/// The stream handler of a sidecar node.
pub struct Services {
    upstreams: HashMap<String, SocketAddr>,
    header_timeout: Duration,
    connect_timeout: Duration,
}

impl Services {
    pub fn new(
        services: &[ServiceConfig],
        header_timeout: Duration,
        connect_timeout: Duration,
    ) -> Services {
        for s in services {
            let _ = crate::metrics::kept_counter(
                SERVICE_STREAMS,
                ("service", &s.name),
                ("result", "ok"),
            );
        }
        Services {
            upstreams: services
                .iter()
                .map(|s| (s.name.clone(), s.upstream))
                .collect(),
            header_timeout,
            connect_timeout,
        }
    }

    async fn serve(self: Arc<Self>, stream: IncomingStream) {
        let IncomingStream {
            mut send,
            mut recv,
            peer,
            ..
        } = stream;
        let service = match tokio::time::timeout(self.header_timeout, read_header(&mut recv)).await
        {
            Err(_) => {
                return refuse(send, recv, Status::HeaderTimeout, UNKNOWN_SERVICE_LABEL).await
            }
            Ok(Err(ReadHeader::Bad(e))) => {
                tracing::debug!(%peer, error = %e, "bad stream header");
                return refuse(send, recv, e.status(), UNKNOWN_SERVICE_LABEL).await;
            }
            Ok(Err(ReadHeader::Stream)) => {
                count(UNKNOWN_SERVICE_LABEL, "stream_reset");
                return;
            }
            Ok(Ok(name)) => name,
        };
        let Some(upstream) = self.upstreams.get(&service).copied() else {
            tracing::debug!(%peer, %service, "stream for an unknown service");
            return refuse(send, recv, Status::UnknownService, UNKNOWN_SERVICE_LABEL).await;
        };
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(upstream))
            .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                tracing::warn!(%service, %upstream, error = %e, "upstream refused a connection");
                return refuse(send, recv, Status::UpstreamUnreachable, &service).await;
            }
            Err(_) => {
                tracing::warn!(%service, %upstream, "upstream connect timed out");
                return refuse(send, recv, Status::UpstreamUnreachable, &service).await;
            }
        };
        let _ = tcp.set_nodelay(true);
        if send.write_all(&[Status::Ok as u8]).await.is_err() {
            pipe::abort(tcp);
            count(&service, "stream_reset");
            return;
        }
        let outcome = pipe::pipe(tcp, send, recv, false).await;
        count(&service, outcome.label());
    }
}

impl StreamHandler for Arc<Services> {
    fn handle(&self, stream: IncomingStream) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.clone().serve(stream))
    }
}

fn count(service: &str, result: &'static str) {
    crate::metrics::kept_counter(SERVICE_STREAMS, ("service", service), ("result", result))
        .increment(1);
}

/// Sends `status`, finishes our side so the byte is delivered, and stops the
/// peer's side with the status as the error code.
async fn refuse(mut send: PooledSend, mut recv: PooledRecv, status: Status, service: &str) {
    count(service, status.label());
    let _ = send.write_all(&[status as u8]).await;
    let _ = send.finish();
    let _ = recv.stop(status.code());
    // Wait (bounded) for the status to be acknowledged before dropping the
    // stream, so that it is not lost with the stream state.
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

enum ReadHeader {
    Bad(HeaderError),
    Stream,
}

/// Reads exactly one header: the fixed part, then the name; never more.
async fn read_header(recv: &mut PooledRecv) -> Result<String, ReadHeader> {
    let recv: &mut quinn::RecvStream = recv;
    let mut buf = vec![0u8; header::FIXED_LEN];
    let mut have = 0;
    loop {
        // Read byte ranges up to what the parser says the header needs, so
        // that a bad prefix is refused as soon as it is seen.
        let want = match header::parse(&buf[..have]) {
            Ok(Parsed::Complete { service, .. }) => return Ok(service),
            Ok(Parsed::Incomplete { total }) => total,
            Err(e) => return Err(ReadHeader::Bad(e)),
        };
        if buf.len() < want {
            buf.resize(want, 0);
        }
        match recv.read(&mut buf[have..want]).await {
            Ok(Some(n)) => have += n,
            // The stream ended inside the header.
            Ok(None) => return Err(ReadHeader::Bad(HeaderError::Truncated)),
            Err(_) => return Err(ReadHeader::Stream),
        }
    }
}
