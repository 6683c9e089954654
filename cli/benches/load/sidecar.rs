//! Scenario 3: 1 KiB echo requests through TCP -> forward -> QUIC -> service
//! -> TCP upstream (two real `peerpool run` processes), against direct TCP
//! to the same upstream in the same client mode, and against raw quinn
//! stream-per-request echo, at several concurrencies.

use std::time::Duration;

use peerpool_testkit::load::{self, Mode, Options};

use super::common::*;
use super::stream_open;

pub const SIZE: usize = 1024;

/// Nodes a (forwarding to b's `service`) and b (serving it from `upstream`).
pub struct Pair {
    pub a: NodeProc,
    pub b: NodeProc,
    pub forward: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

pub fn pair(upstream: std::net::SocketAddr, service: &str, n: usize) -> Pair {
    pair_with(upstream, service, n, |_| {})
}

/// [`pair`] with `tune` applied to both nodes' configs last.
pub fn pair_with(
    upstream: std::net::SocketAddr,
    service: &str,
    n: usize,
    tune: impl Fn(&mut peerpool::config::Config),
) -> Pair {
    let dir = tempfile::tempdir().expect("tempdir");
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let (mut a, mut b) = forwarding_pair(&da, &db, upstream, service);
    let forward = a.forward[0].listen.tcp().expect("a TCP forward");
    a.pool.load_balancing_strategy = peerpool::pool::Strategy::LeastLoaded;
    for c in [&mut a, &mut b] {
        c.pool.max_connections_per_peer = n;
        c.node.max_concurrent_streams = 4096;
        tune(c);
    }
    let b = NodeProc::launch(bin(), &db, b);
    let a = NodeProc::launch(bin(), &da, a);
    wait_blocking("node a ready", Duration::from_secs(20), || a.admin.ready());
    wait_blocking("a holds N connections", Duration::from_secs(20), || {
        a.admin.usable_connections() == Some(n)
    });
    Pair {
        a,
        b,
        forward,
        _dir: dir,
    }
}

/// A runtime of its own for the echo upstream, so it does not share the
/// client's threads.
pub fn upstream_runtime() -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let rt = runtime(1);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(load::serve_echo(listener));
    (rt, addr)
}

/// A row from what the load generator measured.
pub fn to_record(scenario: &str, name: String, r: &load::Report) -> Record {
    let mut rec = Record::new(scenario, name);
    rec.ops_per_sec = r.requests_per_sec();
    rec.mb_per_sec = r.mb_per_sec();
    rec.p50_us = r.quantile_us(0.5) as f64;
    rec.p99_us = r.quantile_us(0.99) as f64;
    rec.p999_us = r.quantile_us(0.999) as f64;
    rec.errors = r.error_count();
    rec
}

pub fn run(budget: Budget) -> Vec<Record> {
    let (_up_rt, upstream) = upstream_runtime();
    let p = pair(upstream, "echo", 3);
    let client = runtime(2);
    let seconds = 3.0;
    let concurrencies = [1usize, 16, 64, 256];
    let mut out = Vec::new();
    let mut raw: Vec<Record> = Vec::new();
    for &c in &concurrencies {
        raw.push(stream_open::raw_only("sidecar", budget, SIZE, c, seconds));
    }
    for per_request in [false, true] {
        let mode = if per_request {
            "new conn"
        } else {
            "persistent"
        };
        for (i, &c) in concurrencies.iter().enumerate() {
            let opts = |target| Options {
                target,
                concurrency: c,
                duration: budget.secs(seconds),
                size: SIZE,
                mode: Mode::Echo,
                connection_per_request: per_request,
                requests: None,
                request_timeout: Duration::from_secs(10),
            };
            let direct = client.block_on(load::run(opts(upstream)));
            let through = client.block_on(load::run(opts(p.forward)));
            let base = to_record("sidecar", format!("direct TCP {mode} c={c}"), &direct);
            let mut rec =
                to_record("sidecar", format!("sidecar {mode} c={c}"), &through).against(&base);
            rec.extra = serde_json::json!({
                "concurrency": c,
                "connection_per_request": per_request,
                "added_p50_us": rec.p50_us - base.p50_us,
                "added_p99_us": rec.p99_us - base.p99_us,
                "ratio_ops_vs_raw_quinn": rec.ops_per_sec / raw[i].ops_per_sec.max(1e-9),
            });
            out.push(base);
            out.push(rec);
        }
    }
    out.extend(raw);
    let hwm_a = p.a.stats().hwm_kb;
    let hwm_b = p.b.stats().hwm_kb;
    if let Some(last) = out.iter_mut().rev().find(|r| r.name.starts_with("sidecar")) {
        last.peak_rss_kb = Some(hwm_a.max(hwm_b));
    }
    out
}
