//! A real Prometheus for the observability proofs: started on a scrape
//! config of our own (every second, the repository's alert rules), killed
//! when dropped, queried over its HTTP API; and the dashboard's panels and
//! the alert rules read from the repository.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::admin::http;
use crate::{repo, require, yaml_documents};

pub const HINT: &str = "apt-get install -y prometheus (.ci/run does)";

/// A Prometheus process, killed when dropped.
pub struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The command that runs `prometheus` (in a testbed host: `ip netns exec`).
pub fn program() -> Command {
    Command::new(require("prometheus", HINT))
}

/// Starts `prometheus` (through `program`, see [`program`]) on `listen`,
/// scraping `targets` every second with `grafana/alerts.yaml` loaded; its
/// data and log go to `dir`.
pub fn start(
    mut program: Command,
    dir: &Path,
    listen: SocketAddr,
    targets: &[SocketAddr],
) -> Prometheus {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: peerpool\n    static_configs:\n      - targets: [{}]\n",
        repo("grafana/alerts.yaml").display(),
        targets.join(", ")
    );
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config).expect("write prometheus.yml");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
    let child = program
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
    Prometheus(child)
}

/// Runs a PromQL query; returns the result vector or the error text.
pub fn query(prom: SocketAddr, expr: &str) -> Result<Vec<Value>, String> {
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
pub fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$instance", ".*")
        .replace("$peer", ".*")
}

/// The dashboard, `grafana/dashboards/peerpool.json`.
pub fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo("grafana/dashboards/peerpool.json"))
        .expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// (row title, panel) for every panel; panels follow their row.
pub fn panels(dashboard: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut row = String::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        if p["type"] == "row" {
            row = p["title"].as_str().unwrap_or_default().to_string();
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

/// Runs every query of the panels in `rows` (all rows if empty); returns
/// how many ran and what failed: a query error anywhere, an empty result
/// in a row of `must_have_data`.
pub fn check_dashboard(prom: SocketAddr, must_have_data: &[&str]) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for (row, panel) in panels(&dashboard()) {
        let needs_data = must_have_data.contains(&row.as_str());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = substitute(target["expr"].as_str().unwrap_or_default());
            checked += 1;
            match query(prom, &expr) {
                Err(e) => failures.push(format!("[{row}] {}: {expr}: {e}", panel["title"])),
                Ok(r) if r.is_empty() && needs_data => {
                    failures.push(format!("[{row}] {}: {expr}: empty result", panel["title"]))
                }
                Ok(_) => {}
            }
        }
    }
    (checked, failures)
}

/// The expression of alert `name` in `grafana/alerts.yaml`.
pub fn alert_expr(name: &str) -> String {
    let docs = yaml_documents(&repo("grafana/alerts.yaml"));
    docs[0]["groups"][0]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["alert"] == name)
        .and_then(|r| r["expr"].as_str())
        .unwrap_or_else(|| panic!("no alert {name}"))
        .to_string()
}
