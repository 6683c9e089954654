//! The `keygen`, `id`, `ca` and `check` commands, run as a user runs them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn peerpool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peerpool"))
        .args(args)
        .output()
        .expect("run peerpool")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a run ended with `code` and no panic or backtrace.
fn assert_exit(out: &Output, code: i32) {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");
}

#[test]
fn keygen_and_id_agree_and_keygen_never_overwrites_silently() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let keys_s = keys.to_str().unwrap();
    let out = peerpool(&["keygen", "--out", keys_s]);
    assert_exit(&out, 0);
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 64);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));

    let cert = keys.join("node.crt");
    let out = peerpool(&["id", "--cert", cert.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout).trim(), id);

    let key = keys.join("node.key");
    let mode = fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key mode {mode:o}");

    let key_before = fs::read(&key).unwrap();
    let cert_before = fs::read(&cert).unwrap();
    let out = peerpool(&["keygen", "--out", keys_s]);
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read(&key).unwrap(), key_before);
    assert_eq!(fs::read(&cert).unwrap(), cert_before);

    let out = peerpool(&["keygen", "--out", keys_s, "--force"]);
    assert_exit(&out, 0);
    assert_ne!(text(&out.stdout).trim(), id);
}

#[test]
fn id_of_a_missing_or_bogus_file_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = peerpool(&["id", "--cert", "/nonexistent/node.crt"]);
    assert_exit(&out, 2);
    let bogus = dir.path().join("bogus.crt");
    fs::write(&bogus, "hello").unwrap();
    let out = peerpool(&["id", "--cert", bogus.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("no PEM certificate"));
}

/// A folder with `keys/` made by keygen and the example config copied in.
fn example_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    assert_exit(&peerpool(&["keygen", "--out", keys.to_str().unwrap()]), 0);
    fs::copy(
        peerpool_testkit::repo("config/example.toml"),
        dir.path().join("example.toml"),
    )
    .unwrap();
    dir
}

#[test]
fn the_example_config_checks_out() {
    let dir = example_dir();
    let cfg = dir.path().join("example.toml");
    let out = peerpool(&["check", "--config", cfg.to_str().unwrap()]);
    assert_exit(&out, 0);
    let id = text(
        &peerpool(&[
            "id",
            "--cert",
            dir.path().join("keys/node.crt").to_str().unwrap(),
        ])
        .stdout,
    );
    let summary = text(&out.stdout);
    assert!(summary.contains(id.trim()), "{summary}");
    assert!(summary.contains("least_loaded"), "{summary}");
    assert!(summary.lines().count() < 25, "one screen: {summary}");
}

/// Writes `body` (with the test's identity) and checks it; returns stderr lines.
fn check_problems(dir: &Path, body: &str) -> Vec<String> {
    let cfg = dir.join("bad.toml");
    fs::write(&cfg, body).unwrap();
    let out = peerpool(&["check", "--config", cfg.to_str().unwrap()]);
    assert_exit(&out, 2);
    text(&out.stderr).lines().map(str::to_string).collect()
}

fn assert_reported(lines: &[String], needle: &str) {
    assert!(
        lines.iter().any(|l| l.contains(needle)),
        "no line contains {needle:?}:\n{}",
        lines.join("\n")
    );
}

