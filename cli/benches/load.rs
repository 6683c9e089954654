//! End-to-end load scenarios: every figure is a ratio against a baseline
//! measured in the same run (see BENCHMARKS.md).
//!
//! `cargo bench --bench load [-- SCENARIO...]` runs the named scenarios (all
//! by default): stream_open, sidecar, bulk, scale, storm, tunnels.
//! `PEERPOOL_BENCH_QUICK=1` shrinks each to about a second (CI).
//! Results: a table on stdout and `target/peerpool-bench.json`.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "load/bulk.rs"]
mod bulk;
#[path = "load/chart.rs"]
mod chart;
#[path = "load/common.rs"]
mod common;
#[path = "load/scale.rs"]
mod scale;
#[path = "load/sidecar.rs"]
mod sidecar;
#[path = "load/storm.rs"]
mod storm;
#[path = "load/stream_open.rs"]
mod stream_open;
#[path = "load/tunnels.rs"]
mod tunnels;

use common::{Budget, Record};

const SCENARIOS: [&str; 6] = [
    "stream_open",
    "sidecar",
    "bulk",
    "scale",
    "storm",
    "tunnels",
];
/// Run only when named: the peerpool side of benches/compare/run.sh.
const ON_REQUEST: [&str; 1] = ["compare"];

fn fmt(v: f64) -> String {
    if v == 0.0 {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{r:.2}"))
}

fn table(records: &[Record]) -> String {
    let mut s = format!(
        "{:<12} {:<34} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>9}\n",
        "scenario",
        "name",
        "ops/s",
        "MB/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "x ops",
        "x p50",
        "x p99",
        "x MB/s",
        "RSS KiB"
    );
    for r in records {
        s.push_str(&format!(
            "{:<12} {:<34} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>9}\n",
            r.scenario,
            r.name,
            fmt(r.ops_per_sec),
            fmt(r.mb_per_sec),
            fmt(r.p50_us),
            fmt(r.p99_us),
            fmt(r.p999_us),
            ratio(r.ratio_ops),
            ratio(r.ratio_p50),
            ratio(r.ratio_p99),
            ratio(r.ratio_mb),
            r.peak_rss_kb.map_or("-".into(), |k| k.to_string()),
        ));
    }
    s
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({ "cores": cores, "cpu": model, "mimalloc": cfg!(feature = "mimalloc") })
}

fn main() {
    let quick = std::env::var("PEERPOOL_BENCH_QUICK").is_ok_and(|v| v == "1");
    if let Ok(filter) = std::env::var("PEERPOOL_BENCH_TRACE") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    // In-process pools pay for their metrics as a node does.
    let _metrics =
        (std::env::var("PEERPOOL_BENCH_NO_METRICS").is_err()).then(peerpool::metrics::install);
    let budget = Budget { quick };
    // cargo passes --bench; anything else that is not a flag names scenarios.
    let asked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for a in &asked {
        if !SCENARIOS.contains(&a.as_str()) && !ON_REQUEST.contains(&a.as_str()) {
            eprintln!(
                "unknown scenario {a:?}; known: {}, {}",
                SCENARIOS.join(", "),
                ON_REQUEST.join(", ")
            );
            std::process::exit(2);
        }
    }
    let wanted = |s: &str| asked.is_empty() || asked.iter().any(|a| a == s);
    let started = std::time::Instant::now();
    let mut records = Vec::new();
    for name in SCENARIOS {
        if !wanted(name) {
            continue;
        }
        run(name, budget, &mut records);
    }
    for name in ON_REQUEST {
        if asked.iter().any(|a| a == name) {
            run(name, budget, &mut records);
        }
    }
    finish(quick, started, &records);
}

fn run(name: &str, budget: Budget, records: &mut Vec<Record>) {
    {
        let t = std::time::Instant::now();
        eprintln!("== {name}{}", if budget.quick { " (quick)" } else { "" });
        let got = match name {
            "stream_open" => stream_open::run(budget),
            "sidecar" => sidecar::run(budget),
            "bulk" => bulk::run(budget),
            "scale" => scale::run(budget),
            "storm" => storm::run(budget),
            "tunnels" => tunnels::run(budget),
            "compare" => {
                let secs = std::env::var("PEERPOOL_COMPARE_SECONDS")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(10.0);
                stream_open::compare("compare", budget, 3, 1024, &[16], secs)
            }
            _ => unreachable!("checked above"),
        };
        eprint!("{}", table(&got));
        eprintln!("   ({name} took {:.0}s)", t.elapsed().as_secs_f64());
        records.extend(got);
    }
}

fn finish(quick: bool, started: std::time::Instant, records: &[Record]) {
    println!("\n{}", table(records));
    let out = serde_json::json!({
        "quick": quick,
        "machine": machine(),
        "seconds": started.elapsed().as_secs_f64(),
        "records": records,
    });
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| peerpool_testkit::repo("target"));
    let path = target.join("peerpool-bench.json");
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(&out).unwrap_or_default(),
    ) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
    if records.iter().any(|r| r.scenario == "tunnels") {
        let svg = target.join("tunnels.svg");
        match chart::draw(&out, &svg) {
            Ok(()) => println!("wrote {}", svg.display()),
            Err(e) => eprintln!("cannot draw {}: {e}", svg.display()),
        }
    }
}
