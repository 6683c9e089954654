//! `[[service]]`: streams peers open to this node name a service in their
//! header; the node connects to that service's upstream (TCP or a Unix
//! socket) and pipes.
//!
//! A bad stream (unknown service, dead upstream, malformed, oversized or slow
//! header) gets a status byte and is stopped with that code. It costs one
//! task and touches nothing else: other streams and the connection go on.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::access_log::{AccessLog, Entry, Kind};
use super::budget::StreamBudget;
use super::header::{self, ClientAddrs, HeaderError, Parsed, Status};
use super::local::{self, Stream};
use super::pipe;
use crate::config::{ProxyProtocol, ServiceConfig};
use crate::metrics::labels::TransferResult;
use crate::metrics::sidecar::ServiceMetrics;
use crate::{IncomingStream, PooledRecv, PooledSend, StreamHandler};

/// The label used for service names that are not configured (peers choose
/// them; labels must stay bounded).
pub(crate) const UNKNOWN_SERVICE_LABEL: &str = "_unknown";

struct Service {
    config: ServiceConfig,
    metrics: ServiceMetrics,
    /// Its name, shared by its access log lines.
    label: Arc<str>,
}

impl Service {
    fn allows(&self, peer: &str) -> bool {
        match &self.config.allow {
            None => true,
            Some(names) => names.iter().any(|n| n == peer),
        }
    }
}

type Table = HashMap<String, Arc<Service>>;

/// The stream handler of a sidecar node. The table of services is
/// replaced whole on a reload; a stream keeps the service it started with.
pub(crate) struct Services {
    table: RwLock<Arc<Table>>,
    unknown: ServiceMetrics,
    header_timeout: Duration,
    connect_timeout: Duration,
    memory: Arc<StreamBudget>,
    log: Arc<AccessLog>,
}

