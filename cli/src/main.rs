//! The `peerpool` command line. Errors from the library are printed here, at
//! the edge, with the context of the command that hit them.

#![forbid(unsafe_code)]

mod demo;
mod status;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use peerpool::config::{Config, ConfigError, Loaded};
use peerpool::identity::{self, IdentityError};
use peerpool::sidecar::{Listeners, Node};
use peerpool_testkit::load;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad input: a bad config, a missing file, an existing key.
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Parser)]
#[command(name = "peerpool", version, about = "A QUIC connection-pool sidecar", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node identity: DIR/node.key (mode 0600) and DIR/node.crt; print the peer id.
    Keygen {
        /// Folder for node.key and node.crt (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// Certificate validity in days.
        #[arg(long, default_value_t = identity::DEFAULT_VALID_DAYS)]
        valid_days: u32,
    },
    /// Print the peer id of a PEM certificate and, when it carries one,
    /// its peer name (`peerpool://NAME`).
    Id {
        #[arg(long)]
        cert: PathBuf,
    },
    /// A certificate authority for replicas that share a peer name.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Validate a config file: exit 0 with a summary, or 2 with every problem.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the sidecar: the pool, the forwards, the services, the admin API.
    /// SIGTERM or SIGINT drains and exits 0; a second signal exits at once.
    /// SIGHUP reads the config file again and applies what changed;
    /// SIGUSR1 reopens the access log.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Log format (RUST_LOG sets the level, default info).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Start 3 nodes on loopback, drive traffic through them, restart one
    /// halfway, and show the pools healing. No files or flags needed.
    Demo {
        /// Seconds of traffic; 0 runs until Ctrl-C.
        #[arg(long, default_value_t = 15)]
        duration: u64,
    },
    /// A node's peers, forwards and services as a table (from its admin
    /// API's `GET /status`): exit 0 when every peer is ready, 1 otherwise.
    Status {
        /// The node's admin address: host:port or http://host:port.
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: String,
        /// A file holding the admin token (as `admin.token_file`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Redraw every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Load-test a forward (or any TCP echo service), or serve as the echo
    /// upstream with --serve-echo.
    Load {
        /// Address of the forward or echo service to load.
        #[arg(long, required_unless_present = "serve_echo")]
        target: Option<SocketAddr>,
        /// Serve TCP echo on this address instead (until Ctrl-C).
        #[arg(long, conflicts_with = "target")]
        serve_echo: Option<SocketAddr>,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Bytes per request (echo) or per chunk (bulk).
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, value_enum, default_value_t = LoadMode::Echo)]
        mode: LoadMode,
        /// A new TCP connection per request instead of persistent ones.
        #[arg(long)]
        connection_per_request: bool,
        /// Stop after this many requests in all.
        #[arg(long)]
        requests: Option<u64>,
        /// Print one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA: DIR/ca.key (mode 0600) and DIR/ca.crt (the bundle for
    /// `[trust] ca`).
    Init {
        /// Folder for ca.key and ca.crt (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// CA certificate validity in days.
        #[arg(long, default_value_t = identity::ca::DEFAULT_CA_VALID_DAYS)]
        valid_days: u32,
    },
    /// Issue a node identity for peer NAME: OUT/node.key (mode 0600) and
    /// OUT/node.crt carrying `peerpool://NAME`, signed by the CA in --ca.
    Issue {
        /// The folder `ca init` wrote.
        #[arg(long)]
        ca: PathBuf,
        /// The peer name replicas share (the `name` of their [[peers]] entry).
        #[arg(long)]
        name: String,
        /// Folder for node.key and node.crt (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// Certificate validity in days.
        #[arg(long, default_value_t = identity::DEFAULT_VALID_DAYS)]
        valid_days: u32,
    },
}

/// What a load request looks like.
#[derive(Clone, Copy, ValueEnum)]
enum LoadMode {
    /// Request/response: write `size` bytes, read them back, repeat.
    Echo,
    /// Stream `size`-byte chunks one way while reading the echo the other.
    Bulk,
}

