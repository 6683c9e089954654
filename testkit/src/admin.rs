//! The admin API from outside: a typed client (`/peers` as
//! [`PeerStatus`], never JSON picked apart by string keys), raw HTTP calls
//! for tests of the API itself, and reading a series out of Prometheus text.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerpool::PeerStatus;

/// One HTTP answer; `status` 0 means no answer (refused, timed out).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
    pub took: Duration,
}

fn agent(timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build();
    ureq::Agent::new_with_config(config)
}

/// A blocking HTTP call: `method` GET, POST (JSON `body`) or DELETE.
pub fn request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Response {
    let started = Instant::now();
    let auth = token.map(|t| format!("Bearer {t}"));
    let result = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" {
                agent.get(url)
            } else {
                agent.delete(url)
            };
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        "POST" => {
            let mut r = agent.post(url).header("Content-Type", "application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(body.unwrap_or(""))
        }
        other => panic!("unsupported method {other}"),
    };
    match result {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            // Not read_to_string: ureq's own takes ~6 ms more than curl for a
            // 1 MB body, which benches would bill to the node's /metrics.
            let mut bytes = Vec::new();
            let _ = std::io::Read::read_to_end(&mut resp.body_mut().as_reader(), &mut bytes);
            Response {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
                took: started.elapsed(),
            }
        }
        Err(e) => Response {
            status: 0,
            body: e.to_string(),
            took: started.elapsed(),
        },
    }
}

/// A blocking HTTP call with its own agent: (status, body). Run it off the
/// actix thread (`tokio::task::spawn_blocking`, or [`http_async`]) when the
/// server is in the same process.
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let r = request(&agent(Duration::from_secs(10)), method, url, token, body);
    (r.status, r.body)
}

/// [`http`] from async code without blocking the runtime.
pub async fn http_async(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let (m, u, t, b) = (
        method.to_string(),
        url.to_string(),
        token.map(str::to_string),
        body.map(str::to_string),
    );
    tokio::task::spawn_blocking(move || http(&m, &u, t.as_deref(), b.as_deref()))
        .await
        .expect("http call panicked")
}

/// A node's admin API.
#[derive(Clone)]
pub struct Admin {
    pub addr: SocketAddr,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Admin {
    pub fn new(addr: SocketAddr) -> Admin {
        Admin {
            addr,
            token: None,
            agent: agent(Duration::from_secs(10)),
        }
    }

    /// Sends `Authorization: Bearer token` with every request.
    pub fn with_token(mut self, token: &str) -> Admin {
        self.token = Some(token.to_string());
        self
    }

    /// Gives up on a request after `limit` (an answer of status 0).
    pub fn with_timeout(mut self, limit: Duration) -> Admin {
        self.agent = agent(limit);
        self
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str) -> Response {
        self.call("GET", path, None)
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        request(
            &self.agent,
            method,
            &self.url(path),
            self.token.as_deref(),
            body,
        )
    }

    /// `GET /healthz` answers 200.
    pub fn healthy(&self) -> bool {
        self.get("/healthz").status == 200
    }

    /// `GET /readyz` answers 200.
    pub fn ready(&self) -> bool {
        self.get("/readyz").status == 200
    }

    /// `GET /metrics` (empty when the node does not answer).
    pub fn metrics(&self) -> String {
        let r = self.get("/metrics");
        if r.status == 200 {
            r.body
        } else {
            String::new()
        }
    }

    /// `GET /peers`; `None` when the node does not answer or answers
    /// something that is not a list of peers.
    pub fn peers(&self) -> Option<Vec<PeerStatus>> {
        let r = self.get("/peers");
        if r.status != 200 {
            return None;
        }
        serde_json::from_str(&r.body).ok()
    }

    /// One peer of `GET /peers`, by name.
    pub fn peer(&self, name: &str) -> Option<PeerStatus> {
        self.peers()?.into_iter().find(|p| p.name == name)
    }

    /// Usable connections over every peer.
    pub fn usable_connections(&self) -> Option<usize> {
        Some(self.peers()?.iter().map(PeerStatus::usable).sum())
    }

    /// The sum over peers of `field` (for counters such as dial attempts).
    pub fn peers_sum(&self, field: impl Fn(&PeerStatus) -> u64) -> Option<u64> {
        Some(self.peers()?.iter().map(field).sum())
    }
}

/// The value of one series in Prometheus text (the sum over series that
/// match all `labels`), if any matches.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}
