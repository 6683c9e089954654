//! What an operator reaches for first, through the real binary: the status
//! page in a real headless Chromium, `peerpool status` and its exit codes,
//! and `GET /config` with no secret in it.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use peerpool::sidecar::status::Status;
use peerpool_testkit::prelude::*;

fn status_cmd(admin: std::net::SocketAddr, token_file: Option<&Path>) -> Output {
    let mut c = Command::new(bin!());
    c.args(["status", "--admin", &admin.to_string()]);
    if let Some(f) = token_file {
        c.arg("--token-file").arg(f);
    }
    c.output().expect("run peerpool status")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Headless Chromium on `url` with `args`, its console going to stderr:
/// (stdout, stderr).
fn chromium(url: &str, args: &[&str]) -> (String, String) {
    let program = require("chromium", "apt-get install chromium (.ci/run does)");
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let out = Command::new(program)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            // Let the page's timers run: three polls of /status.
            "--virtual-time-budget=3500",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    (text(&out.stdout), text(&out.stderr))
}

/// The text of the first `<td data-k="KEY">` inside the row that opens
/// with `row` (an attribute like `data-peer="b"`).
fn cell(dom: &str, row: &str, key: &str) -> Option<String> {
    let start = dom.find(row)?;
    let rest = &dom[start..];
    let end = rest.find("</tr>")?;
    let row = &rest[..end];
    let tag = format!("data-k=\"{key}\">");
    let at = row.find(&tag)? + tag.len();
    Some(row[at..].split('<').next()?.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_and_command_show_what_the_nodes_did() {
    let upstream = echo_upstream().await;
    let s = setup(upstream, Duration::from_secs(5));
    let (_a, mut b) = s.start(bin!()).await;
    const REQUESTS: u64 = 40;
    for i in 0..REQUESTS {
        through(s.forward, format!("request {i}").as_bytes())
            .await
            .expect("a request through the forward");
    }
    let admin = s.a_admin;

    // The JSON the page and the command read.
    let (code, body) = http_async("GET", &format!("http://{admin}/status"), None, None).await;
    assert_eq!(code, 200, "{body}");
    let status: Status = serde_json::from_str(&body).expect("a Status");
    assert!(status.ready);
    let peer = &status.peers[0];
    assert_eq!(peer.status.name, "b");
    assert_eq!(peer.status.usable(), peer.status.target);
    assert!(peer.status.streams_opened >= REQUESTS, "{peer:?}");
    assert!(peer.opens >= REQUESTS, "every open is timed: {peer:?}");
    let forward = &status.forwards[0];
    assert_eq!(forward.name, s.forward.to_string());
    assert_eq!(forward.results.get("ok"), Some(&REQUESTS), "{forward:?}");
    assert_eq!(forward.failed(), 0);

    // The command: every peer ready, exit 0; the same facts in the table.
    let out = tokio::task::spawn_blocking(move || status_cmd(admin, None))
        .await
        .expect("status");
    let table = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{table}{}", text(&out.stderr));
    let row = table
        .lines()
        .find(|l| l.starts_with("b "))
        .unwrap_or_else(|| panic!("no row for peer b:\n{table}"));
    assert!(row.contains("healthy"), "{row}");
    assert!(
        row.contains(&format!("{0}/{0}", peer.status.target)),
        "{row}"
    );
    let fwd_row = table
        .lines()
        .find(|l| l.contains(&format!("forward {}", s.forward)))
        .unwrap_or_else(|| panic!("no row for the forward:\n{table}"));
    assert!(fwd_row.contains(&format!(" {REQUESTS} ")), "{fwd_row}");

    // The page in a real browser: it ran its script without an error and
    // shows the same numbers.
    let url = format!("http://{admin}/");
    let page_url = url.clone();
    let (dom, console) = tokio::task::spawn_blocking(move || chromium(&page_url, &["--dump-dom"]))
        .await
        .expect("chromium");
    // The page logs nothing: any console line is an error, a blocked
    // request (CSP) or an exception.
    let logged: Vec<&str> = console.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(
        logged.is_empty(),
        "the page wrote to the console:\n{logged:#?}"
    );
    assert!(dom.contains("data-peer=\"b\""), "no peer row in:\n{dom}");
    assert_eq!(
        cell(&dom, "data-peer=\"b\"", "state").as_deref(),
        Some("healthy")
    );
    assert_eq!(
        cell(&dom, "data-peer=\"b\"", "conns"),
        Some(format!("{0} / {0}", peer.status.target))
    );
    let flow = format!("data-flow=\"{}\"", s.forward);
    assert_eq!(cell(&dom, &flow, "total"), Some(REQUESTS.to_string()));
    assert_eq!(cell(&dom, &flow, "failed").as_deref(), Some("0"));
    assert!(dom.contains(">ready<"), "summary should say ready:\n{dom}");

    // A screenshot for people (README shows one); kept under target/.
    let artifacts = repo("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact dir");
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || chromium(&url, &[&arg, "--window-size=1400,520"]))
        .await
        .expect("chromium screenshot");
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");

    // b gone: a is not ready, and the command says so with exit 1.
    b.kill();
    tokio::task::spawn_blocking(move || {
        let a = Admin::new(admin);
        wait_blocking("a not ready", Duration::from_secs(15), || !a.ready())
    })
    .await
    .expect("the wait");
    let out = tokio::task::spawn_blocking(move || status_cmd(admin, None))
        .await
        .expect("status");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("NOT READY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_status_keep_the_token_rules_and_never_show_the_token() {
    const TOKEN: &str = "tok-3f9c1e7a55d04b2b";
    let upstream = echo_upstream().await;
    let s = setup_with(upstream, |a, _| a.admin.token = TOKEN.into());
    let (_a, _b) = s.start_with_token(bin!(), TOKEN).await;
    let admin = s.a_admin;
    let url = |p: &str| format!("http://{admin}{p}");
    for path in ["/", "/status", "/config"] {
        let (code, _) = http_async("GET", &url(path), None, None).await;
        assert_eq!(code, 401, "GET {path} without the token");
    }
    let (code, body) = http_async("GET", &url("/config"), Some(TOKEN), None).await;
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains(TOKEN), "the token leaked: {body}");
    let shown: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(shown["admin"]["token"], peerpool::sidecar::admin::REDACTED);
    // Everything else is the config the node runs: the file's, as loaded.
    let mut file: peerpool::config::Config =
        toml::from_str(&std::fs::read_to_string(&s.a_config).expect("a.toml")).expect("toml");
    file.admin.token = peerpool::sidecar::admin::REDACTED.into();
    assert_eq!(shown, serde_json::to_value(&file).expect("to JSON"));

    // The command: no token, exit 1 naming the fix; the token from a file, 0.
    let out = tokio::task::spawn_blocking(move || status_cmd(admin, None))
        .await
        .expect("status");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--token-file"),
        "{}",
        text(&out.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let tf = token_file.clone();
    let out = tokio::task::spawn_blocking(move || status_cmd(admin, Some(&tf)))
        .await
        .expect("status");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A token file that cannot be read is bad input: exit 2, named.
    let missing = dir.path().join("missing");
    let m = missing.clone();
    let out = tokio::task::spawn_blocking(move || status_cmd(admin, Some(&m)))
        .await
        .expect("status");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(&missing.display().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_age_are_replaced_without_a_failed_request() {
    use peerpool_testkit::load::{self, Mode, Options};
    let upstream = echo_upstream().await;
    let s = setup_with(upstream, |a, _| {
        a.pool.max_connection_age = Duration::from_secs(2);
    });
    let (_a, _b) = s.start(bin!()).await;
    let admin = Admin::new(s.a_admin);
    let first: std::collections::BTreeSet<u64> = admin
        .peer("b")
        .expect("peer b")
        .connections
        .iter()
        .map(|c| c.number)
        .collect();
    // A new TCP connection (and stream) per request for 7 s: each
    // connection lives 1.8-2.2 s, so every one of the first is replaced.
    let report = load::run(Options {
        target: s.forward,
        concurrency: 8,
        duration: Duration::from_secs(7),
        size: 512,
        mode: Mode::Echo,
        connection_per_request: true,
        requests: None,
        request_timeout: Duration::from_secs(5),
    })
    .await;
    assert!(
        report.requests > 500,
        "too little traffic: {}",
        report.requests
    );
    assert_eq!(
        report.error_count(),
        0,
        "failed requests: {:?}",
        report.errors
    );
    let peer = tokio::task::spawn_blocking(move || admin.peer("b"))
        .await
        .expect("peers")
        .expect("peer b");
    let now: std::collections::BTreeSet<u64> = peer.connections.iter().map(|c| c.number).collect();
    assert!(
        first.is_disjoint(&now),
        "every first connection is replaced: first {first:?}, now {now:?}"
    );
    // 2.2 s at most, plus waiting for the replacement of another one.
    assert!(
        peer.connections.iter().all(|c| c.age_seconds < 3.0),
        "{peer:?}"
    );
    // b saw them go with the age code, a handed them over cleanly.
    // b counts a close when its actor has seen it: a moment after a did.
    let b_admin = s.b_admin;
    let replaced = first.len() as f64;
    tokio::task::spawn_blocking(move || {
        let b = Admin::new(b_admin);
        wait_blocking("b counts the aged closes", Duration::from_secs(5), || {
            let m = b.metrics();
            let aged = metric(
                &m,
                "peerpool_connection_closed_total",
                &[("reason", "aged")],
            );
            aged.unwrap_or(0.0) >= replaced
        })
    })
    .await
    .expect("closes with reason aged on b");
    let a_metrics = Admin::new(s.a_admin).metrics();
    let failed = metric(&a_metrics, "peerpool_stream_open_failures_total", &[]).unwrap_or(0.0);
    assert_eq!(failed, 0.0, "stream opens failed on a");
}

/// Reads the lines of `path` (none if it does not exist yet).
fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn counter(admin: std::net::SocketAddr, result: &str) -> f64 {
    let m = Admin::new(admin).metrics();
    metric(&m, "peerpool_access_log_lines_total", &[("result", result)]).unwrap_or(0.0)
}

async fn requests(forward: std::net::SocketAddr, n: u64, size: usize) -> load::Report {
    load::run(load::Options {
        target: forward,
        concurrency: 8,
        duration: Duration::from_secs(60),
        size,
        mode: load::Mode::Echo,
        connection_per_request: true,
        requests: Some(n),
        request_timeout: Duration::from_secs(5),
    })
    .await
}

use peerpool_testkit::load;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_match_the_traffic_and_reopen_on_sigusr1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_log, b_log) = (dir.path().join("a.access"), dir.path().join("b.access"));
    let upstream = echo_upstream().await;
    let (al, bl) = (a_log.clone(), b_log.clone());
    let s = setup_with(upstream, move |a, b| {
        a.access_log.path = al;
        b.access_log.path = bl;
        b.access_log.format = peerpool::config::AccessLogFormat::Text;
    });
    let (a, _b) = s.start(bin!()).await;
    const N: u64 = 200;
    const SIZE: usize = 300;
    let report = requests(s.forward, N, SIZE).await;
    assert_eq!(
        (report.requests, report.error_count()),
        (N, 0),
        "{:?}",
        report.errors
    );
    let (al, bl) = (a_log.clone(), b_log.clone());
    tokio::task::spawn_blocking(move || {
        wait_blocking("every line written", Duration::from_secs(10), || {
            lines_of(&al).len() as u64 == N && lines_of(&bl).len() as u64 == N
        })
    })
    .await
    .expect("wait");
    for line in lines_of(&a_log) {
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        assert_eq!(v["kind"], "forward", "{line}");
        assert_eq!(v["name"], s.forward.to_string(), "{line}");
        assert_eq!(v["peer"], "b", "{line}");
        assert_eq!(v["endpoint"], s.b_udp.to_string(), "{line}");
        assert_eq!(v["result"], "ok", "{line}");
        assert_eq!(v["bytes_up"], SIZE as u64, "{line}");
        assert_eq!(v["bytes_down"], SIZE as u64, "{line}");
        assert_eq!(v["retries"], 0, "{line}");
        assert!(v["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{line}");
        assert!(
            v["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
    }
    for line in lines_of(&b_log) {
        assert!(
            line.contains(" service echo peer=a endpoint=127.0.0.1:"),
            "{line}"
        );
        assert!(line.contains(&format!(" up={SIZE} down={SIZE} ")), "{line}");
        assert!(line.ends_with(" result=ok retries=0"), "{line}");
    }
    let admin = s.a_admin;
    let (written, dropped) =
        tokio::task::spawn_blocking(move || (counter(admin, "written"), counter(admin, "dropped")))
            .await
            .expect("metrics");
    assert_eq!((written, dropped), (N as f64, 0.0));

    // Rotation: the file is moved away, SIGUSR1, new lines go to a new file.
    let rotated = dir.path().join("a.access.1");
    std::fs::rename(&a_log, &rotated).expect("rotate");
    a.signal("-USR1");
    // The writer looks for the request at least every 200 ms; lines sent
    // before it reopens still land in the old file, so count both.
    let more = requests(s.forward, 20, SIZE).await;
    assert_eq!(more.error_count(), 0);
    let (al, r) = (a_log.clone(), rotated.clone());
    tokio::task::spawn_blocking(move || {
        wait_blocking("the new file", Duration::from_secs(10), || {
            lines_of(&al).len() + lines_of(&r).len() == (N + 20) as usize && al.exists()
        })
    })
    .await
    .expect("wait");
    assert!(lines_of(&rotated).len() >= N as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_access_log_queue_drops_and_counts_lines_and_never_slows_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("access.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    // The node opens its log when it starts; a FIFO opens once both ends
    // do, so the reader waits in a thread. It reads nothing until told:
    // the writer blocks once the pipe's buffer is full.
    let (start_tx, start_rx) = std::sync::mpsc::channel::<()>();
    let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (f, counted) = (fifo.clone(), read.clone());
    std::thread::spawn(move || {
        use std::io::BufRead;
        let file = std::fs::File::open(&f).expect("open the FIFO");
        let _ = start_rx.recv();
        for line in std::io::BufReader::new(file).lines() {
            if line.is_err() {
                break;
            }
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let upstream = echo_upstream().await;
    let f = fifo.clone();
    let s = setup_with(upstream, move |a, _| {
        a.access_log.path = f;
        a.access_log.queue = 4;
    });
    let (_a, _b) = s.start(bin!()).await;
    const N: u64 = 1500;
    let started = std::time::Instant::now();
    let report = requests(s.forward, N, 64).await;
    let took = started.elapsed();
    assert_eq!(
        (report.requests, report.error_count()),
        (N, 0),
        "{:?}",
        report.errors
    );
    let admin = s.a_admin;
    let dropped = tokio::task::spawn_blocking(move || counter(admin, "dropped"))
        .await
        .expect("metrics");
    assert!(
        dropped > 0.0,
        "a stuck writer and a queue of 4 must drop lines"
    );
    // Now drain: every line is either read or counted as dropped.
    let _ = start_tx.send(());
    let r = read.clone();
    tokio::task::spawn_blocking(move || {
        wait_blocking(
            "lines read + dropped = connections",
            Duration::from_secs(10),
            || {
                let (w, d) = (counter(admin, "written"), counter(admin, "dropped"));
                w + d == N as f64 && r.load(std::sync::atomic::Ordering::Relaxed) as f64 == w
            },
        )
    })
    .await
    .expect("wait");
    eprintln!(
        "{N} connections in {took:?}, {} lines read, {dropped} dropped while the reader slept",
        read.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// An HAProxy that takes PROXY protocol v2 on `listen` (`accept-proxy`),
/// logs what the header said to `log`, and passes the bytes to `upstream`.
fn haproxy_accepting_proxy(
    dir: &Path,
    listen: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
) -> (std::process::Child, std::path::PathBuf) {
    let program = require("haproxy", "apt-get install haproxy (.ci/run does)");
    let config = format!(
        "global\n  log stdout format raw local0\n\
         defaults\n  mode tcp\n  log global\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend pp\n  bind {listen} accept-proxy\n  \
         log-format \"from=%ci:%cp to=%fi:%fp peer=%[fc_pp_authority]\"\n  default_backend up\n\
         backend up\n  server u {upstream}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).expect("haproxy.cfg");
    let log = dir.join("haproxy.log");
    let out = std::fs::File::create(&log).expect("haproxy log");
    let child = Command::new(program)
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start haproxy");
    (child, log)
}

/// One echo over a new TCP connection to `to`; returns the client's
/// address.
async fn talk(to: std::net::SocketAddr, message: &[u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(to).await.expect("connect");
    let from = c.local_addr().expect("client address");
    c.write_all(message).await.expect("write");
    let mut back = vec![0u8; message.len()];
    c.read_exact(&mut back).await.expect("the echo");
    assert_eq!(back, message);
    from
}

/// Kills the child when dropped (also when the test fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_tells_the_upstream_who_called() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = echo_upstream().await;
    let hp_addr = free_tcp();
    let (hp, hp_log) = haproxy_accepting_proxy(dir.path(), hp_addr, upstream);
    let _hp = Killed(hp);
    // A second service whose upstream hands us the raw header bytes.
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let raw_addr = raw.local_addr().expect("addr");
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (mut c, _) = raw.accept().await.expect("accept");
        let mut fixed = [0u8; 16];
        c.read_exact(&mut fixed).await.expect("PROXY fixed part");
        let mut rest = vec![0u8; usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))];
        c.read_exact(&mut rest).await.expect("PROXY body");
        let _ = head_tx.send([fixed.to_vec(), rest].concat());
        let mut buf = [0u8; 64];
        while let Ok(n) = c.read(&mut buf).await {
            if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let raw_forward = free_tcp();
    let a_id = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen_id = a_id.clone();
    let s = setup_with(upstream, move |a, b| {
        b.service[0].upstream = hp_addr.into();
        b.service[0].proxy_protocol = peerpool::config::ProxyProtocol::V2;
        let mut raw_service = peerpool::config::ServiceConfig::new("raw", raw_addr);
        raw_service.proxy_protocol = peerpool::config::ProxyProtocol::V2;
        b.service.push(raw_service);
        a.forward.push(peerpool::config::ForwardConfig::new(
            raw_forward,
            "b",
            "raw",
        ));
        *seen_id.lock().unwrap() = b.peers[0].id;
    });
    let a_id = a_id.lock().unwrap().expect("a's pinned id").to_string();
    tokio::task::spawn_blocking(move || {
        wait_blocking("haproxy listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(hp_addr).is_ok()
        })
    })
    .await
    .expect("wait");
    let (_a, _b) = s.start(bin!()).await;

    // Through HAProxy: it logs the client's address and port, the forward's
    // address and port, and the calling peer's name.
    let from = talk(s.forward, b"who am i").await;
    let want = format!("from={from} to={} peer=a", s.forward);
    let log = hp_log.clone();
    let w = want.clone();
    tokio::task::spawn_blocking(move || {
        wait_blocking("HAProxy's log line", Duration::from_secs(10), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&w)
        })
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "want {want:?} in HAProxy's log:\n{}",
            std::fs::read_to_string(&hp_log).unwrap_or_default()
        )
    });

    eprintln!(
        "HAProxy logged: {}",
        std::fs::read_to_string(&hp_log).unwrap_or_default().trim()
    );
    // The raw bytes: addresses and both TLVs, as README documents them.
    let from = talk(raw_forward, b"x").await;
    let head = head_rx.await.expect("the raw header");
    assert_eq!(&head[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(&head[12..14], &[0x21, 0x11], "PROXY over TCP/IPv4");
    assert_eq!(&head[16..20], &[127, 0, 0, 1], "source address");
    assert_eq!(&head[20..24], &[127, 0, 0, 1], "destination address");
    assert_eq!(
        u16::from_be_bytes([head[24], head[25]]),
        from.port(),
        "source port"
    );
    assert_eq!(
        u16::from_be_bytes([head[26], head[27]]),
        raw_forward.port(),
        "destination port"
    );
    let mut tlvs = std::collections::BTreeMap::new();
    let mut at = 28;
    while at + 3 <= head.len() {
        let len = usize::from(u16::from_be_bytes([head[at + 1], head[at + 2]]));
        tlvs.insert(head[at], head[at + 3..at + 3 + len].to_vec());
        at += 3 + len;
    }
    assert_eq!(at, head.len(), "TLVs fill the header exactly");
    assert_eq!(tlvs.get(&0x02).map(Vec::as_slice), Some(&b"a"[..]));
    assert_eq!(tlvs.get(&0xE0).map(Vec::as_slice), Some(a_id.as_bytes()));
}

/// An echo server on a Unix socket: each connection gets its bytes back,
/// then an end once the client ended.
fn unix_echo(path: &Path) -> tokio::task::JoinHandle<()> {
    let l = tokio::net::UnixListener::bind(path).expect("bind the unix echo upstream");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
                }
            });
        }
    })
}

/// Sends `data` over a new Unix socket connection, half-closes and reads
/// until the end.
async fn unix_exchange(path: &Path, data: &[u8]) -> Result<Vec<u8>, String> {
    let c = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| format!("connect {}: {e}", path.display()))?;
    peerpool_testkit::procs::exchange_over(c, data).await
}

/// Waits (up to 10 s) until `path` exists, or until it is gone.
async fn wait_for_file(path: &Path, present: bool, what: &'static str) {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        wait_blocking(what, Duration::from_secs(10), || path.exists() == present)
    })
    .await
    .expect("the wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_sockets_carry_forwards_and_upstreams_and_their_files_come_and_go() {
    use peerpool::config::{Address, ForwardConfig};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let (front, back) = (dir.path().join("front.sock"), dir.path().join("echo.sock"));
    let _echo = unix_echo(&back);
    // A socket file left by a process that died: the forward replaces it.
    drop(std::os::unix::net::UnixListener::bind(&front).expect("a stale socket file"));
    assert!(front.exists());

    let (f, b_sock) = (front.clone(), back.clone());
    let s = setup_with(echo_upstream().await, move |a, b| {
        b.service[0].upstream = Address::Unix(b_sock);
        a.forward
            .push(ForwardConfig::new(Address::Unix(f), "b", "echo"));
    });
    let (mut a, _b) = s.start(bin!()).await;
    let meta = std::fs::symlink_metadata(&front).expect("the forward's socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "{meta:?}");

    // Unix client -> a -> b -> Unix upstream, and TCP client -> a -> b ->
    // Unix upstream, concurrently, with sizes up to 1 MiB (many chunks
    // each way, half-close mapped to the end).
    let mut tasks = Vec::new();
    for i in 0..24usize {
        let (front, tcp) = (front.clone(), s.forward);
        tasks.push(tokio::spawn(async move {
            let size = [1, 4096, 100_000, 1 << 20][i % 4];
            let data: Vec<u8> = (0..size).map(|k| (k * 7 + i) as u8).collect();
            let back = if i % 2 == 0 {
                unix_exchange(&front, &data).await
            } else {
                exchange(tcp, &data).await
            };
            match back {
                Ok(b) if b == data => Ok(()),
                Ok(b) => Err(format!("#{i}: sent {size} bytes, got {} back", b.len())),
                Err(e) => Err(format!("#{i}: {e}")),
            }
        }));
    }
    for t in tasks {
        t.await
            .expect("exchange task")
            .expect("an echo over unix sockets");
    }
    let label = format!("unix:{}", front.display());
    let m = Admin::new(s.a_admin).metrics();
    let ok = metric(
        &m,
        "peerpool_forward_connections_total",
        &[("forward", &label), ("result", "ok")],
    );
    assert_eq!(ok, Some(12.0), "forward {label}");
    let m = Admin::new(s.b_admin).metrics();
    let served = metric(
        &m,
        "peerpool_service_streams_total",
        &[("service", "echo"), ("result", "ok")],
    );
    assert_eq!(served, Some(24.0));

    // A reload that removes the forward removes its file; one that adds it
    // back makes a new one that serves.
    let full = std::fs::read_to_string(&s.a_config).expect("a.toml");
    let mut without: peerpool::config::Config = toml::from_str(&full).expect("a.toml parses");
    without.forward.truncate(1);
    std::fs::write(&s.a_config, toml::to_string(&without).expect("toml")).expect("write a.toml");
    a.signal("-HUP");
    wait_for_file(&front, false, "the reload removes the socket file").await;
    std::fs::write(&s.a_config, &full).expect("write a.toml back");
    a.signal("-HUP");
    wait_for_file(&front, true, "the reload makes the socket file").await;
    let again = unix_exchange(&front, b"after the reload")
        .await
        .expect("an echo over the re-added forward");
    assert_eq!(again, b"after the reload");

    // A graceful stop removes the socket file; a second node on the path
    // while the first runs would have been refused (see src/sidecar/local.rs).
    a.signal("-TERM");
    assert_eq!(a.wait(Duration::from_secs(20)), Some(0), "{}", a.log_text());
    assert!(!front.exists(), "the socket file outlived the node");
    assert!(
        back.exists(),
        "the upstream's socket is not the node's to remove"
    );

    // A file that is no socket is never replaced: `run` names it and stops.
    std::fs::write(&front, b"not a socket").expect("a regular file");
    let out = Command::new(bin!())
        .arg("run")
        .arg("--config")
        .arg(&s.a_config)
        .output()
        .expect("run peerpool");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot bind forward[1].listen {label}: the path exists and is not a socket"
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&front).expect("the file"), b"not a socket");
}

/// The `data-peer` names of the peer rows, in page order.
fn peer_rows(dom: &str) -> Vec<String> {
    // The page's script (dumped with the DOM) holds the row template.
    let body = dom.split("<script>").next().unwrap_or_default();
    body.split("<tr data-peer=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_stays_usable_at_500_peers() {
    use peerpool::config::PeerConfig;
    use peerpool::PeerId;
    const INBOUND: usize = 498;
    let upstream = echo_upstream().await;
    // b (real, healthy), one peer at a dead address (dialled, failing),
    // and peers that only ever dial in (none does: never connected).
    let dead = free_udp();
    let s = setup_with(upstream, move |a, _| {
        a.peers.push(PeerConfig::pinned(
            "zz-dead",
            PeerId::from_spki(b"zz-dead"),
            Some(dead),
        ));
        for i in 0..INBOUND {
            let name = format!("peer-{i:04}");
            let id = PeerId::from_spki(name.as_bytes());
            a.peers.push(PeerConfig::pinned(name, id, None));
        }
    });
    // a is never ready (zz-dead): wait for b's connections instead.
    let _b = NodeProc::start(bin!(), &s.b_config, s.b_log.clone());
    let _a = NodeProc::start(bin!(), &s.a_config, s.a_log.clone());
    let admin = s.a_admin;
    tokio::task::spawn_blocking(move || {
        let a = Admin::new(admin);
        wait_blocking("b healthy on a", Duration::from_secs(20), || {
            a.peer("b")
                .is_some_and(|p| p.state == peerpool::PeerState::Healthy)
        })
    })
    .await
    .expect("the wait for b");

    // The JSON the page polls every second: what one poll costs the node.
    let status_url = format!("http://{admin}/status");
    let mut took = Vec::new();
    let mut size = 0;
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let (code, body) = http_async("GET", &status_url, None, None).await;
        took.push(started.elapsed());
        assert_eq!(code, 200);
        size = body.len();
    }
    took.sort();
    let median = took[took.len() / 2];
    // The baseline, in the same run: /metrics renders the same series, the
    // bulk of what /status costs. What /status adds (the peers' table, the
    // grouping, the JSON) must stay small next to it, whichever build runs.
    let mut metrics_took = Vec::new();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let (code, _) = http_async("GET", &format!("http://{admin}/metrics"), None, None).await;
        metrics_took.push(started.elapsed());
        assert_eq!(code, 200);
    }
    metrics_took.sort();
    let baseline = metrics_took[metrics_took.len() / 2];
    eprintln!(
        "GET /status at 500 peers: {size} bytes, median {median:?}, max {:?}; GET /metrics median {baseline:?}",
        took[took.len() - 1],
    );
    // Release build: 39 against 33 ms; the build tests run by default
    // (peerpool's own code unoptimized): 84 against 31 ms. A snapshot that
    // did per-peer work over every sample would be a multiple of either.
    assert!(
        median <= baseline * 4 + Duration::from_millis(10),
        "GET /status median {median:?} against GET /metrics {baseline:?}"
    );
    assert!(
        median < Duration::from_millis(500),
        "GET /status median {median:?}"
    );
    assert!(size < 2 << 20, "GET /status is {size} bytes");

    let page = |query: &str| {
        let url = format!("http://{admin}/{query}");
        let query = query.to_string();
        async move {
            let (dom, console) =
                tokio::task::spawn_blocking(move || chromium(&url, &["--dump-dom"]))
                    .await
                    .expect("chromium");
            let logged: Vec<String> = console
                .lines()
                .filter(|l| l.contains(":CONSOLE"))
                .map(str::to_string)
                .collect();
            assert!(logged.is_empty(), "{query}: console:\n{logged:#?}");
            dom
        }
    };

    // Every peer has a row; problems first, so the one healthy peer is last.
    let dom = page("").await;
    let rows = peer_rows(&dom);
    assert_eq!(
        rows.len(),
        INBOUND + 2,
        "rows: {:?}",
        &rows[..rows.len().min(5)]
    );
    assert_eq!(rows.last().map(String::as_str), Some("b"), "healthy last");
    assert!(
        dom.contains("1 of 500 peers healthy"),
        "summary in:\n{}",
        &dom[..2000.min(dom.len())]
    );
    let first = dom.split("<tr data-peer=").nth(1).unwrap_or_default();
    assert!(
        first.contains("class=\"problem\""),
        "first row is no problem: {first:.300}"
    );

    // A link with a filter shows the one matching peer, and says so.
    let dom = page("?filter=peer-0042").await;
    assert_eq!(peer_rows(&dom), ["peer-0042"]);
    assert!(
        dom.contains("<span data-k=\"shown\">1</span> shown"),
        "{dom:.3000}"
    );

    // A link with a sort orders by it.
    let dom = page("?sort=name&order=asc").await;
    let rows = peer_rows(&dom);
    let mut sorted = rows.clone();
    sorted.sort();
    assert_eq!(rows.len(), INBOUND + 2);
    assert_eq!(rows, sorted, "sorted by name");
    assert_eq!(rows.first().map(String::as_str), Some("b"));
}