#[test]
fn every_listed_error_is_reported_one_line_each() {
    let dir = example_dir();
    let d = dir.path();
    let id_b = "b".repeat(64);
    let id_c = "c".repeat(64);
    let cases: Vec<(String, &str)> = vec![
        (
            "[pool]\nmax_connections_per_peer = 0\n".into(),
            "pool.max_connections_per_peer: must be between 1 and 64, got 0",
        ),
        (
            "[pool]\nmax_connections_per_peer = 65\n".into(),
            "pool.max_connections_per_peer: must be between 1 and 64, got 65",
        ),
        (
            "[retry]\njitter_factor = 1.5\n".into(),
            "retry.jitter_factor: must be between 0.0 and 1.0, got 1.5",
        ),
        (
            "[pool]\nload_balancing_strategy = \"fastest\"\n".into(),
            "pool.load_balancing_strategy: unknown variant `fastest`",
        ),
        ("[pool]\nmax_conns = 3\n".into(), "pool: unknown key `max_conns`"),
        ("[nodes]\n".into(), "nodes: unknown key"),
        (
            format!("[[peers]]\nname = \"b\"\nid = \"{id_b}\"\n[[peers]]\nname = \"b\"\nid = \"{id_c}\"\n"),
            "peers[1].name: duplicate name \"b\" (also peers[0])",
        ),
        (
            format!("[[peers]]\nname = \"b\"\nid = \"{id_b}\"\n[[peers]]\nname = \"c\"\nid = \"{id_b}\"\n"),
            "peers[1].id: duplicate id",
        ),
        (
            format!("[[peers]]\nname = \"b\"\nid = \"{id_b}\"\n[[forward]]\nlisten = \"127.0.0.1:7001\"\npeer = \"x\"\nservice = \"echo\"\n"),
            "forward[0].peer: names no peer: \"x\"",
        ),
        (
            format!("[[peers]]\nname = \"b\"\nid = \"{id_b}\"\n[[forward]]\nlisten = \"127.0.0.1:7001\"\npeer = \"b\"\nservice = \"\"\n"),
            "forward[0].service: must be 1 to 255 bytes, got 0 bytes",
        ),
        (
            format!("[[service]]\nname = \"{}\"\nupstream = \"127.0.0.1:80\"\n", "s".repeat(256)),
            "service[0].name: must be 1 to 255 bytes, got 256 bytes",
        ),
        (
            "[[service]]\nname = \"\"\nupstream = \"127.0.0.1:80\"\n".into(),
            "service[0].name: must be 1 to 255 bytes, got 0 bytes",
        ),
        (
            "[node]\nlisten = \"localhost:4433\"\n".into(),
            "node.listen: \"localhost:4433\" is not an IP:PORT address",
        ),
        (
            format!("[[peers]]\nname = \"b\"\nid = \"{id_b}\"\n[[forward]]\nlisten = \"unix:run/a.sock\"\npeer = \"b\"\nservice = \"e\"\n"),
            "forward[0].listen: unix socket path \"run/a.sock\" must be absolute (start with /)",
        ),
        (
            "[[service]]\nname = \"e\"\nupstream = \"app:80\"\n".into(),
            "service[0].upstream: \"app:80\" is neither IP:PORT nor unix:/absolute/path",
        ),
        (
            format!("[[service]]\nname = \"e\"\nupstream = \"unix:/{}\"\n", "x".repeat(107)),
            "service[0].upstream: unix socket path",
        ),
        (
            format!("[[peers]]\nname = \"b\"\nid = \"{id_b}\"\naddr = \"10.0.0.1\"\n"),
            "peers[0].addr: \"10.0.0.1\" is not IP:PORT or HOST:PORT (no port",
        ),
        (
            "[node]\ncert = \"missing.crt\"\n".into(),
            "missing.crt: No such file or directory",
        ),
        (
            "[node]\nkey = \"missing.key\"\n".into(),
            "missing.key: No such file or directory",
        ),
        (
            "[retry]\ninitial_delay = 5.0\nmax_delay = 1.0\n".into(),
            "retry.max_delay: must be at least retry.initial_delay (5), got 1",
        ),
        (
            "[retry]\nbackoff_multiplier = 0.5\n".into(),
            "retry.backoff_multiplier: must be between 1 and 100 (1 = constant delay), got 0.5",
        ),
        (
            "[pool]\nconnection_timeout = -1.0\n".into(),
            "pool.connection_timeout: must be a number of seconds above 0",
        ),
        (
            "[peers]\nname = \"b\"\n".into(),
            "peers: must be an array of tables, written [[peers]]",
        ),
    ];
    for (body, needle) in &cases {
        // The default node.cert/node.key are keys/ beside the file: valid here.
        let lines = check_problems(d, body);
        assert_reported(&lines, needle);
    }
}

