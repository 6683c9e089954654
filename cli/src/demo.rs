//! `peerpool demo`: the main job on an embedded default.
//!
//! Starts three `peerpool run` child processes on loopback (fresh identities
//! and ports in a temporary folder), fully meshed with N = 3, each with an
//! echo service and a forward to each other node. Drives echo traffic
//! through every forward (a new TCP connection, hence a new pooled stream,
//! per request), redraws a table once a second, restarts one node halfway
//! (SIGKILL, then start again) to show the pools healing, and ends with a
//! summary: exit 0, or 1 with the reason if traffic failed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use peerpool::config::{Config, ForwardConfig, PeerConfig, ServiceConfig};
use peerpool::{identity, PeerStatus, Strategy};
use peerpool_testkit::admin::Admin;
use peerpool_testkit::load::{fill, new_histogram, serve_echo};
use peerpool_testkit::net::{try_free_tcp, try_free_udp};
use peerpool_testkit::procs::NodeProc;

use crate::table::Table;

const NAMES: [&str; 3] = ["a", "b", "c"];
/// Bytes per echo request.
const REQUEST: usize = 1024;
/// Concurrent clients per forward.
const CLIENTS: usize = 2;
/// The pause between a client's requests: keeps 6 forwards x 2 clients
/// well inside two cores, so the table stays responsive.
const PACE: Duration = Duration::from_millis(2);

pub(crate) struct Options {
    /// Seconds of traffic; 0 runs until Ctrl-C.
    pub(crate) duration: u64,
}

struct NodeSetup {
    name: &'static str,
    config_path: PathBuf,
    admin: Admin,
    /// (peer name, forward listen address)
    forwards: Vec<(&'static str, SocketAddr)>,
    log: PathBuf,
}

#[derive(Default)]
struct PairStats {
    requests: u64,
    errors: u64,
    /// Errors since healing finished (or since the start, before the restart).
    errors_when_healthy: u64,
    window: Option<Histogram<u64>>,
    total: Option<Histogram<u64>>,
    last_error: Option<String>,
}

type Stats = Arc<Mutex<BTreeMap<(&'static str, &'static str), PairStats>>>;

/// Writes identities and configs for three fully meshed nodes.
fn prepare(dir: &Path, upstreams: &[SocketAddr]) -> Result<Vec<NodeSetup>, String> {
    let mut ids = Vec::new();
    let mut udp = Vec::new();
    for name in NAMES {
        let out = identity::keygen(&dir.join(name).join("keys"), false, 30)
            .map_err(|e| format!("keygen for node {name}: {e}"))?;
        ids.push(out.id);
        udp.push(try_free_udp().map_err(|e| format!("no free UDP port: {e}"))?);
    }
    let mut setups = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let mut c = Config::default();
        c.node.listen = udp[i];
        c.node.keep_alive_interval = Duration::from_secs(1);
        c.node.idle_timeout = Duration::from_secs(3);
        c.pool.max_connections_per_peer = 3;
        c.pool.load_balancing_strategy = Strategy::LeastLoaded;
        c.pool.connection_timeout = Duration::from_secs(2);
        c.pool.stream_open_timeout = Duration::from_secs(2);
        c.retry.max_delay = Duration::from_secs(2);
        c.admin.listen = try_free_tcp().map_err(|e| format!("no free TCP port: {e}"))?;
        c.admin.drain_timeout = Duration::from_secs(2);
        let mut forwards = Vec::new();
        for (j, other) in NAMES.iter().enumerate() {
            if i == j {
                continue;
            }
            c.peers
                .push(PeerConfig::pinned(other.to_string(), ids[j], Some(udp[j])));
            let listen = try_free_tcp().map_err(|e| format!("no free TCP port: {e}"))?;
            c.forward.push(ForwardConfig::new(listen, *other, "echo"));
            forwards.push((*other, listen));
        }
        c.service.push(ServiceConfig::new("echo", upstreams[i]));
        let text = toml::to_string(&c).map_err(|e| format!("config for {name}: {e}"))?;
        let config_path = dir.join(name).join("peerpool.toml");
        std::fs::write(&config_path, text)
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        setups.push(NodeSetup {
            name,
            config_path,
            admin: Admin::new(c.admin.listen).with_timeout(Duration::from_secs(2)),
            forwards,
            log: dir.join(name).join("peerpool.log"),
        });
    }
    Ok(setups)
}

fn spawn_node(setup: &NodeSetup) -> Result<NodeProc, String> {
    // The demo is part of the peerpool binary: its nodes are this program.
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    NodeProc::spawn(&exe, &setup.config_path, &setup.log, "info")
        .map_err(|e| format!("start node {}: {e}", setup.name))
}

fn all_ready(setups: &[NodeSetup]) -> bool {
    setups.iter().all(|s| s.admin.ready())
}

