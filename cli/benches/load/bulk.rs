//! Scenario 4: bulk transfer. 1 GiB one way through one forward (TCP ->
//! QUIC -> TCP sink) versus one raw quinn stream to a sink; then 8 parallel
//! transfers of 1/8 GiB each with 1, 3 and 8 connections per peer; then the
//! N=3 row again with one data-plane thread per node against one per CPU.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::common::*;
use super::sidecar;
use super::stream_open::base_config;

const CHUNK: usize = 256 * 1024;

/// Writes `bytes` to a TCP connection through the forward, half-closes, and
/// waits for the far end to close (the sink read everything).
async fn tcp_transfer(target: SocketAddr, bytes: u64) -> Result<Duration, String> {
    let started = Instant::now();
    let mut c = tokio::net::TcpStream::connect(target)
        .await
        .map_err(|e| e.to_string())?;
    let chunk = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        c.write_all(&chunk[..n]).await.map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    c.shutdown().await.map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.map_err(|e| e.to_string())?;
    Ok(started.elapsed())
}

async fn quic_transfer(conn: &quinn::Connection, bytes: u64) -> Result<Duration, String> {
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let chunk = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        send.write_all(&chunk[..n])
            .await
            .map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    send.finish().map_err(|e| e.to_string())?;
    while recv
        .read(&mut [0u8; 64])
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {}
    Ok(started.elapsed())
}

fn mb_record(name: String, bytes: u64, took: Duration) -> Record {
    let mut r = Record::new("bulk", name);
    r.mb_per_sec = bytes as f64 / 1e6 / took.as_secs_f64().max(1e-9);
    r.ops_per_sec = 1.0 / took.as_secs_f64().max(1e-9);
    r.extra = serde_json::json!({ "bytes": bytes, "seconds": took.as_secs_f64() });
    r
}

pub fn run(budget: Budget) -> Vec<Record> {
    let total: u64 = budget.pick(1 << 30, 64 << 20);
    let rt = runtime(2);
    let sink = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind sink");
    let sink_addr = sink.local_addr().expect("addr");
    let sink_rt = runtime(1);
    sink_rt.spawn(serve_sink(sink));

    let mut out = Vec::new();
    // One raw quinn stream to a sink (client in this process's runtime).
    let (raw_addr, raw_id, _raw) = raw::sink_server(&base_config().node);
    let raw_took = rt.block_on(async {
        let (_ep, conn) = raw::connect(&base_config().node, raw_addr, raw_id).await;
        quic_transfer(&conn, total).await.expect("raw transfer")
    });
    let base = mb_record("raw quinn, one stream".into(), total, raw_took);

    // One forward.
    let p = sidecar::pair(sink_addr, "sink", 3);
    let took = rt
        .block_on(tcp_transfer(p.forward, total))
        .expect("forward transfer");
    let mut one = mb_record("one forward (N=3)".into(), total, took).against(&base);
    let hwm_a = p.a.stats().hwm_kb;
    let hwm_b = p.b.stats().hwm_kb;
    one.peak_rss_kb = Some(hwm_a.max(hwm_b));
    drop(p);
    out.push(base);
    out.push(one);

    // 8 parallel transfers over N = 1, 3, 8 connections.
    let each = total / 8;
    let parallel = |p: sidecar::Pair, name: String| {
        let forward = p.forward;
        let took = rt.block_on(async move {
            let started = Instant::now();
            let tasks: Vec<_> = (0..8)
                .map(|_| tokio::spawn(tcp_transfer(forward, each)))
                .collect();
            for t in tasks {
                t.await.expect("task").expect("transfer");
            }
            started.elapsed()
        });
        let mut r = mb_record(name, each * 8, took);
        r.peak_rss_kb = Some(p.a.stats().hwm_kb);
        r
    };
    let mut first: Option<Record> = None;
    for n in [1usize, 3, 8] {
        let p = sidecar::pair(sink_addr, "sink", n);
        let mut r = parallel(p, format!("8 parallel forwards, N={n}"));
        r = match &first {
            Some(f) => r.against(f),
            None => r,
        };
        if first.is_none() {
            first = Some(r.clone());
        }
        out.push(r);
    }
    // The multi-threaded data plane: one forward and the 8 parallel N=3
    // run again, one worker thread per node against the default (one per
    // CPU).
    let workers = |w: u32| move |c: &mut peerpool::config::Config| c.node.worker_threads = w;
    let cpus = peerpool::config::NodeConfig::default().workers();
    let single = |w: u32| {
        let p = sidecar::pair_with(sink_addr, "sink", 3, workers(w));
        let took = rt
            .block_on(tcp_transfer(p.forward, total))
            .expect("forward transfer");
        let name = format!("one forward (N=3), worker_threads={w}");
        let mut r = mb_record(name, total, took);
        r.peak_rss_kb = Some(p.a.stats().hwm_kb);
        r
    };
    let one_thread = single(1);
    let all_threads = single(0).against(&one_thread);
    let one = parallel(
        sidecar::pair_with(sink_addr, "sink", 3, workers(1)),
        "8 parallel, N=3, worker_threads=1".into(),
    );
    let all = parallel(
        sidecar::pair_with(sink_addr, "sink", 3, workers(0)),
        format!("8 parallel, N=3, worker_threads=0 ({cpus})"),
    )
    .against(&one);
    out.extend([one_thread, all_threads, one, all]);
    out
}
