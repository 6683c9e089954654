//! `peerpool load`: the load generator users point at a forward (or any
//! TCP echo service), and `peerpool load --serve-echo`, the echo upstream.
//!
//! Every request's echo is checked byte for byte against the pattern that
//! was sent; latencies go into an HdrHistogram.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a request looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Request/response: write `size` bytes, read them back, repeat.
    Echo,
    /// Stream `size`-byte chunks one way while reading the echo the other.
    Bulk,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub target: SocketAddr,
    pub concurrency: usize,
    pub duration: Duration,
    pub size: usize,
    pub mode: Mode,
    /// Open a new TCP connection for every request instead of reusing one.
    pub connection_per_request: bool,
    /// Stop after this many requests in all (whatever the duration).
    pub requests: Option<u64>,
    /// Longest wait for one request (or one bulk read).
    pub request_timeout: Duration,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub requests: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub elapsed: Duration,
    /// Payload bytes echoed back and checked.
    pub bytes: u64,
    pub latency_us: Histogram<u64>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    requests: u64,
    errors: u64,
    errors_by_kind: &'a BTreeMap<&'static str, u64>,
    seconds: f64,
    requests_per_sec: f64,
    mb_per_sec: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

impl Report {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Checked payload in MB (10^6 bytes) per second, one direction.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn quantile_us(&self, q: f64) -> u64 {
        self.latency_us.value_at_quantile(q)
    }

    /// One JSON object on one line, for scripts and benches.
    pub fn json(&self) -> String {
        serde_json::to_string(&JsonReport {
            requests: self.requests,
            errors: self.error_count(),
            errors_by_kind: &self.errors,
            seconds: self.elapsed.as_secs_f64(),
            requests_per_sec: self.requests_per_sec(),
            mb_per_sec: self.mb_per_sec(),
            p50_us: self.quantile_us(0.5),
            p90_us: self.quantile_us(0.9),
            p99_us: self.quantile_us(0.99),
            p999_us: self.quantile_us(0.999),
            max_us: self.latency_us.max(),
        })
        .unwrap_or_default()
    }

    pub fn text(&self) -> String {
        let mut s = format!(
            "requests {}  errors {}  in {:.2}s\n{:.0} req/s  {:.2} MB/s\nlatency p50 {} us  p90 {} us  p99 {} us  max {} us\n",
            self.requests,
            self.error_count(),
            self.elapsed.as_secs_f64(),
            self.requests_per_sec(),
            self.mb_per_sec(),
            self.quantile_us(0.5),
            self.quantile_us(0.9),
            self.quantile_us(0.99),
            self.latency_us.max(),
        );
        for (kind, n) in &self.errors {
            s.push_str(&format!("  error {kind}: {n}\n"));
        }
        s
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 100 s at 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("constant histogram bounds are valid")
}

/// The byte at `offset` of a payload seeded with `seed`: echoes are checked
/// against it, so a reordered or foreign byte is caught.
pub fn pattern_byte(seed: u64, offset: u64) -> u8 {
    (offset
        .wrapping_mul(131)
        .wrapping_add(seed.wrapping_mul(7919))
        % 251) as u8
}

pub fn fill(buf: &mut [u8], seed: u64, start: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, start + i as u64);
    }
}

struct Worker {
    opts: Options,
    stop: Arc<AtomicBool>,
    budget: Arc<AtomicU64>,
    hist: Histogram<u64>,
    errors: BTreeMap<&'static str, u64>,
    requests: u64,
    bytes: u64,
}

