//! peerpool-testkit: what the black-box tests, the load benches and
//! `peerpool demo` share, written once.
//!
//! - [`net`]: free loopback ports.
//! - [`wait`]: waiting on a condition with a deadline (polling, for state
//!   that lives in another process or behind an API with no event to await).
//! - [`admin`]: a typed client of the admin API (`/peers` as
//!   [`peerpool::PeerStatus`]), raw HTTP calls, reading Prometheus text.
//! - [`procs`]: `peerpool run` child processes with guards that kill them,
//!   and the two-node setup most tests start from.
//! - [`stats`]: `/proc` readings of a process: RSS, threads, fds, CPU.
//! - [`pools`]: pools in the test's own process, for tests of the library.
//! - [`relay`]: a userland UDP relay that drops, delays, reorders or
//!   blackholes (there is no `tc netem` here).
//! - [`load`]: the load generator of `peerpool load`, and echo and sink
//!   upstreams.
//! - [`netns`]: a testbed of real hosts (network namespaces, a bridge, a
//!   DNS server) on one machine.

#![forbid(unsafe_code)]

pub mod admin;
pub mod load;
pub mod net;
pub mod netns;
pub mod pools;
pub mod procs;
pub mod prom;
pub mod relay;
pub mod stats;
pub mod wait;

use std::path::{Path, PathBuf};

/// The `peerpool` binary of the calling package's build (for the tests and
/// benches of `peerpool-cli`): `env!` expands where the macro is used.
#[macro_export]
macro_rules! bin {
    () => {
        $crate::node_binary(env!("CARGO_BIN_EXE_peerpool"))
    };
}

/// The `peerpool` binary tests run: the one cargo built for the test
/// (`built`: dependencies optimized, peerpool's own code not), or
/// `PEERPOOL_BIN` when set (for example to the release build, to measure
/// what users run). `.ci/run` does not set it.
pub fn node_binary(built: &'static str) -> PathBuf {
    std::env::var_os("PEERPOOL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(built))
}

/// Logs of the code under test, at `RUST_LOG` (default `warn`), captured by
/// the test harness.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The repository's root folder (for files such as `config/example.toml`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A file of the repository, by its path from the root.
pub fn repo(rel: &str) -> PathBuf {
    repo_root().join(rel)
}

/// Parses a (multi-document) YAML file into JSON with Python's PyYAML,
/// which the build machines have (`.ci/run` installs it if not).
pub fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{} is not valid YAML: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

/// A program the test needs; fails with what to install when it is missing.
pub fn require(program: &str, hint: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not installed: {hint}"))
}

/// Everything a test usually needs, in one import.
pub mod prelude {
    pub use crate::admin::{http, http_async, metric, Admin};
    pub use crate::net::{free_tcp, free_udp, reset, udp};
    pub use crate::pools::{all_conns, config, echo, echo_once, pair, pair_named, usable, Node};
    pub use crate::procs::{
        echo_upstream, exchange, forwarding_pair, identity_in, setup, setup_with, through,
        wait_ready, NodeProc, Setup,
    };
    pub use crate::wait::{wait_blocking, wait_for};
    pub use crate::{bin, init_tracing, repo, require, yaml_documents};
}
