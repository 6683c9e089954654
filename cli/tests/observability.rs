//! The proof that the Grafana dashboard and the alerts work: two real nodes
//! with traffic, a real Prometheus scraping them every second, and every
//! PromQL expression of `grafana/dashboards/peerpool.json` run against it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerpool_testkit::prelude::*;
use serde_json::Value;

const HINT: &str = "apt-get install -y prometheus (.ci/run does)";

/// Runs a PromQL query; returns the result vector or the error text.
fn query(prom: SocketAddr, expr: &str) -> Result<Vec<Value>, String> {
    let url = format!("http://{prom}/api/v1/query?query={}", urlencode(expr));
    let (status, body) = http("GET", &url, None, None);
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{status}: {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Grafana's variables, as the dashboard would expand them with "All".
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$instance", ".*")
        .replace("$peer", ".*")
}

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(dir: &Path, targets: &[SocketAddr]) -> (Prometheus, SocketAddr) {
    let listen = free_tcp();
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: peerpool\n    static_configs:\n      - targets: [{}]\n",
        repo("grafana/alerts.yaml").display(),
        targets.join(", ")
    );
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(require("prometheus", HINT))
        .arg(format!("--config.file={}", path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    (Prometheus(child), listen)
}

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

/// (row title, panel) for every panel; panels follow their row.
fn panels(dashboard: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut row = String::new();
    for p in dashboard["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            row = p["title"].as_str().unwrap().to_string();
            // A collapsed row nests its panels.
            for inner in p["panels"].as_array().into_iter().flatten() {
                out.push((row.clone(), inner.clone()));
            }
        } else {
            out.push((row.clone(), p.clone()));
        }
    }
    out
}

#[test]
fn the_dashboard_structure_is_sound() {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("grafana/dashboards/peerpool.json")).unwrap(),
    )
    .unwrap();
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

fn alert_expr(name: &str) -> String {
    let docs = yaml_documents(&repo("grafana/alerts.yaml"));
    docs[0]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["alert"] == name)
        .and_then(|r| r["expr"].as_str())
        .unwrap_or_else(|| panic!("no alert {name}"))
        .to_string()
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

        let (prom, listen) = start_prometheus(&dir_path, &[a_admin, b_admin]);
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

        let dashboard: Value = serde_json::from_str(
            &std::fs::read_to_string(repo("grafana/dashboards/peerpool.json")).unwrap(),
        )
        .unwrap();
        let mut failures = Vec::new();
        let mut checked = 0;
        for (row, panel) in panels(&dashboard) {
            let must_have_data = ["Overview", "Connections", "Streams"].contains(&row.as_str());
            for target in panel["targets"].as_array().unwrap() {
                let expr = substitute(target["expr"].as_str().unwrap());
                checked += 1;
                match query(listen, &expr) {
                    Err(e) => failures.push(format!("[{row}] {}: {expr}: {e}", panel["title"])),
                    Ok(r) if r.is_empty() && must_have_data => {
                        failures.push(format!("[{row}] {}: {expr}: empty result", panel["title"]))
                    }
                    Ok(_) => {}
                }
            }
        }
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
