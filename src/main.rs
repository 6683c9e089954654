//! The `peerpool` command line. Errors from the library are printed here, at
//! the edge, with the context of the command that hit them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use peerpool::config::{Config, ConfigError, Loaded};
use peerpool::identity::{self, IdentityError};

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
    /// Print the peer id of a PEM certificate.
    Id {
        #[arg(long)]
        cert: PathBuf,
    },
    /// Validate a config file: exit 0 with a summary, or 2 with every problem.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen {
            out,
            force,
            valid_days,
        } => keygen(out, force, valid_days),
        Command::Id { cert } => match identity::id_of_cert_file(&cert) {
            Ok(id) => {
                println!("{id}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_BAD_INPUT, &e.to_string()),
        },
        Command::Check { config } => check(config),
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
        Err(e @ IdentityError::Exists { .. }) => fail(EXIT_BAD_INPUT, &e.to_string()),
        Err(e) => fail(1, &e.to_string()),
    }
}

fn check(path: PathBuf) -> ExitCode {
    match Config::load(&path) {
        Ok(loaded) => {
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
        c.retry.max_delay
    );
    let _ = writeln!(s, "peers      {}", c.peers.len());
    for p in &c.peers {
        let addr = p
            .addr
            .map_or("(accept only)".to_string(), |a| a.to_string());
        let _ = writeln!(s, "  {:<12} {}  {}", p.name, p.id, addr);
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
