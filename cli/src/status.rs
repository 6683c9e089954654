//! `peerpool status`: a node's `GET /status` as a terminal table (the
//! demo's table code), rates and open latency over the last second. Exit 0
//! when every peer is ready, 1 otherwise (or when the node does not answer),
//! 2 for bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use peerpool::sidecar::status::{PeerRates, Status};
use peerpool_testkit::admin::request;

use crate::table::Table;

pub(crate) struct Options {
    pub admin: String,
    pub token_file: Option<PathBuf>,
    pub watch: bool,
}

/// The base URL from `host:port` or `http://host:port[/]`.
fn base_url(admin: &str) -> Result<String, String> {
    let base = admin.trim_end_matches('/');
    if base.starts_with("https://") {
        return Err(format!(
            "--admin {admin}: the admin API speaks plain HTTP (put it on loopback or behind a TLS proxy)"
        ));
    }
    let base = if base.starts_with("http://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    if base.len() <= "http://".len() {
        return Err(format!(
            "--admin {admin:?}: give host:port, for example 127.0.0.1:9464"
        ));
    }
    Ok(base)
}

fn read_token(path: &PathBuf) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(format!(
            "--token-file {}: the file is empty",
            path.display()
        ));
    }
    Ok(token)
}

struct Client {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn fetch(&self) -> Result<Status, String> {
        let r = request(&self.agent, "GET", &self.url, self.token.as_deref(), None);
        match r.status {
            200 => serde_json::from_str(&r.body)
                .map_err(|e| format!("{}: not a peerpool status ({e})", self.url)),
            0 => Err(format!("{}: no answer ({})", self.url, r.body)),
            401 => Err(format!(
                "{}: 401, give the admin token with --token-file",
                self.url
            )),
            s => Err(format!("{}: HTTP {s}: {}", self.url, r.body.trim())),
        }
    }
}

pub(crate) fn run(opts: Options) -> ExitCode {
    let setup = base_url(&opts.admin).and_then(|base| {
        let token = opts.token_file.as_ref().map(read_token).transpose()?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build();
        Ok(Client {
            url: format!("{base}/status"),
            token,
            agent: ureq::Agent::new_with_config(config),
        })
    });
    let client = match setup {
        Ok(c) => c,
        Err(e) => {
            eprintln!("peerpool status: {e}");
            return ExitCode::from(crate::EXIT_BAD_INPUT);
        }
    };
    let mut before = match client.fetch() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("peerpool status: {e}");
            return ExitCode::from(1);
        }
    };
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = match client.fetch() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("peerpool status: {e}");
                if opts.watch {
                    continue;
                }
                return ExitCode::from(1);
            }
        };
        if opts.watch {
            // Clear the screen and go home, as `watch` does.
            print!("\x1b[2J\x1b[H");
        }
        print!("{}", render(&before, &now));
        if !opts.watch {
            return ExitCode::from(if now.ready { 0 } else { 1 });
        }
        before = now;
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.2}", s * 1e3))
}

/// The table of `now`, rates against `before`.
pub(crate) fn render(before: &Status, now: &Status) -> String {
    let seconds = (now.uptime_seconds - before.uptime_seconds).max(1e-3);
    let mut peers = Table::new(&[
        "peer",
        "state",
        "conns",
        "active",
        "streams/s",
        "p50 ms",
        "p99 ms",
        "rtt ms",
        "errors",
        "ejected",
        "backoff s",
    ]);
    for p in &now.peers {
        let s = &p.status;
        let rates = before
            .peers
            .iter()
            .find(|b| b.status.name == s.name)
            .map(|b| PeerRates::between(b, p, seconds));
        peers.row(vec![
            s.name.clone(),
            s.state.to_string(),
            format!("{}/{}", s.usable(), s.target),
            s.active_streams().to_string(),
            rates.map_or("-".into(), |r| format!("{:.1}", r.streams_per_sec)),
            ms(rates.and_then(|r| r.open_p50)),
            ms(rates.and_then(|r| r.open_p99)),
            ms(s.min_rtt()),
            s.stream_open_failures.to_string(),
            p.ejections.to_string(),
            format!("{:.1}", s.backoff_seconds),
        ]);
    }
    let mut flows = Table::new(&[
        "forward / service",
        "held",
        "per s",
        "total",
        "not ok",
        "retries",
    ]);
    let old = |list: &[peerpool::sidecar::status::Flow], name: &str| {
        list.iter().find(|f| f.name == name).map(|f| f.total())
    };
    for (kind, list, was) in [
        ("forward", &now.forwards, &before.forwards),
        ("service", &now.services, &before.services),
    ] {
        for f in list.iter() {
            flows.row(vec![
                format!("{kind} {}", f.name),
                f.active.map_or("-".into(), |a| a.to_string()),
                old(was, &f.name).map_or("-".into(), |t| {
                    format!("{:.1}", f.total().saturating_sub(t) as f64 / seconds)
                }),
                f.total().to_string(),
                f.failed().to_string(),
                f.retries.to_string(),
            ]);
        }
    }
    let healthy = now
        .peers
        .iter()
        .filter(|p| p.status.state == peerpool::PeerState::Healthy)
        .count();
    format!(
        "peerpool {}  {}  {healthy} of {} peers healthy  up {:.0} s\n\n{}\n{}",
        now.version,
        if now.ready { "ready" } else { "NOT READY" },
        now.peers.len(),
        now.uptime_seconds,
        peers.render(),
        flows.render()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_take_host_port_or_an_http_url() {
        assert_eq!(
            base_url("127.0.0.1:9464").as_deref(),
            Ok("http://127.0.0.1:9464")
        );
        assert_eq!(base_url("http://h:1/").as_deref(), Ok("http://h:1"));
        assert!(base_url("https://h:1").unwrap_err().contains("plain HTTP"));
        assert!(base_url("").is_err());
    }
}
