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
