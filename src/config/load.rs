//! Reading a config file: size and encoding limits, TOML parsing that
//! reports every table that does not fit the schema, the rules of `check`,
//! and the node identity the file points at, all as one list of problems.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::schema::{Config, MAX_CONFIG_BYTES};
use crate::identity::ca::Trust;
use crate::identity::Identity;

/// One thing wrong with a config: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, e.g. `pool.max_connections_per_peer` or `peers[1].id`.
    pub key: String,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is {size} bytes; the limit is {MAX_CONFIG_BYTES} bytes (is this the right file?)")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("config file {path} is not UTF-8 text (invalid byte at offset {offset}); is this the right file?")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("config file {path} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// Every problem, one per line, for the CLI.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

/// A config that passed validation, with paths resolved, the identity and
/// the trusted CAs loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub identity: Identity,
    /// `[trust] ca`, when set.
    pub trust: Option<Trust>,
}

impl Loaded {
    /// What is allowed but unwise: a private key (`node.key`) that the
    /// group or others may read. `run` logs these, `check` prints them.
    pub fn warnings(&self) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let key = &self.config.node.key;
        match std::fs::metadata(key) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => vec![format!(
                "node.key: {} is mode {:o}: others than its owner may read the private key; chmod 600 it",
                key.display(),
                m.permissions().mode() & 0o777
            )],
            _ => Vec::new(),
        }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path` and loads the identity
    /// it names; relative cert and key paths resolve against its folder.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let too_large = |size| ConfigError::TooLarge {
            path: path.to_owned(),
            size,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.len() > MAX_CONFIG_BYTES as u64 {
            return Err(too_large(meta.len()));
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(too_large(bytes.len() as u64));
        }
        let text = String::from_utf8(bytes).map_err(|e| ConfigError::NotUtf8 {
            path: path.to_owned(),
            offset: e.utf8_error().valid_up_to(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates TOML text whose relative paths resolve against
    /// `base`, and loads the identity it names.
    pub fn from_toml(text: &str, base: &Path) -> Result<Loaded, Vec<Problem>> {
        let mut config = Config::parse(text)?;
        config.node.cert = base.join(&config.node.cert);
        config.node.key = base.join(&config.node.key);
        let mut files = Vec::new();
        let trust = if config.trust.ca.as_os_str().is_empty() {
            None
        } else {
            config.trust.ca = base.join(&config.trust.ca);
            Trust::load(&config.trust.ca)
                .map_err(|e| files.push(Problem::new("trust.ca", e.to_string())))
                .ok()
        };
        let identity = Identity::load_trusting(&config.node.cert, &config.node.key, trust.as_ref())
            .map_err(|e| files.push(Problem::new("node.cert/node.key", e.to_string())))
            .ok();
        let own_id = identity.as_ref().map(|i| i.id);
        let mut problems = config.validate(own_id).err().unwrap_or_default();
        if !config.admin.token_file.as_os_str().is_empty() {
            config.admin.token_file = base.join(&config.admin.token_file);
            match read_token(&config.admin.token_file) {
                Ok(token) => config.admin.token = token,
                Err(msg) => files.push(Problem::new("admin.token_file", msg)),
            }
        }
        problems.extend(files);
        match identity {
            Some(identity) if problems.is_empty() => Ok(Loaded {
                config,
                identity,
                trust,
            }),
            _ => Err(problems),
        }
    }

    /// Parses TOML into a `Config` without semantic checks, reporting every
    /// section that does not fit the schema (serde stops at the first error
    /// inside a section, so each section contributes at most one problem).
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| vec![Problem::new("toml", syntax_message(text, &e))])?;
        let mut config = Config::default();
        let mut problems = Vec::new();
        for (key, value) in table {
            match key.as_str() {
                "node" => section(&mut problems, "node", value, &mut config.node),
                "pool" => section(&mut problems, "pool", value, &mut config.pool),
                "retry" => section(&mut problems, "retry", value, &mut config.retry),
                "admin" => section(&mut problems, "admin", value, &mut config.admin),
                "discovery" => section(&mut problems, "discovery", value, &mut config.discovery),
                "trust" => section(&mut problems, "trust", value, &mut config.trust),
                "outlier" => section(&mut problems, "outlier", value, &mut config.outlier),
                "handshake" => section(&mut problems, "handshake", value, &mut config.handshake),
                "access_log" => section(&mut problems, "access_log", value, &mut config.access_log),
                "peers" => array(&mut problems, "peers", value, &mut config.peers),
                "forward" => array(&mut problems, "forward", value, &mut config.forward),
                "service" => array(&mut problems, "service", value, &mut config.service),
                other => problems.push(Problem::new(
                    other,
                    "unknown key; the top level allows [node], [pool], [retry], [admin], \
                     [discovery], [trust], [outlier], [handshake], [access_log], [[peers]], [[forward]] \
                     and [[service]]",
                )),
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }
}

fn section<T: DeserializeOwned>(
    problems: &mut Vec<Problem>,
    name: &str,
    value: toml::Value,
    out: &mut T,
) {
    match T::deserialize(value) {
        Ok(v) => *out = v,
        Err(e) => problems.push(de_problem(name, &e)),
    }
}

fn array<T: DeserializeOwned>(
    problems: &mut Vec<Problem>,
    name: &str,
    value: toml::Value,
    out: &mut Vec<T>,
) {
    let toml::Value::Array(items) = value else {
        problems.push(Problem::new(
            name,
            format!("must be an array of tables, written [[{name}]]"),
        ));
        return;
    };
    for (i, item) in items.into_iter().enumerate() {
        match T::deserialize(item) {
            Ok(v) => out.push(v),
            Err(e) => problems.push(de_problem(&format!("{name}[{i}]"), &e)),
        }
    }
}

/// A serde error inside a section as `section.key: message`. toml keeps the
/// key path of the error but only shows it in `Display` (as a trailing
/// "in `a.b`" line), so it is read from there.
fn de_problem(section: &str, e: &toml::de::Error) -> Problem {
    let text = e.to_string();
    let mut message = e.message().trim().to_string();
    let mut key = section.to_string();
    if let Some(path) = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("in `"))
        .and_then(|l| l.strip_suffix('`'))
    {
        key = format!("{section}.{path}");
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        message = format!("unknown key {rest}");
    }
    Problem::new(key, message)
}

fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg.to_string(),
    }
}

/// The admin token in `path`: its text without surrounding whitespace
/// (files usually end in a newline), at most 4 KiB, non-empty.
fn read_token(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > 4096 {
        return Err(format!(
            "{} is {} bytes; a token is at most 4096",
            path.display(),
            bytes.len()
        ));
    }
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty; put the token in it", path.display()));
    }
    if token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "{} holds spaces or control characters inside the token (it travels in an HTTP header)",
            path.display()
        ));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_oneof, proptest, Just};
    use proptest::strategy::Strategy as _;

    fn problems(text: &str) -> Vec<String> {
        // The identity files do not exist here: loading them is reported too.
        match Config::from_toml(text, Path::new("/nonexistent")) {
            Ok(_) => Vec::new(),
            Err(p) => p,
        }
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    fn has(problems: &[String], needle: &str) -> bool {
        problems.iter().any(|p| p.contains(needle))
    }

    fn assert_has_all(problems: &[String], needles: &[&str]) {
        for needle in needles {
            assert!(has(problems, needle), "missing {needle:?} in {problems:#?}");
        }
    }

    #[test]
    fn range_errors_name_the_key_the_value_and_the_range() {
        let p = problems("[pool]\nmax_connections_per_peer = 0\n");
        assert!(
            has(
                &p,
                "pool.max_connections_per_peer: must be between 1 and 64, got 0"
            ),
            "{p:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_not_only_the_first() {
        let p = problems(
            r#"
[pool]
max_connections_per_peer = 65
[retry]
initial_delay = 2.0
max_delay = 1.0
backoff_multiplier = 0.5
jitter_factor = 1.5
"#,
        );
        assert_has_all(
            &p,
            &[
                "pool.max_connections_per_peer",
                "retry.max_delay: must be at least retry.initial_delay (2), got 1",
                "retry.backoff_multiplier",
                "retry.jitter_factor: must be between 0.0 and 1.0, got 1.5",
                "node.cert/node.key",
            ],
        );
    }

    #[test]
    fn unknown_keys_and_strategies_are_named() {
        let p = problems("[pool]\nmax_conns = 3\n[retry]\nmax_retry = 1\n[extra]\n");
        assert!(has(&p, "pool: unknown key `max_conns`"), "{p:?}");
        assert!(has(&p, "retry: unknown key `max_retry`"), "{p:?}");
        assert!(has(&p, "extra: unknown key"), "{p:?}");
        let p = problems("[pool]\nload_balancing_strategy = \"fastest\"\n");
        assert!(
            has(
                &p,
                "pool.load_balancing_strategy: unknown variant `fastest`"
            ),
            "{p:?}"
        );
    }

    #[test]
    fn peer_forward_and_service_errors() {
        let id = "ab".repeat(32);
        let p = problems(&format!(
            r#"
[[peers]]
name = "b"
id = "{id}"
addr = "nowhere"
[[peers]]
name = "b"
id = "{id}"
[[peers]]
name = "Bad Name"
id = "xyz"
[[forward]]
listen = "127.0.0.1:7001"
peer = "c"
service = ""
[[service]]
name = "{long}"
upstream = "127.0.0.1:8080"
"#,
            long = "s".repeat(256)
        ));
        assert_has_all(
            &p,
            &[
                "peers[0].addr: \"nowhere\" is not IP:PORT or HOST:PORT (no port",
                "peers[2].id: must be 64 lowercase hex characters",
            ],
        );
        // Sections that failed to parse are not validated further; fix them
        // and the semantic problems appear.
        let p = problems(&format!(
            r#"
[[peers]]
name = "b"
id = "{id}"
[[peers]]
name = "b"
id = "{id}"
[[peers]]
name = "Bad Name"
id = "{other}"
[[forward]]
listen = "127.0.0.1:7001"
peer = "c"
service = ""
[[service]]
name = "{long}"
upstream = "127.0.0.1:8080"
"#,
            other = "cd".repeat(32),
            long = "s".repeat(256)
        ));
        assert_has_all(
            &p,
            &[
                "peers[1].name: duplicate name \"b\" (also peers[0])",
                "peers[1].id: duplicate id",
                "peers[2].name: must be 1 to 32 characters",
                "forward[0].peer: names no peer: \"c\"",
                "forward[0].service: must be 1 to 255 bytes, got 0 bytes",
                "service[0].name: must be 1 to 255 bytes, got 256 bytes",
            ],
        );
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let p = problems("[node]\nlisten = \n");
        assert!(has(&p, "toml: line 2"), "{p:?}");
    }

    #[test]
    fn a_missing_identity_names_the_files() {
        let p = problems("[node]\ncert = \"/nonexistent/x.crt\"\n");
        assert!(has(&p, "/nonexistent/x.crt"), "{p:?}");
    }

    /// TOML values of every type, with the edge cases a config can hold.
    fn value() -> impl proptest::strategy::Strategy<Value = String> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            prop_oneof![
                Just("nan".to_string()),
                Just("inf".to_string()),
                Just("-inf".to_string()),
                Just("-0.0".to_string()),
                Just("1e308".to_string()),
                Just("5e-324".to_string()),
                (-1e6f64..1e6).prop_map(|v| format!("{v:?}")),
            ],
            any::<bool>().prop_map(|v| v.to_string()),
            "[ -~]{0,40}".prop_map(|v| format!("{v:?}")),
            Just("\"127.0.0.1:0\"".to_string()),
            Just("\"[::1]:65535\"".to_string()),
            Just(format!("\"{}\"", "a".repeat(64))),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(", "))),
                proptest::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(|kv| {
                    let body: Vec<String> =
                        kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    format!("{{ {} }}", body.join(", "))
                }),
            ]
        })
    }

    /// A key the schema knows (any section) or one it does not.
    fn key() -> impl proptest::strategy::Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(vec![
                "listen",
                "cert",
                "key",
                "alpn",
                "keep_alive_interval",
                "idle_timeout",
                "accept_unknown_peers",
                "max_concurrent_streams",
                "header_timeout",
                "udp_send_buffer",
                "udp_recv_buffer",
                "max_connections_per_peer",
                "connection_timeout",
                "load_balancing_strategy",
                "stream_open_timeout",
                "max_retries",
                "initial_delay",
                "max_delay",
                "backoff_multiplier",
                "jitter_factor",
                "reset_after",
                "token",
                "drain_timeout",
                "name",
                "id",
                "addr",
                "peer",
                "service",
                "upstream",
            ])
            .prop_map(str::to_string),
            "[a-z_]{1,12}",
        ]
    }

    fn document() -> impl proptest::strategy::Strategy<Value = String> {
        let header = prop_oneof![proptest::sample::select(vec![
            "[node]",
            "[pool]",
            "[retry]",
            "[admin]",
            "[[peers]]",
            "[[forward]]",
            "[[service]]",
            "[peers]",
            "[[node]]",
            "[other]",
        ])
        .prop_map(str::to_string),];
        let section =
            (header, proptest::collection::vec((key(), value()), 0..6)).prop_map(|(h, kv)| {
                let lines: Vec<String> =
                    kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{h}\n{}\n", lines.join("\n"))
            });
        proptest::collection::vec(section, 0..6).prop_map(|s| s.concat())
    }

    proptest! {
        /// Arbitrary text never panics the parser or the validator.
        #[test]
        fn any_text_gives_a_config_or_problems(text in ".{0,400}") {
            if let Ok(c) = Config::parse(&text) {
                let _ = c.validate(None);
            }
        }

        /// Generated TOML (known and unknown keys, every value type, edge
        /// numbers): problems that name a key, never a panic.
        #[test]
        fn generated_toml_gives_a_config_or_named_problems(text in document()) {
            match Config::parse(&text) {
                Ok(c) => {
                    if let Err(problems) = c.validate(None) {
                        prop_assert!(problems.iter().all(|p| !p.key.is_empty() && !p.message.is_empty()));
                    }
                }
                Err(problems) => {
                    prop_assert!(!problems.is_empty());
                    prop_assert!(problems.iter().all(|p| !p.key.is_empty() && !p.message.is_empty()));
                }
            }
        }
    }
}