/// One client of one forward: a fresh TCP connection per request.
async fn client(
    from: &'static str,
    to: &'static str,
    target: SocketAddr,
    seed: u64,
    stats: Stats,
    stop: Arc<AtomicBool>,
    healthy: Arc<AtomicBool>,
) {
    let mut out = vec![0u8; REQUEST];
    let mut back = vec![0u8; REQUEST];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        fill(&mut out, seed << 32 | n, 0);
        let started = Instant::now();
        // An error counts against the pools only if every node was up for
        // the whole request.
        let healthy_at_start = healthy.load(Ordering::Relaxed);
        let result = tokio::time::timeout(Duration::from_secs(5), async {
            let mut c = TcpStream::connect(target)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            c.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
            c.shutdown().await.map_err(|e| format!("write: {e}"))?;
            c.read_exact(&mut back)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if back != out {
                return Err("echo mismatch".to_string());
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err("timeout".into()));
        {
            let mut all = stats.lock().unwrap_or_else(|e| e.into_inner());
            let s = all.entry((from, to)).or_default();
            match result {
                Ok(()) => {
                    let us = started.elapsed().as_micros().max(1) as u64;
                    s.requests += 1;
                    let _ = s.window.get_or_insert_with(new_histogram).record(us);
                    let _ = s.total.get_or_insert_with(new_histogram).record(us);
                }
                Err(e) => {
                    s.errors += 1;
                    if healthy_at_start && healthy.load(Ordering::Relaxed) {
                        s.errors_when_healthy += 1;
                    }
                    s.last_error = Some(e);
                }
            }
        }
        tokio::time::sleep(PACE).await;
    }
}

/// What the table shows of one peer of one node.
fn peer_rows(setup: &NodeSetup) -> BTreeMap<String, PeerStatus> {
    setup
        .admin
        .peers()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect()
}

pub(crate) fn run(opts: Options) -> ExitCode {
    match demo(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\npeerpool demo: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(opts: Options) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let dir = tempfile::Builder::new()
        .prefix("peerpool-demo-")
        .tempdir()
        .map_err(|e| format!("cannot make a temporary folder: {e}"))?;

    // The echo upstreams live in this process.
    let mut upstreams = Vec::new();
    for _ in NAMES {
        let l = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| format!("cannot bind an echo upstream: {e}"))?;
        upstreams.push(l.local_addr().map_err(|e| e.to_string())?);
        rt.spawn(serve_echo(l));
    }
    let setups = prepare(dir.path(), &upstreams)?;
    // Every node is killed when its guard drops, so a failing demo leaves
    // nothing behind.
    let mut children: Vec<Option<NodeProc>> = Vec::new();
    for s in &setups {
        children.push(Some(spawn_node(s)?));
    }
    println!("peerpool demo: 3 nodes on loopback, N = 3 connections per peer, least_loaded");
    println!("files and logs in {}", dir.path().display());
    for s in &setups {
        println!(
            "  node {}: curl http://{}/peers   curl http://{}/metrics",
            s.name, s.admin.addr, s.admin.addr
        );
    }

    let start_wait = Instant::now();
    while !all_ready(&setups) {
        if start_wait.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "the nodes did not become ready within 30 s; see the logs in {}",
                dir.path().display()
            ));
        }
        for (i, child) in children.iter_mut().enumerate() {
            if let Some(status) = child.as_mut().and_then(NodeProc::exited) {
                return Err(format!(
                    "node {} exited with {status} at start; its log: {}",
                    NAMES[i],
                    setups[i].log.display()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "all nodes ready after {:.1}s; starting traffic",
        start_wait.elapsed().as_secs_f64()
    );

    let stats: Stats = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let healthy = Arc::new(AtomicBool::new(true));
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, Ordering::Relaxed);
            }
        });
    }
    let mut seed = 0;
    for s in &setups {
        for (peer, listen) in &s.forwards {
            for _ in 0..CLIENTS {
                seed += 1;
                rt.spawn(client(
                    s.name,
                    peer,
                    *listen,
                    seed,
                    stats.clone(),
                    stop.clone(),
                    healthy.clone(),
                ));
            }
        }
    }

    let total = Duration::from_secs(opts.duration);
    let restart_at = if opts.duration == 0 {
        Duration::from_secs(10)
    } else {
        total / 2
    };
    let victim = 2;
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut last_opened: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut restarted_at: Option<Instant> = None;
    let mut healed_after: Option<Duration> = None;
    let mut events: Vec<String> = Vec::new();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let elapsed = started.elapsed();
        if interrupted.load(Ordering::Relaxed) || (opts.duration > 0 && elapsed >= total) {
            break;
        }
        if restarted_at.is_none() && elapsed >= restart_at {
            healthy.store(false, Ordering::Relaxed);
            if let Some(mut child) = children[victim].take() {
                child.kill();
            }
            children[victim] = Some(spawn_node(&setups[victim])?);
            restarted_at = Some(Instant::now());
            events.push(format!(
                "{:>4.0}s  killed node {} (SIGKILL) and started it again: watch the pools heal",
                elapsed.as_secs_f64(),
                NAMES[victim]
            ));
        }
        if let (Some(at), None) = (restarted_at, healed_after) {
            if all_ready(&setups) {
                let took = at.elapsed();
                healed_after = Some(took);
                healthy.store(true, Ordering::Relaxed);
                events.push(format!(
                    "{:>4.0}s  healed: every node ready again {:.1}s after the restart",
                    elapsed.as_secs_f64(),
                    took.as_secs_f64()
                ));
            }
        }
        let screen = render(&setups, &stats, &mut last_opened, elapsed, &events);
        if tty {
            print!("\x1b[2J\x1b[H{screen}");
        } else {
            print!("{screen}");
        }
        let _ = std::io::stdout().flush();
    }
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    if restarted_at.is_some() && healed_after.is_none() && all_ready(&setups) {
        healed_after = restarted_at.map(|at| at.elapsed());
        healthy.store(true, Ordering::Relaxed);
    }
    let verdict = summary(&stats, restarted_at.is_some(), healed_after);
    drop(children);
    rt.shutdown_timeout(Duration::from_secs(1));
    verdict
}

