//! The access log: one line per forwarded TCP connection and per served
//! stream, written by a thread of its own. Traffic hands each entry over
//! a bounded queue and never waits: when the queue is full the entry is
//! dropped and counted (`peerpool_access_log_lines_total{result="dropped"}`).
//! [`AccessLog::reopen`] (SIGUSR1 in the binary) makes the writer reopen
//! the file at its path, for log rotation.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{AccessLogConfig, AccessLogFormat};
use crate::metrics::labels::{Label, TransferResult};
use crate::metrics::sidecar::AccessLogMetrics;

/// How often an idle writer looks for a reopen request.
const REOPEN_POLL: Duration = Duration::from_millis(200);

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open access_log.path {path}: {source}")]
pub struct OpenError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// What a line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Forward,
    Service,
}

/// One line.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Entry {
    #[serde(serialize_with = "rfc3339")]
    pub(crate) time: SystemTime,
    pub(crate) kind: Kind,
    /// The forward's listen address, or the service's name.
    #[serde(serialize_with = "text")]
    pub(crate) name: Arc<str>,
    #[serde(serialize_with = "text")]
    pub(crate) peer: Arc<str>,
    /// The peer's address the stream ran over (none when no stream opened).
    pub(crate) endpoint: Option<SocketAddr>,
    /// Bytes from the TCP client (forward) or the calling peer (service)
    /// towards the other end, and back.
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    pub(crate) duration_ms: f64,
    #[serde(serialize_with = "label")]
    pub(crate) result: TransferResult,
    pub(crate) retries: u32,
}

fn text<S: serde::Serializer>(t: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t)
}

fn label<S: serde::Serializer>(r: &TransferResult, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&millis(*t))
}

/// RFC 3339 in UTC, to the millisecond.
fn millis(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Entry {
    fn line(&self, format: AccessLogFormat) -> String {
        match format {
            AccessLogFormat::Json => serde_json::to_string(self).unwrap_or_default(),
            AccessLogFormat::Text => format!(
                "{} {} {} peer={} endpoint={} up={} down={} duration_ms={:.3} result={} retries={}",
                millis(self.time),
                match self.kind {
                    Kind::Forward => "forward",
                    Kind::Service => "service",
                },
                self.name,
                self.peer,
                self.endpoint.map_or("-".into(), |e| e.to_string()),
                self.bytes_up,
                self.bytes_down,
                self.duration_ms,
                self.result.as_str(),
                self.retries,
            ),
        }
    }
}

/// The producers' side; cheap to share. Off when `access_log.path` is
/// empty.
pub(crate) struct AccessLog {
    tx: Option<SyncSender<Entry>>,
    sample: f64,
    reopen: Arc<AtomicBool>,
    metrics: AccessLogMetrics,
}

impl AccessLog {
    /// Opens the file (so a bad path fails the start, naming it) and starts
    /// the writer thread.
    pub(crate) fn start(config: &AccessLogConfig) -> Result<Arc<AccessLog>, OpenError> {
        let reopen = Arc::new(AtomicBool::new(false));
        let metrics = AccessLogMetrics::new();
        if config.path.as_os_str().is_empty() {
            return Ok(Arc::new(AccessLog {
                tx: None,
                sample: 0.0,
                reopen,
                metrics,
            }));
        }
        let sink = Sink::open(&config.path)?;
        let (tx, rx) = mpsc::sync_channel(config.queue);
        let writer = Writer {
            format: config.format,
            reopen: reopen.clone(),
            path: config.path.clone(),
            metrics: metrics.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("peerpool-access-log".into())
            .spawn(move || writer.run(rx, sink));
        if let Err(source) = spawned {
            return Err(OpenError {
                path: config.path.clone(),
                source,
            });
        }
        Ok(Arc::new(AccessLog {
            tx: Some(tx),
            sample: config.sample,
            reopen,
            metrics,
        }))
    }

    /// Queues `entry` (or drops and counts it when the queue is full).
    pub(crate) fn log(&self, entry: impl FnOnce() -> Entry) {
        let Some(tx) = &self.tx else { return };
        if self.sample < 1.0 && rand::random::<f64>() >= self.sample {
            return;
        }
        match tx.try_send(entry()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.dropped.increment(1);
            }
        }
    }

    /// Asks the writer to reopen the file (after the one it writes to was
    /// renamed by logrotate).
    pub(crate) fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }
}

