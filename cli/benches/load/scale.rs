//! Scenario 5: one node holding 1, 100 and 500 peers x 3 connections (the
//! peers are pools in this process). RSS per connection, CPU at idle with
//! keep-alives, and /metrics render time, each against the 1-peer node.

use std::time::{Duration, Instant};

use peerpool::config::Config;

use super::common::*;

fn measure(budget: Budget, k: usize, measure_after_idle: bool) -> Record {
    let dir = tempfile::tempdir().expect("tempdir");
    let central_dir = dir.path().join("central");
    let central_id = identity_in(&central_dir);
    let ids = identities(k);
    let farm = Farm::start(&ids, None, central_id);
    let mut cfg = Config::default();
    cfg.node.listen = free_udp();
    cfg.admin.listen = free_tcp();
    cfg.peers = farm.peer_configs();
    let n: usize = std::env::var("PEERPOOL_BENCH_SCALE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    cfg.pool.max_connections_per_peer = n;
    let central = NodeProc::launch(bin(), &central_dir, cfg);
    let connect = wait_blocking("all connections up", Duration::from_secs(120), || {
        central.admin.usable_connections() == Some(n * k)
    });
    // Let allocations from the dial burst settle before reading RSS.
    std::thread::sleep(Duration::from_secs(1));
    let (rss, hwm) = (central.stats().rss_kb, central.stats().hwm_kb);
    let idle = budget.secs(5.0).max(Duration::from_secs(1));
    let cpu0 = central.cpu_secs();
    let t0 = Instant::now();
    std::thread::sleep(idle);
    let idle_cpu = (central.cpu_secs() - cpu0) / t0.elapsed().as_secs_f64();
    let mut h = histogram();
    let mut bytes = 0;
    for _ in 0..budget.pick(30, 5) {
        let r = central.admin.get("/metrics");
        let (status, body, took) = (r.status, r.body, r.took);
        assert_eq!(status, 200);
        bytes = body.len();
        record_ns(&mut h, took);
    }
    // Dial histograms of idle peers expire after metrics::IDLE_TIMEOUT: the
    // steady-state scrape of the largest node, measured once.
    let mut after_idle = serde_json::Value::Null;
    if measure_after_idle {
        std::thread::sleep(Duration::from_secs(32));
        let mut h2 = histogram();
        let mut bytes2 = 0;
        for _ in 0..budget.pick(30, 5) {
            let r = central.admin.get("/metrics");
            let (body, took) = (r.body, r.took);
            bytes2 = body.len();
            record_ns(&mut h2, took);
        }
        after_idle = serde_json::json!({
            "metrics_get_p50_ms": h2.value_at_quantile(0.5) as f64 / 1e6,
            "metrics_bytes": bytes2,
        });
    }
    let mut r = Record::new("scale", format!("{k} peers x 3 connections")).latency_from(&h);
    r.peak_rss_kb = Some(hwm);
    r.extra = serde_json::json!({
        "peers": k,
        "connections": 3 * k,
        "rss_kb": rss,
        "idle_cpu_cores": idle_cpu,
        "metrics_get_p50_ms": r.p50_us / 1e3,
        "metrics_bytes": bytes,
        "connect_all_seconds": connect.as_secs_f64(),
        "after_idle_timeout": after_idle,
    });
    r
}

pub fn run(budget: Budget) -> Vec<Record> {
    let sizes = budget.pick(vec![1, 100, 500], vec![1, 20]);
    let mut out: Vec<Record> = Vec::new();
    let largest = sizes.last().copied().unwrap_or(0);
    for k in sizes {
        let mut r = measure(budget, k, k == largest && !budget.quick);
        if let Some(base) = out.first() {
            let rss = |r: &Record| r.extra["rss_kb"].as_f64().unwrap_or(0.0);
            let per_conn = (rss(&r) - rss(base)) / ((3 * k - 3) as f64);
            r.extra["rss_kb_per_connection"] = serde_json::json!(per_conn);
            r = r.against(base);
        }
        out.push(r);
    }
    out
}
