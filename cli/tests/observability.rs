//! The proof that the Grafana dashboard and the alerts work: two real nodes
//! with traffic, a real Prometheus scraping them every second, and every
//! PromQL expression of `grafana/dashboards/peerpool.json` run against it.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerpool_testkit::prelude::*;
use peerpool_testkit::prom::{self, alert_expr, check_dashboard, dashboard, panels, query, HINT};
use serde_json::Value;

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_dashboard_structure_is_sound() {
    let d: Value = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39);
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "instance", "peer"]);
    let mut ids = std::collections::HashSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
    }
    let rows: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        rows,
        [
            "Overview",
            "Connections",
            "Streams",
            "Groups",
            "Network",
            "Sidecar",
            "Process"
        ]
    );
    for (row, p) in panels(&d) {
        assert!(ids.contains(&p["id"].as_u64().unwrap()) || row.is_empty());
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {} in {row}",
            p["title"]
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
        }
    }
}

#[test]
fn alert_rules_pass_promtool() {
    for (what, file) in [
        ("rules", "grafana/alerts.yaml"),
        ("config", "grafana/prometheus.yml"),
    ] {
        let out = Command::new(require("promtool", HINT))
            .args(["check", what])
            .arg(repo(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check {what} {file}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new(require("promtool", HINT))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_works_against_a_real_prometheus() {
    require("prometheus", HINT);
    let upstream = echo_upstream().await;
    let s = setup_with(upstream, |a, b| {
        // So that the stopped peer is declared unreachable within seconds.
        a.pool.connection_timeout = Duration::from_secs_f64(0.5);
        a.retry.max_retries = 1;
        a.retry.max_delay = Duration::from_secs_f64(30.0);
        b.admin.drain_timeout = Duration::from_secs_f64(2.0);
    });
    let mut b = NodeProc::start(bin!(), &s.b_config, s.b_log.clone());
    let _a = NodeProc::start(bin!(), &s.a_config, s.a_log.clone());
    let (a_admin, b_admin, forward) = (s.a_admin, s.b_admin, s.forward);
    tokio::task::spawn_blocking(move || wait_ready(a_admin, "node a", Duration::from_secs(20)))
        .await
        .unwrap();

    // Traffic for as long as Prometheus looks.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut ok = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if through(forward, &[7u8; 512]).await.is_ok() {
                    ok += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ok
        })
    };

    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    let checked = tokio::task::spawn_blocking(move || {
        // Both nodes' /metrics pass promtool's lint.
        std::thread::sleep(Duration::from_millis(500));
        for admin in [a_admin, b_admin] {
            let (status, text) = http("GET", &format!("http://{admin}/metrics"), None, None);
            assert_eq!(status, 200);
            let (ok, out) = promtool_check_metrics(&text);
            assert!(
                ok && out.trim().is_empty(),
                "promtool check metrics on {admin}:\n{out}"
            );
        }

        let listen = free_tcp();
        let prom = prom::start(prom::program(), &dir_path, listen, &[a_admin, b_admin]);
        wait_until(
            "prometheus scrapes both nodes",
            Duration::from_secs(30),
            || query(listen, "count(up{job=\"peerpool\"} == 1) == 2").is_ok_and(|r| !r.is_empty()),
        );
        // Enough scrapes for 10 s rate windows to hold two samples with traffic.
        wait_until("stream rates visible", Duration::from_secs(30), || {
            query(listen, "sum(rate(peerpool_streams_opened_total[10s])) > 0")
                .is_ok_and(|r| !r.is_empty())
        });

        let (checked, failures) = check_dashboard(listen, &["Overview", "Connections", "Streams"]);
        assert!(
            failures.is_empty(),
            "{} of {checked} queries failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
        (prom, listen, checked)
    })
    .await
    .unwrap();
    let (prom, listen, checked) = checked;
    stop.store(true, Ordering::Relaxed);
    let ok = traffic.await.unwrap();
    assert!(ok > 0);
    println!("{checked} dashboard queries answered; {ok} requests of traffic");

    // Stop b: a's peer b becomes unreachable and the alert expression fires.
    let unreachable = alert_expr("PeerpoolPeerUnreachable");
    assert!(
        query(listen, &unreachable).unwrap().is_empty(),
        "the unreachable alert fires while both nodes run"
    );
    b.signal("-TERM");
    tokio::task::spawn_blocking(move || {
        assert_eq!(b.wait(Duration::from_secs(10)), Some(0));
        wait_until(
            "the unreachable alert expression",
            Duration::from_secs(30),
            || query(listen, &unreachable).is_ok_and(|r| !r.is_empty()),
        );
        drop(prom);
    })
    .await
    .unwrap();
}