/// Where lines go.
enum Sink {
    Stdout(std::io::Stdout),
    File(BufWriter<File>),
}

impl Sink {
    fn open(path: &PathBuf) -> Result<Sink, OpenError> {
        if path.as_os_str() == "-" {
            return Ok(Sink::Stdout(std::io::stdout()));
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|f| Sink::File(BufWriter::new(f)))
            .map_err(|source| OpenError {
                path: path.clone(),
                source,
            })
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => writeln!(s.lock(), "{line}"),
            Sink::File(f) => writeln!(f, "{line}"),
        }
    }

    fn flush(&mut self) {
        let _ = match self {
            Sink::Stdout(s) => s.flush(),
            Sink::File(f) => f.flush(),
        };
    }
}

/// The writer thread's side.
struct Writer {
    format: AccessLogFormat,
    reopen: Arc<AtomicBool>,
    path: PathBuf,
    metrics: AccessLogMetrics,
}

impl Writer {
    /// Until every producer is gone: the node stopped.
    fn run(self, rx: mpsc::Receiver<Entry>, mut sink: Sink) {
        loop {
            if self.reopen.swap(false, Ordering::Relaxed) {
                sink.flush();
                match Sink::open(&self.path) {
                    Ok(s) => sink = s,
                    Err(e) => {
                        tracing::warn!(error = %e, "access log not reopened; writing on to the old file")
                    }
                }
            }
            let entry = match rx.recv_timeout(REOPEN_POLL) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => {
                    // Keeps the series alive while no traffic comes.
                    self.metrics.touch();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            self.write(&mut sink, &entry);
            // Everything queued goes out in one flush.
            while let Ok(e) = rx.try_recv() {
                self.write(&mut sink, &e);
            }
            sink.flush();
        }
        sink.flush();
    }

    fn write(&self, sink: &mut Sink, entry: &Entry) {
        match sink.write_line(&entry.line(self.format)) {
            Ok(()) => self.metrics.written.increment(1),
            Err(_) => self.metrics.dropped.increment(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            kind: Kind::Forward,
            name: "127.0.0.1:7000".into(),
            peer: "b".into(),
            endpoint: Some(SocketAddr::from(([127, 0, 0, 1], 4433))),
            bytes_up: 10,
            bytes_down: 20,
            duration_ms: 1.5,
            result: TransferResult::Ok,
            retries: 1,
        }
    }

    #[test]
    fn lines_carry_every_field_in_both_formats() {
        let json: serde_json::Value =
            serde_json::from_str(&entry().line(AccessLogFormat::Json)).expect("JSON");
        assert_eq!(json["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["kind"], "forward");
        assert_eq!(json["endpoint"], "127.0.0.1:4433");
        assert_eq!(json["result"], "ok");
        assert_eq!(
            (json["bytes_up"].as_u64(), json["retries"].as_u64()),
            (Some(10), Some(1))
        );
        assert_eq!(
            entry().line(AccessLogFormat::Text),
            "2023-11-14T22:13:20.123Z forward 127.0.0.1:7000 peer=b endpoint=127.0.0.1:4433 \
             up=10 down=20 duration_ms=1.500 result=ok retries=1"
        );
    }

    #[test]
    fn a_path_that_cannot_be_opened_is_named() {
        let config = AccessLogConfig {
            path: "/nonexistent-dir/access.log".into(),
            ..AccessLogConfig::default()
        };
        let e = AccessLog::start(&config).err().expect("an error");
        assert!(e.to_string().contains("/nonexistent-dir/access.log"), "{e}");
    }
}
