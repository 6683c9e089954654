//! Keeps the documentation and the layout rules honest.

use std::path::Path;

use peerpool::config::Config;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// README's retry table, recomputed from the default policy.
#[test]
fn readme_retry_table_matches_the_code() {
    let retry = Config::default().retry;
    let policy = retry.policy();
    let pct = (retry.jitter_factor * 100.0).round();
    let mut rows = vec![
        "| attempt | waits before it |".to_string(),
        "|---|---|".to_string(),
        "| 1 | nothing |".to_string(),
    ];
    for k in 1..=retry.max_retries {
        rows.push(format!(
            "| {} | {} s ± {pct} % |",
            k + 1,
            policy.base_delay(k).as_secs_f64()
        ));
    }
    rows.push(format!(
        "| then | the peer is `unreachable`; one probe every {} s ± {pct} % until one succeeds |",
        retry.max_delay.as_secs_f64()
    ));
    let expected = rows.join("\n");
    let readme = read("README.md");
    let table = readme
        .split("<!-- retry-table:begin -->\n")
        .nth(1)
        .and_then(|rest| rest.split("\n<!-- retry-table:end -->").next())
        .expect("README has the retry-table markers");
    assert_eq!(table, expected);
    assert_eq!(policy.attempts_per_dial(), 4);
}

/// `src/pool/` is the pure core: no runtime, no IO, no clock.
#[test]
fn the_pool_core_stays_pure() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/pool");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // Code only: comments may mention quinn-proto as the model.
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for forbidden in [
            "tokio",
            "actix",
            "quinn",
            "Instant::now",
            "SystemTime",
            "std::net",
            "std::fs",
            "thread_rng",
            "rand::rng()",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} mentions {forbidden}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 5);
}

/// The README section that starts at `heading` (up to the next heading).
fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let rest = &readme[start + heading.len()..];
    let end = rest.find("\n#").unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn readme_documents_every_config_key() {
    use peerpool::config::{Address, ForwardConfig, PeerAddr, PeerConfig, ServiceConfig};
    use std::net::SocketAddr;
    let readme = read("README.md");
    // One of each entry, every optional key set, so that every key serializes.
    let mut c = Config::default();
    let id: peerpool::PeerId = "a".repeat(64).parse().unwrap();
    c.peers = vec![PeerConfig {
        name: "p".into(),
        id: Some(id),
        ids: vec![id],
        addr: Some(PeerAddr::Name {
            host: "p.test".into(),
            port: 1,
        }),
    }];
    c.forward = vec![ForwardConfig::new(
        "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
        "p",
        "s",
    )];
    let mut svc = ServiceConfig::new("s", "unix:/run/s.sock".parse::<Address>().unwrap());
    svc.allow = Some(vec!["p".into()]);
    c.service = vec![svc];
    c.admin.token_file = "t".into();
    c.trust.ca = "ca.crt".into();
    let value = toml::Value::try_from(&c).unwrap();
    let mut missing = Vec::new();
    for (table, v) in value.as_table().unwrap() {
        match v {
            toml::Value::Array(entries) => {
                for key in entries[0].as_table().unwrap().keys() {
                    let name = format!("`{table}.{key}`");
                    if !readme.contains(&name) {
                        missing.push(name);
                    }
                }
            }
            toml::Value::Table(keys) => {
                let body = section(&readme, &format!("### `[{table}]`"));
                for key in keys.keys() {
                    if !body.contains(&format!("| `{key}` |")) {
                        missing.push(format!("[{table}] {key}"));
                    }
                }
            }
            other => panic!("unexpected top-level {table} = {other:?}"),
        }
    }
    assert!(missing.is_empty(), "README does not document: {missing:?}");
}

#[test]
fn readme_documents_every_metric_status_and_command() {
    let readme = read("README.md");
    let metrics = read("src/metrics/mod.rs");
    let names: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \"peerpool_"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(names.len() >= 25, "found the metric names: {names:?}");
    let table = section(&readme, "## Observability");
    for name in names {
        assert!(
            table.contains(&format!("| `{name}` |")),
            "README's metric table lacks {name}"
        );
    }
    let statuses = section(&readme, "### Stream header and status");
    for s in peerpool::sidecar::header::Status::ALL {
        let code = format!("| `0x{:02x}` |", s as u8);
        assert!(
            statuses.contains(&code),
            "README's status table lacks {code}"
        );
    }
    let commands = section(&readme, "## Command line");
    for cmd in [
        "keygen", "id", "ca init", "ca issue", "check", "run", "demo", "load", "status",
    ] {
        assert!(
            commands.contains(&format!("| `peerpool {cmd}")),
            "README lacks `peerpool {cmd}`"
        );
    }
    let admin = section(&readme, "### Admin API");
    for route in [
        "GET /",
        "GET /status",
        "GET /config",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /peers",
        "POST /peers",
        "DELETE /peers/{name}",
        "GET /gate",
        "DELETE /gate",
        "POST /reload",
    ] {
        assert!(
            admin.contains(&format!("| `{route}")),
            "README's admin table lacks {route}"
        );
    }
}
