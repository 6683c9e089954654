//! Scenario 6: a reconnect storm. A node holds 200 peers x 3 connections;
//! every peer crashes at once (its runtime stops: no close frame) and comes
//! back on the same port. Measured: time until all 600 connections are
//! healthy again, the dial rate per second over the recovery (the jitter
//! must spread it), and the dial attempts against the retry rules.

use std::time::{Duration, Instant};

use peerpool::config::Config;

use super::common::*;

pub fn run(budget: Budget) -> Vec<Record> {
    let k = budget.pick(200, 20);
    let dir = tempfile::tempdir().expect("tempdir");
    let central_dir = dir.path().join("central");
    let central_id = identity_in(&central_dir);
    let ids = identities(k);
    let farm = Farm::start(&ids, None, central_id);
    let addrs = farm.addrs();
    let mut cfg = Config::default();
    cfg.node.listen = free_udp();
    cfg.admin.listen = free_tcp();
    // A dead peer is noticed at the next keep-alive (stateless reset from
    // its restarted endpoint) or after the idle timeout.
    cfg.node.keep_alive_interval = Duration::from_secs_f64(1.0);
    cfg.node.idle_timeout = Duration::from_secs_f64(3.0);
    cfg.pool.connection_timeout = Duration::from_secs_f64(2.0);
    cfg.peers = farm.peer_configs();
    let policy = cfg.retry.policy();
    let central = NodeProc::launch(bin(), &central_dir, cfg);
    wait_blocking("all connections up", Duration::from_secs(120), || {
        central.admin.usable_connections() == Some(3 * k)
    });
    let attempts_before = central.admin.peers_sum(|p| p.dial_attempts).unwrap_or(0) as f64;

    // Crash every peer and bring it straight back.
    drop(farm);
    let restarted = Instant::now();
    let _farm = Farm::start(&ids, Some(&addrs), central_id);
    if let Ok(keep) = std::env::var("PEERPOOL_BENCH_KEEP") {
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::copy(
            central_dir.join("peerpool.log"),
            std::path::Path::new(&keep).join("before.log"),
        );
    }
    let start_took = restarted.elapsed();

    // Sample the node: dial attempts and usable connections every 100 ms.
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut saw_loss = false;
    let limit = Duration::from_secs(60);
    let recovered = loop {
        let t = restarted.elapsed();
        let attempts =
            central.admin.peers_sum(|p| p.dial_attempts).unwrap_or(0) as f64 - attempts_before;
        let usable = central.admin.usable_connections().unwrap_or(0);
        samples.push((t.as_secs_f64(), attempts));
        if usable < 3 * k {
            saw_loss = true;
        }
        // Recovered: every connection was replaced (dials made up for all
        // 3k) and all are usable again.
        if saw_loss && usable == 3 * k && attempts >= (3 * k) as f64 {
            break t;
        }
        assert!(
            t < limit,
            "not recovered after {limit:?}: {usable} of {} usable",
            3 * k
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    if let Ok(keep) = std::env::var("PEERPOOL_BENCH_KEEP") {
        let _ = std::fs::copy(
            central_dir.join("peerpool.log"),
            std::path::Path::new(&keep).join("central.log"),
        );
    }
    let total_attempts = samples.last().map_or(0.0, |s| s.1);
    // Peak dials in any 1 s window, against the mean rate over the recovery.
    let mut peak = 0.0f64;
    for (i, (t0, a0)) in samples.iter().enumerate() {
        if let Some((_, a1)) = samples[i..]
            .iter()
            .take_while(|(t1, _)| t1 - t0 <= 1.0)
            .last()
        {
            peak = peak.max(a1 - a0);
        }
    }
    let span = recovered.as_secs_f64().max(1.0);
    let mean = total_attempts / span;
    // Backoff steps needed: a peer that is back at once needs one redial
    // per slot after the first backoff.
    let bound = policy.base_delay(1).as_secs_f64() * (1.0 + policy.jitter) + 2.0
        + 1.0 /* keep-alive interval until the reset is seen */;
    let mut r = Record::new("storm", format!("{k} peers x 3: crash all, restart"));
    r.ops_per_sec = mean;
    let hwm = central.stats().hwm_kb;
    r.peak_rss_kb = Some(hwm);
    r.extra = serde_json::json!({
        "peers": k,
        "connections": 3 * k,
        "recovery_seconds": recovered.as_secs_f64(),
        "target_seconds": bound,
        "peer_restart_seconds": start_took.as_secs_f64(),
        "dial_attempts": total_attempts,
        "attempts_per_connection": total_attempts / (3 * k) as f64,
        "max_attempts_allowed": (3 * k) as f64 * f64::from(policy.attempts_per_dial()),
        "peak_dials_per_second": peak,
        "mean_dials_per_second": mean,
        "peak_over_mean": peak / mean.max(1e-9),
    });
    vec![r]
}
