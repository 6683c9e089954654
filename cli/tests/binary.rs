//! The real `peerpool` binary, twice: bytes through a forward, the drain,
//! and the threads its data plane runs on.

use std::time::{Duration, Instant};

use peerpool_testkit::prelude::*;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_of_random_sizes_come_back_byte_for_byte() {
    let upstream = echo_upstream().await;
    let s = setup(upstream, Duration::from_secs_f64(5.0));
    let (a, _b) = s.start(bin!()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let sizes: Vec<usize> = (0..1000)
        .map(|i| match i % 10 {
            0 => 0,
            1 => 1,
            _ => rng.random_range(1..=1024 * 1024),
        })
        .collect();
    let total: usize = sizes.iter().sum();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunk in sizes.chunks(125) {
        let chunk = chunk.to_vec();
        let forward = s.forward;
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(chunk.len() as u64);
            for size in chunk {
                let mut data = vec![0u8; size];
                rng.fill(&mut data[..]);
                through(forward, &data).await?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            panic!("{e}\nnode a log:\n{}", a.log_text());
        }
    }
    println!(
        "1000 requests, {:.0} MiB each way, in {:?}",
        total as f64 / 1048576.0,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_fifty_streams_in_flight_and_the_pool_heals() {
    let upstream = echo_upstream().await;
    let drain_timeout = 5.0;
    let s = setup(upstream, Duration::from_secs_f64(drain_timeout));
    let mut b = NodeProc::start(bin!(), &s.b_config, s.b_log.clone());
    let _a = NodeProc::start(bin!(), &s.a_config, s.a_log.clone());
    let (a_admin, b_admin) = (s.a_admin, s.b_admin);
    tokio::task::spawn_blocking(move || wait_ready(a_admin, "node a", Duration::from_secs(20)))
        .await
        .unwrap();

    // 50 connections, each with the first half of its request echoed: the
    // streams are established and in flight.
    let mut conns = Vec::new();
    for i in 0..50u32 {
        let mut c = tokio::net::TcpStream::connect(s.forward).await.unwrap();
        let first = format!("request {i} first half;");
        c.write_all(first.as_bytes()).await.unwrap();
        let mut back = vec![0u8; first.len()];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(back, first.as_bytes());
        conns.push((i, c));
    }
    b.signal("-TERM");
    let signalled = Instant::now();
    // Every stream finishes its request after the signal.
    for (i, c) in conns.iter_mut() {
        let second = format!("request {i} second half, after SIGTERM");
        c.write_all(second.as_bytes()).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, second.as_bytes(), "stream {i}");
    }
    let code = tokio::task::spawn_blocking(move || {
        let code = b.wait(Duration::from_secs_f64(drain_timeout + 2.0));
        (code, b.log_text())
    })
    .await
    .unwrap();
    let exited_after = signalled.elapsed();
    assert_eq!(code.0, Some(0), "b's exit; log:\n{}", code.1);
    assert!(
        exited_after < Duration::from_secs_f64(drain_timeout + 1.0),
        "exit took {exited_after:?}"
    );
    assert!(code.1.contains("draining"), "{}", code.1);

    // New connections fail fast while b is gone...
    let started = Instant::now();
    assert!(through(s.forward, b"while b is down").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(6));
    // ...and a's pool is healthy again once b is back.
    let _b = NodeProc::start(bin!(), &s.b_config, s.b_log.with_extension("2.log"));
    tokio::task::spawn_blocking(move || {
        let a = Admin::new(a_admin);
        wait_blocking("a's pool heals", Duration::from_secs(15), || {
            a.peer("b").map(|p| p.state) == Some(peerpool::PeerState::Healthy)
        });
        wait_ready(b_admin, "node b", Duration::from_secs(10));
    })
    .await
    .unwrap();
    through(s.forward, b"after b came back").await.unwrap();
}

/// CPU ticks (user + system) of each thread of `pid`, by thread name.
fn thread_ticks(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push((comm.trim().to_string(), ticks(14) + ticks(15)));
    }
    out
}

fn ticks_of(threads: &[(String, u64)], name: &str) -> u64 {
    threads
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, t)| t)
        .sum()
}

/// `node.worker_threads` sizes the data plane: a node has that many worker
/// threads, and forwarded traffic runs on them, not on the actors' thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_traffic_runs_on_node_worker_threads() {
    let upstream = echo_upstream().await;
    let s = setup_with(upstream, |a, b| {
        a.node.worker_threads = 3;
        b.node.worker_threads = 1;
    });
    let (a, b) = s.start(bin!()).await;
    let workers = |pid| {
        thread_ticks(pid)
            .iter()
            .filter(|(n, _)| n == "peerpool-worker")
            .count()
    };
    assert_eq!((workers(a.pid()), workers(b.pid())), (3, 1));
    let before = thread_ticks(a.pid());
    let report = peerpool_testkit::load::run(peerpool_testkit::load::Options {
        target: s.forward,
        concurrency: 8,
        duration: Duration::from_secs(2),
        size: 16 * 1024,
        mode: peerpool_testkit::load::Mode::Echo,
        connection_per_request: false,
        requests: None,
        request_timeout: Duration::from_secs(5),
    })
    .await;
    assert_eq!(report.error_count(), 0, "{}", report.text());
    let after = thread_ticks(a.pid());
    let delta = |name| ticks_of(&after, name).saturating_sub(ticks_of(&before, name));
    let (on_workers, on_main) = (delta("peerpool-worker"), delta("peerpool"));
    println!(
        "{} requests: {on_workers} ticks on the worker threads, {on_main} on the actors' thread",
        report.requests
    );
    assert!(
        on_workers >= 20,
        "the load cost the workers {on_workers} ticks"
    );
    assert!(
        on_main * 5 <= on_workers,
        "the actors' thread did {on_main} of {on_workers} ticks' work"
    );
}