impl From<LoadMode> for load::Mode {
    fn from(m: LoadMode) -> load::Mode {
        match m {
            LoadMode::Echo => load::Mode::Echo,
            LoadMode::Bulk => load::Mode::Bulk,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen {
            out,
            force,
            valid_days,
        } => keygen(out, force, valid_days),
        Command::Id { cert } => match identity::cert_file_info(&cert) {
            Ok(info) => {
                println!("{}", info.id);
                if let Some(name) = info.name {
                    println!("name {name}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_BAD_INPUT, &e.to_string()),
        },
        Command::Ca { command } => ca(command),
        Command::Check { config } => check(config),
        Command::Run { config, log_format } => run(config, log_format),
        Command::Demo { duration } => demo::run(demo::Options { duration }),
        Command::Status {
            admin,
            token_file,
            watch,
        } => status::run(status::Options {
            admin,
            token_file,
            watch,
        }),
        Command::Load {
            target,
            serve_echo,
            concurrency,
            duration,
            size,
            mode,
            connection_per_request,
            requests,
            json,
        } => {
            let Ok(duration) = Duration::try_from_secs_f64(duration) else {
                return fail(
                    EXIT_BAD_INPUT,
                    "--duration must be a non-negative number of seconds",
                );
            };
            match (serve_echo, target) {
                (Some(addr), _) => run_echo_server(addr),
                (None, Some(target)) => run_load(
                    load::Options {
                        target,
                        concurrency,
                        duration,
                        size,
                        mode: mode.into(),
                        connection_per_request,
                        requests,
                        request_timeout: Duration::from_secs(10),
                    },
                    json,
                ),
                (None, None) => fail(EXIT_BAD_INPUT, "give --target or --serve-echo"),
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(path: PathBuf, format: LogFormat) -> ExitCode {
    init_logging(format);
    let loaded = match Config::load(&path) {
        Ok(l) => l,
        Err(e) => {
            for p in e.problems() {
                eprintln!("{p}");
            }
            return fail(
                EXIT_BAD_INPUT,
                &format!("{} is not a usable config", path.display()),
            );
        }
    };
    for w in loaded.warnings() {
        tracing::warn!("{w}");
    }
    let listeners = match Listeners::bind(&loaded.config) {
        Ok(l) => l,
        Err(e) => return fail(1, &e.to_string()),
    };
    // The actors run on this thread (the System's arbiter); everything the
    // library hands to `tokio::spawn` (the QUIC endpoint and connection
    // drivers, handshakes, pipes) runs on the worker threads.
    let workers = loaded.config.node.workers();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("peerpool-worker")
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => return fail(1, &format!("cannot start {workers} worker threads: {e}")),
    };
    tracing::info!(workers, "data plane threads");
    let system = actix_rt::System::with_tokio_rt(move || runtime);
    let result = system.block_on(async move {
        let node = Node::start_from(loaded, listeners, Some(path))?;
        tokio::select! {
            _ = first_signal() => {}
            _ = reload_on_sighup(&node) => {}
            _ = reopen_on_sigusr1(&node) => {}
        }
        // A second signal does not wait for the drain.
        actix_rt::spawn(async {
            first_signal().await;
            eprintln!("peerpool: second signal, exiting without draining");
            std::process::exit(130);
        });
        node.shutdown().await;
        Ok::<(), peerpool::sidecar::NodeError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e.to_string()),
    }
}

/// Runs `act` on every signal of `kind`; never returns. Without the
/// handler, says so and what the operator can do instead (`fallback`).
async fn on_every(
    kind: tokio::signal::unix::SignalKind,
    fallback: &str,
    mut act: impl AsyncFnMut(),
) {
    let Ok(mut signals) = tokio::signal::unix::signal(kind) else {
        tracing::error!("cannot install a signal handler; {fallback}");
        return std::future::pending().await;
    };
    while signals.recv().await.is_some() {
        act().await;
    }
    std::future::pending().await
}

/// Reloads the config file on every SIGHUP (the reload logs what it did
/// or why the file was not used); never returns.
async fn reload_on_sighup(node: &Node) {
    let kind = tokio::signal::unix::SignalKind::hangup();
    on_every(kind, "reload with POST /reload", async || {
        tracing::info!("SIGHUP: reloading the config file");
        let _ = node.reload().await;
    })
    .await
}

/// Reopens the access log on every SIGUSR1 (after logrotate moved the
/// file); never returns.
async fn reopen_on_sigusr1(node: &Node) {
    let kind = tokio::signal::unix::SignalKind::user_defined1();
    on_every(kind, "SIGUSR1 will not reopen the access log", async || {
        tracing::info!("SIGUSR1: reopening the access log");
        node.reopen_access_log();
    })
    .await
}

/// Resolves on SIGTERM or SIGINT.
async fn first_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the node can only be killed; run anyway.
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(1, &format!("cannot start a runtime: {e}")))
}

fn run_echo_server(addr: SocketAddr) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => return fail(1, &format!("cannot bind --serve-echo {addr}: {e}")),
        };
        eprintln!("serving TCP echo on {addr}; Ctrl-C to stop");
        tokio::select! {
            _ = load::serve_echo(listener) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        ExitCode::SUCCESS
    })
}

fn run_load(opts: load::Options, json: bool) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if !json {
        eprintln!(
            "loading {} with {} connections of {} bytes for {:?}",
            opts.target, opts.concurrency, opts.size, opts.duration
        );
    }
    let report = rt.block_on(load::run(opts));
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    if report.requests == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("peerpool: {message}");
    ExitCode::from(code)
}

fn keygen(out: PathBuf, force: bool, valid_days: u32) -> ExitCode {
    match identity::keygen(&out, force, valid_days) {
        Ok(made) => {
            println!("{}", made.id);
            eprintln!(
                "wrote {} (mode 0600) and {}",
                made.key_path.display(),
                made.cert_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => identity_failure(e),
    }
}

fn ca(command: CaCommand) -> ExitCode {
    match command {
        CaCommand::Init {
            out,
            force,
            valid_days,
        } => match identity::ca::ca_init(&out, force, valid_days) {
            Ok(made) => {
                eprintln!(
                    "wrote {} (mode 0600) and {}; give {} as [trust] ca",
                    made.key_path.display(),
                    made.cert_path.display(),
                    made.cert_path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => identity_failure(e),
        },
        CaCommand::Issue {
            ca,
            name,
            out,
            force,
            valid_days,
        } => {
            if let Err(msg) = peerpool::config::check_peer_name(&name) {
                return fail(EXIT_BAD_INPUT, &format!("--name {msg}"));
            }
            match identity::ca::ca_issue(&ca, &name, &out, force, valid_days) {
                Ok(made) => {
                    println!("{}", made.id);
                    eprintln!(
                        "wrote {} (mode 0600) and {} for peerpool://{}",
                        made.key_path.display(),
                        made.cert_path.display(),
                        made.name
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => identity_failure(e),
            }
        }
    }
}

/// Bad input (an existing file, a missing or unreadable CA, a bad count)
/// exits 2; a failure to write exits 1 (`keygen`, `ca init`, `ca issue`).
fn identity_failure(e: IdentityError) -> ExitCode {
    match e {
        IdentityError::Write { .. } => fail(1, &e.to_string()),
        e => fail(EXIT_BAD_INPUT, &e.to_string()),
    }
}

fn check(path: PathBuf) -> ExitCode {
    match Config::load(&path) {
        Ok(loaded) => {
            for w in loaded.warnings() {
                eprintln!("warning: {w}");
            }
            print!("{}", summary(&path, &loaded));
            ExitCode::SUCCESS
        }
        Err(e) => {
            let problems = e.problems();
            if let ConfigError::Invalid { .. } = e {
                eprintln!(
                    "peerpool: {} has {} problem(s):",
                    path.display(),
                    problems.len()
                );
            }
            for p in problems {
                eprintln!("{p}");
            }
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

fn summary(path: &std::path::Path, loaded: &Loaded) -> String {
    use std::fmt::Write;
    let c = &loaded.config;
    let policy = c.retry.policy();
    let delays: Vec<String> = (1..=c.retry.max_retries.min(6))
        .map(|k| format!("{:.3}s", policy.base_delay(k).as_secs_f64()))
        .collect();
    let mut s = String::new();
    let _ = writeln!(s, "{}: ok", path.display());
    let _ = writeln!(s, "node id    {}", loaded.identity.id);
    let _ = writeln!(
        s,
        "listen     {} (udp, alpn {:?})",
        c.node.listen, c.node.alpn
    );
    let _ = writeln!(
        s,
        "admin      {} (token {})",
        c.admin.listen,
        if c.admin.token.is_empty() {
            "off"
        } else {
            "on"
        }
    );
    let _ = writeln!(
        s,
        "pool       {} connections per peer, strategy {}",
        c.pool.max_connections_per_peer, c.pool.load_balancing_strategy
    );
    let _ = writeln!(
        s,
        "retry      {} attempts per dial, retry delays {} (±{}%), then a probe every {}s",
        policy.attempts_per_dial(),
        if delays.is_empty() {
            "none".to_string()
        } else {
            delays.join(" ")
        },
        c.retry.jitter_factor * 100.0,
        c.retry.max_delay.as_secs_f64()
    );
    let _ = writeln!(s, "peers      {}", c.peers.len());
    for p in &c.peers {
        let addr = p
            .addr
            .as_ref()
            .map_or("(accept only)".to_string(), |a| a.to_string());
        let who = match p.pinned_ids().as_slice() {
            [] => format!("peerpool://{} (any CA-issued key)", p.name),
            [one] => one.to_string(),
            [first, rest @ ..] => format!("{first} (+{} more ids)", rest.len()),
        };
        let _ = writeln!(s, "  {:<12} {}  {}", p.name, who, addr);
    }
    let _ = writeln!(s, "forwards   {}", c.forward.len());
    for f in &c.forward {
        let _ = writeln!(s, "  {} -> {}/{}", f.listen, f.peer, f.service);
    }
    let _ = writeln!(s, "services   {}", c.service.len());
    for v in &c.service {
        let _ = writeln!(s, "  {} -> {}", v.name, v.upstream);
    }
    s
}