fn ms(h: &Option<Histogram<u64>>, q: f64) -> String {
    match h {
        Some(h) if !h.is_empty() => format!("{:.2}", h.value_at_quantile(q) as f64 / 1e3),
        _ => "-".into(),
    }
}

fn render(
    setups: &[NodeSetup],
    stats: &Stats,
    last_opened: &mut BTreeMap<(String, String), u64>,
    elapsed: Duration,
    events: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\npeerpool demo  t={:.0}s   (Ctrl-C to stop)",
        elapsed.as_secs_f64()
    );
    let mut table = Table::new(&[
        "node",
        "peer",
        "state",
        "conns",
        "active",
        "streams/s",
        "p50 ms",
        "p99 ms",
        "rtt ms",
        "errors",
    ]);
    let mut all = stats.lock().unwrap_or_else(|e| e.into_inner());
    for s in setups {
        let rows = peer_rows(s);
        for (peer, _) in &s.forwards {
            let key = (s.name.to_string(), peer.to_string());
            let (state, conns, active, rate, rtt) = match rows.get(*peer) {
                Some(p) => {
                    let before = last_opened
                        .insert(key.clone(), p.streams_opened)
                        .unwrap_or(p.streams_opened);
                    (
                        p.state.to_string(),
                        p.connections.len().to_string(),
                        p.active_streams().to_string(),
                        p.streams_opened.saturating_sub(before).to_string(),
                        p.min_rtt()
                            .map_or("-".into(), |v| format!("{:.2}", v * 1e3)),
                    )
                }
                None => (
                    "(down)".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ),
            };
            let pair = all.entry((s.name, peer)).or_default();
            let window = pair.window.take();
            table.row(vec![
                s.name.to_string(),
                peer.to_string(),
                state,
                conns,
                active,
                rate,
                ms(&window, 0.5),
                ms(&window, 0.99),
                rtt,
                pair.errors.to_string(),
            ]);
        }
    }
    out.push_str(&table.render());
    for e in events {
        let _ = writeln!(out, "{e}");
    }
    out
}

fn summary(stats: &Stats, restarted: bool, healed_after: Option<Duration>) -> Result<(), String> {
    let all = stats.lock().unwrap_or_else(|e| e.into_inner());
    println!("\nsummary (requests through each forward, a new pooled stream each):");
    println!(
        "{:<9} {:>9} {:>7} {:>9} {:>9}  last error",
        "forward", "requests", "errors", "p50 ms", "p99 ms"
    );
    let mut problems = Vec::new();
    for ((from, to), s) in all.iter() {
        println!(
            "{:<9} {:>9} {:>7} {:>9} {:>9}  {}",
            format!("{from} -> {to}"),
            s.requests,
            s.errors,
            ms(&s.total, 0.5),
            ms(&s.total, 0.99),
            s.last_error.as_deref().unwrap_or("")
        );
        if s.requests == 0 {
            problems.push(format!("no request succeeded from {from} to {to}"));
        }
        if s.errors_when_healthy > 0 {
            problems.push(format!(
                "{} requests from {from} to {to} failed while every node was up",
                s.errors_when_healthy
            ));
        }
    }
    if all.len() != NAMES.len() * (NAMES.len() - 1) {
        problems.push("not every forward carried traffic".into());
    }
    match (restarted, healed_after) {
        (true, Some(t)) => println!(
            "node {} was restarted; the pools healed in {:.1}s (errors during that window are expected)",
            NAMES[2],
            t.as_secs_f64()
        ),
        (true, None) => problems.push("the pools did not heal after the restart".into()),
        (false, _) => println!("(stopped before the restart)"),
    }
    if problems.is_empty() {
        println!("demo OK");
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
