//! Scenario 2: opening a stream through a warm pool versus on a raw quinn
//! connection held directly. Each operation opens a bidi stream, writes one
//! byte, finishes, reads the echo to its end and drops the stream. The
//! serving side runs on its own thread and runtime in both cases, with the
//! same echo code; raw and pool runs alternate in rounds so that drift of
//! the machine hits both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peerpool::config::{Config, PeerConfig};
use peerpool::identity::{Identity, PeerId};
use peerpool::{IncomingStream, Pool};

use super::common::*;

pub fn base_config() -> Config {
    let mut c = Config::default();
    c.node.listen = "127.0.0.1:0".parse().expect("addr");
    c.node.max_concurrent_streams = 4096;
    c
}

/// A pool on its own thread and actix System that accepts `client` and
/// echoes every stream. Returns its address and id; dropping the stopper
/// stops it.
pub fn pool_server(client: PeerId, n: usize) -> (std::net::SocketAddr, PeerId, ServerStop) {
    let identity = Identity::generate().expect("identity");
    let id = identity.id;
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let mut cfg = base_config();
            cfg.pool.max_connections_per_peer = n;
            cfg.peers = vec![PeerConfig::pinned("client", client, None)];
            let handler = Arc::new(|mut s: IncomingStream| async move {
                serve_stream(&mut s.send, &mut s.recv, false).await;
            });
            let pool = Pool::start_with_socket(cfg, identity, handler, udp()).expect("server pool");
            let _ = tx.send(pool.local_addr());
            let _ = stop_rx.await;
        });
    });
    let addr = rx.recv().expect("server address");
    (addr, id, ServerStop::new(stop_tx, thread))
}

#[derive(Clone)]
enum Target {
    Raw(quinn::Connection),
    Pool(Pool, PeerId),
}

impl Target {
    async fn op(&self, payload: &[u8], back: &mut Vec<u8>) -> Result<(), String> {
        back.clear();
        match self {
            Target::Raw(conn) => {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                send.write_all(payload).await.map_err(|e| e.to_string())?;
                send.finish().map_err(|e| e.to_string())?;
                read_all(&mut recv, back).await
            }
            Target::Pool(pool, peer) => {
                let mut s = pool.open_stream(peer).await.map_err(|e| e.to_string())?;
                quinn::SendStream::write_all(&mut s.send, payload)
                    .await
                    .map_err(|e| e.to_string())?;
                s.send.finish().map_err(|e| e.to_string())?;
                read_all(&mut s.recv, back).await
            }
        }
    }
}

async fn read_all(recv: &mut quinn::RecvStream, back: &mut Vec<u8>) -> Result<(), String> {
    let mut buf = [0u8; 4096];
    while let Some(n) = recv.read(&mut buf).await.map_err(|e| e.to_string())? {
        back.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// Runs `tasks` concurrent loops of operations for `duration`.
async fn measure(
    target: &Target,
    tasks: usize,
    duration: Duration,
    size: usize,
) -> (u64, u64, Histogram<u64>, Duration) {
    let started = Instant::now();
    let deadline = started + duration;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let target = target.clone();
        handles.push(actix_rt::spawn(async move {
            let payload = vec![t as u8; size];
            let mut back = Vec::with_capacity(size);
            let mut h = histogram();
            let (mut ops, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                let op_started = Instant::now();
                match target.op(&payload, &mut back).await {
                    Ok(()) if back == payload => {
                        record_ns(&mut h, op_started.elapsed());
                        ops += 1;
                    }
                    _ => errors += 1,
                }
            }
            (ops, errors, h)
        }));
    }
    let mut total = histogram();
    let (mut ops, mut errors) = (0, 0);
    for handle in handles {
        let (o, e, h) = handle.await.expect("task");
        ops += o;
        errors += e;
        let _ = total.add(&h);
    }
    (ops, errors, total, started.elapsed())
}

struct Tally {
    ops: u64,
    errors: u64,
    hist: Histogram<u64>,
    elapsed: Duration,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            ops: 0,
            errors: 0,
            hist: histogram(),
            elapsed: Duration::ZERO,
        }
    }

    fn add(&mut self, (ops, errors, hist, elapsed): (u64, u64, Histogram<u64>, Duration)) {
        self.ops += ops;
        self.errors += errors;
        let _ = self.hist.add(&hist);
        self.elapsed += elapsed;
    }

    fn record(&self, scenario: &str, name: &str, size: usize) -> Record {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut r = Record::new(scenario, name).latency_from(&self.hist);
        r.ops_per_sec = self.ops as f64 / secs;
        r.mb_per_sec = self.ops as f64 * size as f64 / secs / 1e6;
        r.errors = self.errors;
        r
    }
}