#[test]
fn every_key_of_groups_trust_discovery_and_admin_names_itself_when_bad() {
    let dir = example_dir();
    let d = dir.path();
    let id_b = "b".repeat(64);
    let forward = |extra: &str| {
        format!("[[peers]]\nname = \"b\"\nid = \"{id_b}\"\n[[forward]]\nlisten = \"127.0.0.1:7001\"\npeer = \"b\"\nservice = \"e\"\n{extra}")
    };
    let cases: Vec<(String, &str)> = vec![
        (
            "[[peers]]\nname = \"b\"\nids = [\"zz\"]\n".into(),
            "peers[0].ids: must be 64 lowercase hex",
        ),
        (
            "[[peers]]\nname = \"b\"\naddr = \"bad host:1\"\n".into(),
            "peers[0].addr: \"bad host:1\" is not IP:PORT or HOST:PORT",
        ),
        (
            "[[peers]]\nname = \"b\"\n".into(),
            "peers[0].id: give the peer's id (or ids), or set [trust] ca",
        ),
        (
            "[trust]\nca = \"missing-ca.crt\"\n".into(),
            "trust.ca: cannot read",
        ),
        ("[trust]\nca = \"keys/node.key\"\n".into(), "trust.ca:"),
        (
            "[discovery]\nrefresh_min = -1\n".into(),
            "discovery.refresh_min: must be a number of seconds above 0",
        ),
        (
            "[discovery]\nrefresh_min = 10\nrefresh_max = 5\n".into(),
            "discovery.refresh_max: must be at least discovery.refresh_min (10), got 5",
        ),
        (
            "[discovery]\nrefresh = 5\n".into(),
            "discovery: unknown key `refresh`",
        ),
        (
            "[outlier]\nconsecutive_failures = 0\n".into(),
            "outlier.consecutive_failures: must be between 1 and 1000, got 0",
        ),
        (
            "[outlier]\nmax_ejection_percent = 150\n".into(),
            "outlier.max_ejection_percent: must be between 0 and 100, got 150",
        ),
        (
            "[outlier]\nbase_ejection_time = 0\n".into(),
            "outlier.base_ejection_time: must be a number of seconds above 0",
        ),
        (
            forward("retries = 11\n"),
            "forward[0].retries: must be between 0 and 10, got 11",
        ),
        (
            "[[service]]\nname = \"e\"\nupstream = \"127.0.0.1:80\"\nallow = [\"nobody\"]\n".into(),
            "service[0].allow[0]: names no peer: \"nobody\"",
        ),
        (
            "[[service]]\nname = \"e\"\nupstream = \"127.0.0.1:80\"\nallow = []\n".into(),
            "service[0].allow: is empty",
        ),
        (
            "[admin]\ntoken_file = \"missing-token\"\n".into(),
            "admin.token_file: cannot read",
        ),
        (
            "[admin]\npublic = [\"/peerz\"]\n".into(),
            "admin.public[0]: \"/peerz\" is not a GET path of the admin API",
        ),
        (
            "[admin]\ntoken = \"x\"\ntoken_file = \"keys/node.crt\"\n".into(),
            "admin.token_file: is set together with admin.token",
        ),
    ];
    for (body, needle) in &cases {
        let lines = check_problems(d, body);
        assert_reported(&lines, needle);
    }
    // An empty token file is refused, a good one is read (trailing newline
    // and all).
    fs::write(d.join("token"), "\n").unwrap();
    assert_reported(
        &check_problems(d, "[admin]\ntoken_file = \"token\"\n"),
        "admin.token_file: ",
    );
    fs::write(d.join("token"), "s3cret\n").unwrap();
    let cfg = d.join("good.toml");
    fs::write(&cfg, "[admin]\ntoken_file = \"token\"\n").unwrap();
    let out = peerpool(&["check", "--config", cfg.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert!(
        text(&out.stdout).contains("token on"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn ca_init_and_issue_make_identities_that_id_and_check_accept() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca_s = ca.to_str().unwrap();
    assert_exit(&peerpool(&["ca", "init", "--out", ca_s]), 0);
    let mode = fs::metadata(ca.join("ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the CA key is private");
    let ca_key = fs::read(ca.join("ca.key")).unwrap();
    // Never overwritten without --force: exit 2, nothing touched.
    let again = peerpool(&["ca", "init", "--out", ca_s]);
    assert_exit(&again, 2);
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(fs::read(ca.join("ca.key")).unwrap(), ca_key);

    let out_dir = dir.path().join("payments-1");
    let out_s = out_dir.to_str().unwrap();
    let issued = peerpool(&[
        "ca",
        "issue",
        "--ca",
        ca_s,
        "--name",
        "payments",
        "--out",
        out_s,
        "--valid-days",
        "7",
    ]);
    assert_exit(&issued, 0);
    let id = text(&issued.stdout).trim().to_string();
    let mode = fs::metadata(out_dir.join("node.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let shown = peerpool(&["id", "--cert", out_dir.join("node.crt").to_str().unwrap()]);
    assert_exit(&shown, 0);
    assert_eq!(text(&shown.stdout), format!("{id}\nname payments\n"));
    assert_exit(
        &peerpool(&[
            "ca", "issue", "--ca", ca_s, "--name", "payments", "--out", out_s,
        ]),
        2,
    );
    // A second replica: same name, its own key.
    let second = dir.path().join("payments-2");
    let other = peerpool(&[
        "ca",
        "issue",
        "--ca",
        ca_s,
        "--name",
        "payments",
        "--out",
        second.to_str().unwrap(),
    ]);
    assert_exit(&other, 0);
    assert_ne!(text(&other.stdout).trim(), id);

    // Bad input: exit 2, one line naming it.
    for (args, needle) in [
        (
            vec![
                "ca",
                "issue",
                "--ca",
                "/nonexistent",
                "--name",
                "x",
                "--out",
                out_s,
                "--force",
            ],
            "/nonexistent",
        ),
        (
            vec![
                "ca", "issue", "--ca", ca_s, "--name", "Bad Name", "--out", out_s, "--force",
            ],
            "--name must be 1 to 32 characters",
        ),
        (
            vec![
                "ca",
                "issue",
                "--ca",
                ca_s,
                "--name",
                "x",
                "--out",
                out_s,
                "--force",
                "--valid-days",
                "4294967295",
            ],
            "--valid-days 4294967295",
        ),
    ] {
        let out = peerpool(&args);
        assert_exit(&out, 2);
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }

    // A node with the issued identity and the CA: a peer by name only.
    let cfg = dir.path().join("node.toml");
    fs::write(
        &cfg,
        "[node]\ncert = \"payments-1/node.crt\"\nkey = \"payments-1/node.key\"\n[trust]\nca = \"ca/ca.crt\"\n[[peers]]\nname = \"orders\"\naddr = \"orders.default.svc:4433\"\n",
    )
    .unwrap();
    let out = peerpool(&["check", "--config", cfg.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert!(
        text(&out.stdout).contains("peerpool://orders"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_certificate_that_does_not_match_its_key_is_refused() {
    let dir = example_dir();
    let other = dir.path().join("other");
    assert_exit(&peerpool(&["keygen", "--out", other.to_str().unwrap()]), 0);
    let lines = check_problems(
        dir.path(),
        "[node]\ncert = \"keys/node.crt\"\nkey = \"other/node.key\"\n",
    );
    assert_reported(&lines, "does not belong to");
}

#[test]
fn several_problems_come_out_together() {
    let dir = example_dir();
    let lines = check_problems(
        dir.path(),
        "[pool]\nmax_connections_per_peer = 0\n[retry]\njitter_factor = 2.0\nbackoff_multiplier = 0.1\n",
    );
    assert_reported(&lines, "pool.max_connections_per_peer");
    assert_reported(&lines, "retry.jitter_factor");
    assert_reported(&lines, "retry.backoff_multiplier");
    assert!(lines[0].contains("3 problem(s)"), "{lines:?}");
}

#[test]
fn hostile_files_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    fs::write(&empty, "").unwrap();
    // The defaults point at keys/ beside the file, which do not exist here.
    let out = peerpool(&["check", "--config", empty.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("node.crt"));

    let garbage = dir.path().join("garbage.toml");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(&garbage, bytes).unwrap();
    assert_exit(
        &peerpool(&["check", "--config", garbage.to_str().unwrap()]),
        2,
    );

    let big = dir.path().join("big.toml");
    fs::write(&big, "# x\n".repeat(10 * 1024 * 1024 / 4)).unwrap();
    let out = peerpool(&["check", "--config", big.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("limit"), "{}", text(&out.stderr));

    let ascii = dir.path().join("ascii.toml");
    fs::write(&ascii, "[[[ = = \"\n\u{0}").unwrap();
    assert_exit(
        &peerpool(&["check", "--config", ascii.to_str().unwrap()]),
        2,
    );

    assert_exit(&peerpool(&["check", "--config", "/nonexistent.toml"]), 2);
    assert_exit(
        &peerpool(&["check", "--config", dir.path().to_str().unwrap()]),
        2,
    );
}

#[test]
fn an_admin_api_beyond_loopback_needs_a_token_or_an_explicit_opt_out() {
    let dir = example_dir();
    let d = dir.path();
    let open = "[admin]\nlisten = \"0.0.0.0:9464\"\n";
    let lines = check_problems(d, open);
    assert_reported(
        &lines,
        "admin.listen: 0.0.0.0:9464 is reachable beyond this host",
    );
    assert_reported(&lines, "admin.allow_unauthenticated = true");
    // `run` refuses it the same way, before binding anything.
    let cfg = d.join("bad.toml");
    let out = peerpool(&["run", "--config", cfg.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("admin.listen"),
        "{}",
        text(&out.stderr)
    );
    for ok in [
        format!("{open}token = \"s3cret\"\n"),
        format!("{open}allow_unauthenticated = true\n"),
        "[admin]\nlisten = \"127.0.0.2:9464\"\n".to_string(),
        "[admin]\nlisten = \"[::1]:9464\"\n".to_string(),
    ] {
        let cfg = d.join("ok.toml");
        fs::write(&cfg, &ok).unwrap();
        let out = peerpool(&["check", "--config", cfg.to_str().unwrap()]);
        assert_exit(&out, 0);
    }
    let token_file = d.join("token");
    fs::write(&token_file, "from-a-secret\n").unwrap();
    let cfg = d.join("ok.toml");
    fs::write(&cfg, format!("{open}token_file = \"token\"\n")).unwrap();
    assert_exit(&peerpool(&["check", "--config", cfg.to_str().unwrap()]), 0);
}