impl Services {
    pub(crate) fn new(
        services: &[ServiceConfig],
        header_timeout: Duration,
        connect_timeout: Duration,
        memory: Arc<StreamBudget>,
        log: Arc<AccessLog>,
    ) -> Services {
        let s = Services {
            table: RwLock::new(Arc::new(Table::new())),
            unknown: ServiceMetrics::new(UNKNOWN_SERVICE_LABEL),
            header_timeout,
            connect_timeout,
            memory,
            log,
        };
        s.replace(services);
        s
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serves `services` from now on: unchanged ones keep their state, new
    /// streams for removed ones get `unknown service`, streams already
    /// served go on. Returns the names added, removed and changed.
    pub(crate) fn replace(&self, services: &[ServiceConfig]) -> super::diff::Diff<String> {
        let old = self.table();
        let mut diff = super::diff::Diff::default();
        let table: Table = services
            .iter()
            .map(|c| {
                let kept = old.get(&c.name).filter(|s| s.config == *c).cloned();
                let service = kept.unwrap_or_else(|| {
                    if old.contains_key(&c.name) {
                        diff.changed.push(c.name.clone());
                    } else {
                        diff.added.push(c.name.clone());
                    }
                    Arc::new(Service {
                        config: c.clone(),
                        metrics: ServiceMetrics::new(&c.name),
                        label: c.name.as_str().into(),
                    })
                });
                (c.name.clone(), service)
            })
            .collect();
        diff.removed = old
            .keys()
            .filter(|n| !table.contains_key(*n))
            .cloned()
            .collect();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        diff
    }

    /// Keeps every service's series alive.
    pub(crate) fn touch(&self) {
        self.unknown.touch();
        self.table().values().for_each(|s| s.metrics.touch());
    }

    async fn serve(self: Arc<Self>, stream: IncomingStream) {
        let started = std::time::Instant::now();
        let (peer, endpoint) = (stream.peer.clone(), stream.remote);
        let activity = pipe::Activity::default();
        let (service, result) = self.serve_stream(stream, &activity).await;
        self.log.log(|| {
            let (bytes_up, bytes_down) = activity.bytes();
            Entry {
                time: std::time::SystemTime::now(),
                kind: Kind::Service,
                name: service,
                peer,
                endpoint: Some(endpoint),
                bytes_up,
                bytes_down,
                duration_ms: started.elapsed().as_secs_f64() * 1e3,
                result,
                retries: 0,
            }
        });
    }

    /// Serves one stream; returns the service it named (as its metrics
    /// label) and how it ended, both counted already.
    async fn serve_stream(
        &self,
        stream: IncomingStream,
        activity: &pipe::Activity,
    ) -> (Arc<str>, TransferResult) {
        let IncomingStream {
            mut send,
            mut recv,
            peer,
            peer_id,
            ..
        } = stream;
        let unknown = &self.unknown;
        let unknown_name = || Arc::<str>::from(UNKNOWN_SERVICE_LABEL);
        let (name, client) =
            match tokio::time::timeout(self.header_timeout, read_header(&mut recv)).await {
                Err(_) => {
                    let r = refuse(send, recv, Status::HeaderTimeout, unknown).await;
                    return (unknown_name(), r);
                }
                Ok(Err(ReadHeader::Bad(e))) => {
                    tracing::debug!(%peer, error = %e, "bad stream header");
                    return (
                        unknown_name(),
                        refuse(send, recv, e.status(), unknown).await,
                    );
                }
                Ok(Err(ReadHeader::Stream)) => {
                    unknown.count(TransferResult::StreamReset);
                    return (unknown_name(), TransferResult::StreamReset);
                }
                Ok(Ok(read)) => read,
            };
        let Some(service) = self.table().get(&name).cloned() else {
            tracing::debug!(%peer, service = %name, "stream for an unknown service");
            let r = refuse(send, recv, Status::UnknownService, unknown).await;
            return (unknown_name(), r);
        };
        let label = service.label.clone();
        if !service.allows(&peer) {
            tracing::debug!(%peer, service = %name, "peer not allowed by the service");
            let r = refuse(send, recv, Status::Forbidden, &service.metrics).await;
            return (label, r);
        }
        // Before the upstream, so that a full node costs it nothing. Until
        // then a stream holds at most one window, for at most
        // node.header_timeout.
        let Some(_memory) = self.memory.try_reserve() else {
            tracing::debug!(%peer, service = %name, "no room in node.stream_memory; stream refused");
            let r = refuse(send, recv, Status::Overloaded, &service.metrics).await;
            return (label, r);
        };
        let upstream = &service.config.upstream;
        let conn = match tokio::time::timeout(self.connect_timeout, Stream::connect(upstream)).await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::warn!(service = %name, %upstream, error = %e, "upstream refused a connection");
                let r = refuse(send, recv, Status::UpstreamUnreachable, &service.metrics).await;
                return (label, r);
            }
            Err(_) => {
                tracing::warn!(service = %name, %upstream, "upstream connect timed out");
                let r = refuse(send, recv, Status::UpstreamUnreachable, &service.metrics).await;
                return (label, r);
            }
        };
        let (up_r, mut up_w) = conn.split();
        if service.config.proxy_protocol == ProxyProtocol::V2 {
            let head = super::proxy::v2(client, &peer, &peer_id.to_string());
            let sent = tokio::time::timeout(self.connect_timeout, up_w.write_all(&head)).await;
            if !matches!(sent, Ok(Ok(()))) {
                tracing::warn!(service = %name, %upstream, "upstream did not take the PROXY header");
                local::reset(up_r, up_w);
                let r = refuse(send, recv, Status::UpstreamUnreachable, &service.metrics).await;
                return (label, r);
            }
        }
        if send.write_all(&[Status::Ok as u8]).await.is_err() {
            local::reset(up_r, up_w);
            service.metrics.count(TransferResult::StreamReset);
            return (label, TransferResult::StreamReset);
        }
        // Seen from the service: the caller's bytes go up to the upstream.
        let outcome = pipe::pipe(up_r, up_w, send, recv, pipe::Started::default(), activity).await;
        let result = outcome.label();
        service.metrics.count(result);
        (label, result)
    }
}

impl StreamHandler for Arc<Services> {
    fn handle(&self, stream: IncomingStream) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.clone().serve(stream))
    }
}

/// Sends `status`, finishes our side so the byte is delivered, and stops the
/// peer's side with the status as the error code.
async fn refuse(
    mut send: PooledSend,
    mut recv: PooledRecv,
    status: Status,
    metrics: &ServiceMetrics,
) -> TransferResult {
    metrics.count(status.label());
    let _ = send.write_all(&[status as u8]).await;
    let _ = send.finish();
    let _ = recv.stop(status.code());
    // Wait (bounded) for the status to be acknowledged before dropping the
    // stream, so that it is not lost with the stream state.
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    status.label()
}

enum ReadHeader {
    Bad(HeaderError),
    Stream,
}

/// Reads exactly one header: the fixed part, the name, the client's
/// addresses; never more.
async fn read_header(recv: &mut PooledRecv) -> Result<(String, Option<ClientAddrs>), ReadHeader> {
    let recv: &mut quinn::RecvStream = recv;
    let mut buf = vec![0u8; header::FIXED_LEN];
    let mut have = 0;
    loop {
        // Read byte ranges up to what the parser says the header needs, so
        // that a bad prefix is refused as soon as it is seen.
        let want = match header::parse(&buf[..have]) {
            Ok(Parsed::Complete {
                service, client, ..
            }) => return Ok((service, client)),
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