/// Raw versus pool at each concurrency, alternating in rounds.
pub fn compare(
    scenario: &str,
    budget: Budget,
    pool_n: usize,
    size: usize,
    concurrencies: &[usize],
    seconds: f64,
) -> Vec<Record> {
    let client = Identity::generate().expect("identity");
    let (pool_addr, pool_id, _pool_server) = pool_server(client.id, pool_n);
    let (raw_addr, raw_id, _raw_server) = raw::echo_server(&base_config().node);
    let concurrencies = concurrencies.to_vec();
    let scenario = scenario.to_string();
    actix_rt::System::new().block_on(async move {
        let (_raw_ep, raw_conn) = raw::connect(&base_config().node, raw_addr, raw_id).await;
        let mut cfg = base_config();
        cfg.pool.max_connections_per_peer = pool_n;
        cfg.peers = vec![PeerConfig::pinned("server", pool_id, Some(pool_addr))];
        let nothing = Arc::new(|_s: IncomingStream| async {});
        let pool = Pool::start_with_socket(cfg, client, nothing, udp()).expect("client pool");
        let conns = pool.dial_peer(&pool_id).await.expect("warm pool");
        assert_eq!(conns.len(), pool_n);
        let raw = Target::Raw(raw_conn);
        let pooled = Target::Pool(pool.clone(), pool_id);
        // Warm both paths.
        measure(&raw, 4, Duration::from_millis(200), size).await;
        measure(&pooled, 4, Duration::from_millis(200), size).await;
        let mut out = Vec::new();
        let rounds = budget.pick(4, 2);
        for c in concurrencies {
            let (mut r_raw, mut r_pool) = (Tally::new(), Tally::new());
            let slice = budget.secs(seconds) / rounds;
            for _ in 0..rounds {
                r_raw.add(measure(&raw, c, slice, size).await);
                r_pool.add(measure(&pooled, c, slice, size).await);
            }
            let base = r_raw.record(&scenario, &format!("raw quinn c={c}"), size);
            let mut rec = r_pool
                .record(&scenario, &format!("pool N={pool_n} c={c}"), size)
                .against(&base);
            rec.extra = serde_json::json!({ "concurrency": c, "connections": pool_n });
            out.push(base);
            out.push(rec);
        }
        pool.shutdown(Duration::from_millis(200)).await;
        out
    })
}

/// The raw quinn stream-per-request echo alone (the sidecar's second
/// baseline): `c` concurrent loops of `size`-byte echoes.
pub fn raw_only(scenario: &str, budget: Budget, size: usize, c: usize, seconds: f64) -> Record {
    let (raw_addr, raw_id, _raw_server) = raw::echo_server(&base_config().node);
    let scenario = scenario.to_string();
    actix_rt::System::new().block_on(async move {
        let (_ep, conn) = raw::connect(&base_config().node, raw_addr, raw_id).await;
        let raw = Target::Raw(conn);
        measure(&raw, 4, Duration::from_millis(100), size).await;
        let mut t = Tally::new();
        t.add(measure(&raw, c, budget.secs(seconds), size).await);
        let mut r = t.record(&scenario, &format!("raw quinn stream/request c={c}"), size);
        r.extra = serde_json::json!({ "concurrency": c });
        r
    })
}

pub fn run(budget: Budget) -> Vec<Record> {
    let mut out = compare("stream_open", budget, 1, 1, &[1, 64], 8.0);
    out.extend(compare("stream_open", budget, 3, 1, &[64], 8.0));
    out
}