impl Worker {
    fn take_ticket(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        match self.opts.requests {
            None => true,
            Some(_) => self
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_default() += 1;
    }

    async fn echo(mut self, id: u64) -> Worker {
        let size = self.opts.size;
        let mut out = vec![0u8; size];
        let mut back = vec![0u8; size];
        let mut conn: Option<TcpStream> = None;
        let mut n = 0u64;
        while self.take_ticket() {
            n += 1;
            let seed = id << 32 | n;
            fill(&mut out, seed, 0);
            let started = Instant::now();
            if conn.is_none() {
                match tokio::time::timeout(
                    self.opts.request_timeout,
                    TcpStream::connect(self.opts.target),
                )
                .await
                {
                    Ok(Ok(c)) => {
                        let _ = c.set_nodelay(true);
                        conn = Some(c);
                    }
                    Ok(Err(_)) => {
                        self.error("connect");
                        // Do not spin on a dead target.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Err(_) => {
                        self.error("timeout");
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let per_request = self.opts.connection_per_request;
            let exchange = async {
                c.write_all(&out).await.map_err(|_| "write")?;
                if per_request {
                    c.shutdown().await.map_err(|_| "write")?;
                }
                // A clean end before the whole answer ("eof") is a
                // truncation passed off as success; a reset is an honest
                // failure.
                c.read_exact(&mut back).await.map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => "eof",
                    std::io::ErrorKind::ConnectionReset => "reset",
                    _ => "read",
                })?;
                Ok::<(), &'static str>(())
            };
            let result = match tokio::time::timeout(self.opts.request_timeout, exchange).await {
                Ok(r) => r,
                Err(_) => Err("timeout"),
            };
            match result {
                Ok(()) if back == out => {
                    let us = started.elapsed().as_micros().max(1) as u64;
                    let _ = self.hist.record(us);
                    self.requests += 1;
                    self.bytes += size as u64;
                    if per_request {
                        conn = None;
                    }
                }
                Ok(()) => {
                    self.error("mismatch");
                    conn = None;
                }
                Err(kind) => {
                    self.error(kind);
                    conn = None;
                }
            }
        }
        self
    }

    async fn bulk(mut self, id: u64) -> Worker {
        let conn = match TcpStream::connect(self.opts.target).await {
            Ok(c) => c,
            Err(_) => {
                self.error("connect");
                return self;
            }
        };
        let _ = conn.set_nodelay(true);
        let (mut r, mut w) = conn.into_split();
        let size = self.opts.size.max(1);
        let stop = self.stop.clone();
        let writer = tokio::spawn(async move {
            let mut chunk = vec![0u8; size];
            let mut offset = 0u64;
            while !stop.load(Ordering::Relaxed) {
                fill(&mut chunk, id, offset);
                if w.write_all(&chunk).await.is_err() {
                    return Err("write");
                }
                offset += size as u64;
            }
            w.shutdown().await.map_err(|_| "write")?;
            Ok(offset)
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut offset = 0u64;
        let mut last = Instant::now();
        loop {
            match tokio::time::timeout(self.opts.request_timeout, r.read(&mut buf)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => {
                    if buf[..n]
                        .iter()
                        .enumerate()
                        .any(|(i, b)| *b != pattern_byte(id, offset + i as u64))
                    {
                        self.error("mismatch");
                        return self;
                    }
                    offset += n as u64;
                    self.bytes += n as u64;
                    while offset / size as u64 > self.requests {
                        self.requests += 1;
                        let us = last.elapsed().as_micros().max(1) as u64;
                        let _ = self.hist.record(us);
                        last = Instant::now();
                    }
                }
                Ok(Err(_)) => {
                    self.error("read");
                    return self;
                }
                Err(_) => {
                    self.error("timeout");
                    return self;
                }
            }
        }
        match writer.await {
            Ok(Ok(sent)) if sent == offset => {}
            Ok(Ok(_)) => self.error("eof"),
            Ok(Err(kind)) => self.error(kind),
            Err(_) => self.error("write"),
        }
        self
    }
}

/// Runs the load and reports. Call it inside a tokio runtime.
pub async fn run(opts: Options) -> Report {
    let stop = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(AtomicU64::new(opts.requests.unwrap_or(u64::MAX)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in 0..opts.concurrency.max(1) as u64 {
        let worker = Worker {
            opts: opts.clone(),
            stop: stop.clone(),
            budget: budget.clone(),
            hist: new_histogram(),
            errors: BTreeMap::new(),
            requests: 0,
            bytes: 0,
        };
        tasks.push(tokio::spawn(async move {
            match worker.opts.mode {
                Mode::Echo => worker.echo(id).await,
                Mode::Bulk => worker.bulk(id).await,
            }
        }));
    }
    let timer_stop = stop.clone();
    let duration = opts.duration;
    let timer = tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        timer_stop.store(true, Ordering::Relaxed);
    });
    let mut report = Report {
        requests: 0,
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
        bytes: 0,
        latency_us: new_histogram(),
    };
    for t in tasks {
        match t.await {
            Ok(w) => {
                report.requests += w.requests;
                report.bytes += w.bytes;
                let _ = report.latency_us.add(&w.hist);
                for (k, v) in w.errors {
                    *report.errors.entry(k).or_default() += v;
                }
            }
            Err(_) => *report.errors.entry("worker_panic").or_default() += 1,
        }
    }
    timer.abort();
    report.elapsed = started.elapsed();
    report
}

/// Echoes every TCP connection accepted on `listener` until the task is
/// dropped: copy until EOF, then close the write side.
pub async fn serve_echo(listener: TcpListener) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = conn.set_nodelay(true);
        tokio::spawn(async move {
            let (r, mut w) = conn.split();
            let mut r = tokio::io::BufReader::with_capacity(64 * 1024, r);
            if tokio::io::copy_buf(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
    }
}

/// Reads every TCP connection accepted on `listener` to its end and
/// discards it, then closes: the upstream of one-way bulk transfers.
pub async fn serve_sink(listener: TcpListener) {
    while let Ok((mut conn, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = conn.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
    }
}
