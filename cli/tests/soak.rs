//! The soak: 10 minutes of mixed traffic through two real nodes, with the
//! serving node restarted every minute (SIGTERM and SIGKILL in turn).
//! Ignored by default:
//!
//!     cargo test --release --test soak -- --ignored soak --nocapture
//!
//! `PEERPOOL_SOAK_SECONDS` shortens it. It fails if a request is silently
//! truncated, if the node's memory grows by 10 % or more between the first
//! minute and the end, or if traffic does not recover after a restart.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerpool_testkit::prelude::*;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "10 minutes; run with --ignored soak"]
async fn soak() {
    let total = Duration::from_secs(
        std::env::var("PEERPOOL_SOAK_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    );
    let upstream = echo_upstream().await;
    let s = setup_with(upstream, |a, b| {
        a.node.keep_alive_interval = Duration::from_secs_f64(1.0);
        b.node.keep_alive_interval = Duration::from_secs_f64(1.0);
        b.admin.drain_timeout = Duration::from_secs_f64(2.0);
    });
    let (a, mut b) = s.start(bin!()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let truncated = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // 12 clients with a new connection per request, 4 with persistent ones.
    for t in 0..16u64 {
        let (stop, ok, errors, truncated) =
            (stop.clone(), ok.clone(), errors.clone(), truncated.clone());
        let forward = s.forward;
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t);
            let persistent = t < 4;
            let mut conn: Option<tokio::net::TcpStream> = None;
            while !stop.load(Ordering::Relaxed) {
                let size = if rng.random_bool(0.9) {
                    rng.random_range(1..4096)
                } else {
                    rng.random_range(4096..256 * 1024)
                };
                let mut data = vec![0u8; size];
                rng.fill(&mut data[..]);
                let result = tokio::time::timeout(Duration::from_secs(15), async {
                    if persistent {
                        if conn.is_none() {
                            conn = Some(
                                tokio::net::TcpStream::connect(forward)
                                    .await
                                    .map_err(|e| e.to_string())?,
                            );
                        }
                        let c = conn.as_mut().ok_or("no connection")?;
                        c.write_all(&data).await.map_err(|e| e.to_string())?;
                        let mut back = vec![0u8; size];
                        c.read_exact(&mut back).await.map_err(|e| e.to_string())?;
                        Ok::<bool, String>(back == data)
                    } else {
                        through(forward, &data).await.map(|_| true).or_else(|e| {
                            if e.starts_with("echo differs") {
                                Ok(false)
                            } else {
                                Err(e)
                            }
                        })
                    }
                })
                .await;
                match result {
                    Ok(Ok(true)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(false)) => {
                        truncated.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }

    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(30).min(total / 4)).await;
    let start = a.stats();
    let (rss_start, threads_start, fds_start) = (start.rss_kb, start.threads, start.fds);
    let mut restarts = 0;
    let mut next_restart = started + Duration::from_secs(60).min(total / 3);
    let mut samples = vec![rss_start];
    let mut next_sample = started + Duration::from_secs(60);
    while started.elapsed() < total {
        if Instant::now() >= next_sample {
            samples.push(a.stats().rss_kb);
            next_sample += Duration::from_secs(60);
        }
        if Instant::now() >= next_restart {
            restarts += 1;
            if restarts % 2 == 0 {
                b.kill();
            } else {
                b.signal("-TERM");
                b.wait(Duration::from_secs(5));
                b.kill();
            }
            b = NodeProc::start(
                bin!(),
                &s.b_config,
                s.b_log.with_extension(format!("{restarts}.log")),
            );
            let before = ok.load(Ordering::Relaxed);
            // Traffic must recover after each restart.
            let recovered = tokio::task::spawn_blocking({
                let ok = ok.clone();
                move || {
                    let t = Instant::now();
                    while ok.load(Ordering::Relaxed) < before + 100 {
                        if t.elapsed() > Duration::from_secs(20) {
                            return false;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    true
                }
            })
            .await
            .unwrap();
            assert!(
                recovered,
                "traffic did not recover after restart {restarts}"
            );
            next_restart += Duration::from_secs(60).min(total / 3);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let end = a.stats();
    let (rss_end, threads_end, fds_end) = (end.rss_kb, end.threads, end.fds);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let (ok, errors, truncated) = (
        ok.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        truncated.load(Ordering::Relaxed),
    );
    let growth = (rss_end as f64 - rss_start as f64) / rss_start as f64 * 100.0;
    println!("node a rss (KiB) at 30 s, then every minute: {samples:?}, end {rss_end}");
    println!(
        "soak {:?}: {ok} requests ok, {errors} errors (around {restarts} restarts), {truncated} truncated; \
         node a rss {rss_start} -> {rss_end} KiB ({growth:+.1} %), threads {threads_start} -> {threads_end}, fds {fds_start} -> {fds_end}",
        started.elapsed()
    );
    assert_eq!(truncated, 0, "silently truncated answers");
    assert!(growth < 10.0, "rss grew {growth:.1} %");
    assert!(ok > 0);
}
