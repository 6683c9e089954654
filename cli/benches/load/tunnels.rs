//! Scenario 6: peerpool against the mutual-TLS tunnels it replaces. The
//! same echo upstream is reached directly, through a peerpool pair, through
//! an HAProxy pair and through an stunnel pair (each pair: a client-side
//! process that accepts plain TCP and a server-side one that terminates
//! TLS 1.3 with client certificates, ECDSA P-256, one CA), with the same
//! load client, workload after workload, in one run. CPU is what the two
//! processes of each tunnel used during the workload (`/proc/PID/stat`).
//!
//! HAProxy and stunnel come from Debian (`apt-get install haproxy
//! stunnel4`); `.ci/run` installs them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use peerpool_testkit::load::{self, Mode, Options};
use peerpool_testkit::stats::cpu_secs;

use super::common::*;
use super::sidecar;

/// The tunnels in the order of the table and the chart.
pub const TUNNELS: [&str; 4] = ["direct", "peerpool", "haproxy", "stunnel"];

/// One workload of the comparison.
struct Workload {
    /// Short name, also the chart's panel title.
    name: &'static str,
    concurrency: usize,
    size: usize,
    mode: Mode,
    connection_per_request: bool,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "echo 1 KiB c=1",
        concurrency: 1,
        size: 1024,
        mode: Mode::Echo,
        connection_per_request: false,
    },
    Workload {
        name: "echo 1 KiB c=64",
        concurrency: 64,
        size: 1024,
        mode: Mode::Echo,
        connection_per_request: false,
    },
    Workload {
        name: "new conn per request c=64",
        concurrency: 64,
        size: 1024,
        mode: Mode::Echo,
        connection_per_request: true,
    },
    Workload {
        name: "bulk 8 x 64 KiB chunks",
        concurrency: 8,
        size: 64 * 1024,
        mode: Mode::Bulk,
        connection_per_request: false,
    },
];

/// A tunnel under test: where the client connects, and the processes whose
/// CPU counts.
struct Tunnel {
    name: &'static str,
    front: SocketAddr,
    pids: Vec<u32>,
}

/// Child processes killed (and reaped) when the scenario ends, even by a
/// panic.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The PEM files both tunnel programs use: one CA, a server and a client
/// certificate (P-256), each with `localhost` as its DNS name.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    /// HAProxy wants the certificate and its key in one file.
    server_bundle: PathBuf,
    client_bundle: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write PEM");
        p
    };
    let ca = write("ca.crt", &ca_cert.pem());
    let leaf = |name: &str| {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
        let (c, k) = (cert.pem(), key.serialize_pem());
        (
            (
                write(&format!("{name}.crt"), &c),
                write(&format!("{name}.key"), &k),
            ),
            write(&format!("{name}.pem"), &format!("{c}{k}")),
        )
    };
    let (server, server_bundle) = leaf("server");
    let (client, client_bundle) = leaf("client");
    Pki {
        ca,
        server,
        client,
        server_bundle,
        client_bundle,
    }
}

/// Writes the server side's and the client side's config and starts
/// `program` on each (`args`, then the config file), the server first;
/// returns their pids. Output goes to `NAME-SIDE.log` next to the configs.
fn start_sides(
    dir: &Path,
    program: &Path,
    name: &str,
    configs: [String; 2],
    args: &[&str],
    children: &mut Children,
) -> Vec<u32> {
    let mut pids = Vec::new();
    for (side, text) in ["server", "client"].into_iter().zip(configs) {
        let cfg = dir.join(format!("{name}-{side}.conf"));
        std::fs::write(&cfg, text).expect("write a tunnel config");
        let log =
            std::fs::File::create(dir.join(format!("{name}-{side}.log"))).expect("tunnel log");
        let child = Command::new(program)
            .args(args)
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        pids.push(child.id());
        children.0.push(child);
    }
    pids
}

/// An HAProxy pair: TCP mode, TLS on the hop between the two, client
/// certificates required and verified both ways. Threads: HAProxy's default
/// (one per CPU).
fn haproxy(dir: &Path, pki: &Pki, upstream: SocketAddr, children: &mut Children) -> Tunnel {
    let program = peerpool_testkit::require("haproxy", "apt-get install haproxy");
    let (front, middle) = (free_tcp(), free_tcp());
    let defaults = "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  \
                    timeout server 60s\n";
    let global = "global\n  maxconn 4096\n";
    let client = format!(
        "{global}{defaults}frontend plain\n  bind {front}\n  default_backend tls\n\
         backend tls\n  server s {middle} ssl crt {} ca-file {} verify required verifyhost localhost\n",
        pki.client_bundle.display(),
        pki.ca.display(),
    );
    let server = format!(
        "{global}{defaults}frontend tls\n  bind {middle} ssl crt {} ca-file {} verify required\n  \
         default_backend up\nbackend up\n  server u {upstream}\n",
        pki.server_bundle.display(),
        pki.ca.display(),
    );
    Tunnel {
        name: "haproxy",
        front,
        pids: start_sides(
            dir,
            &program,
            "haproxy",
            [server, client],
            &["-db", "-f"],
            children,
        ),
    }
}

/// An stunnel pair with the same certificates; Nagle off on every socket,
/// as HAProxy and peerpool have it.
fn stunnel(dir: &Path, pki: &Pki, upstream: SocketAddr, children: &mut Children) -> Tunnel {
    let program = peerpool_testkit::require("stunnel4", "apt-get install stunnel4");
    let (front, middle) = (free_tcp(), free_tcp());
    let common = "foreground = yes\npid =\ndebug = 3\nsocket = l:TCP_NODELAY=1\n\
                  socket = r:TCP_NODELAY=1\n";
    let client = format!(
        "{common}[client]\nclient = yes\naccept = {front}\nconnect = {middle}\ncert = {}\n\
         key = {}\nCAfile = {}\nverifyChain = yes\ncheckHost = localhost\n",
        pki.client.0.display(),
        pki.client.1.display(),
        pki.ca.display(),
    );
    let server = format!(
        "{common}[server]\naccept = {middle}\nconnect = {upstream}\ncert = {}\nkey = {}\n\
         CAfile = {}\nverifyChain = yes\n",
        pki.server.0.display(),
        pki.server.1.display(),
        pki.ca.display(),
    );
    Tunnel {
        name: "stunnel",
        front,
        pids: start_sides(dir, &program, "stunnel", [server, client], &[], children),
    }
}

/// Waits until one echo round trip through `t` works: both processes
/// listen and the TLS hop between them verifies.
fn wait_working(client: &tokio::runtime::Runtime, t: &Tunnel, dir: &Path) {
    let probe = Options {
        target: t.front,
        concurrency: 1,
        duration: Duration::from_secs(5),
        size: 16,
        mode: Mode::Echo,
        connection_per_request: false,
        requests: Some(1),
        request_timeout: Duration::from_secs(2),
    };
    let ok = (0..100).any(|_| {
        let r = client.block_on(load::run(probe.clone()));
        let ok = r.requests == 1 && r.error_count() == 0;
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    if !ok {
        let logs: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        panic!(
            "{} never echoed one request in 10 s; logs:\n{}",
            t.name,
            logs.join("\n")
        );
    }
}

fn measure(
    client: &tokio::runtime::Runtime,
    budget: Budget,
    t: &Tunnel,
    w: &Workload,
    seconds: f64,
) -> Record {
    let opts = Options {
        target: t.front,
        concurrency: w.concurrency,
        duration: budget.secs(seconds),
        size: w.size,
        mode: w.mode,
        connection_per_request: w.connection_per_request,
        requests: None,
        request_timeout: Duration::from_secs(10),
    };
    let cpu = || t.pids.iter().map(|&p| cpu_secs(p)).sum::<f64>();
    let before = cpu();
    let r = client.block_on(load::run(opts));
    let used = cpu() - before;
    let mut rec = sidecar::to_record("tunnels", format!("{} {}", t.name, w.name), &r);
    let megabytes = r.bytes as f64 / 1e6;
    rec.extra = serde_json::json!({
        "tunnel": t.name,
        "workload": w.name,
        "cpu_secs": used,
        "cpu_us_per_request": (!t.pids.is_empty() && r.requests > 0)
            .then(|| used * 1e6 / r.requests as f64),
        "cpu_ms_per_mb": (!t.pids.is_empty() && megabytes > 0.0).then(|| used * 1e3 / megabytes),
    });
    rec
}

pub fn run(budget: Budget) -> Vec<Record> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_up_rt, upstream) = sidecar::upstream_runtime();
    let client = runtime(2);
    let pki = pki(dir.path());
    let mut children = Children(Vec::new());
    let n = peerpool::config::Config::default()
        .pool
        .max_connections_per_peer;
    let pair = sidecar::pair(upstream, "echo", n);
    let tunnels = [
        Tunnel {
            name: "direct",
            front: upstream,
            pids: Vec::new(),
        },
        Tunnel {
            name: "peerpool",
            front: pair.forward,
            pids: vec![pair.a.pid(), pair.b.pid()],
        },
        haproxy(dir.path(), &pki, upstream, &mut children),
        stunnel(dir.path(), &pki, upstream, &mut children),
    ];
    for t in &tunnels {
        wait_working(&client, t, dir.path());
    }
    let seconds = 5.0;
    let mut out = Vec::new();
    for w in &WORKLOADS {
        let rows: Vec<Record> = tunnels
            .iter()
            .map(|t| measure(&client, budget, t, w, seconds))
            .collect();
        let haproxy = rows
            .iter()
            .find(|r| r.extra["tunnel"] == "haproxy")
            .cloned()
            .expect("an haproxy row");
        for r in rows {
            out.push(if r.extra["tunnel"] == "peerpool" {
                with_cpu_ratio(r.against(&haproxy), &haproxy)
            } else {
                r
            });
        }
    }
    eprint!("{}", summary(&out));
    out
}

/// The comparison as the issue and BENCHMARKS.md show it: throughput,
/// latency and CPU of the tunnel processes, with peerpool / HAProxy.
fn summary(records: &[Record]) -> String {
    let mut s = format!(
        "{:<28} {:<9} {:>10} {:>9} {:>9} {:>11} {:>9} {:>8} {:>8}\n",
        "workload",
        "tunnel",
        "req/s",
        "MB/s",
        "p50 us",
        "CPU us/req",
        "CPU ms/MB",
        "x tput",
        "x CPU"
    );
    let cell = |v: &serde_json::Value, digits: usize| {
        v.as_f64()
            .map_or("-".to_string(), |x| format!("{x:.digits$}"))
    };
    for r in records {
        let e = &r.extra;
        let bulk = e["workload"]
            .as_str()
            .is_some_and(|w| w.starts_with("bulk"));
        let (tput, cpu) = if bulk {
            (r.ratio_mb, "ratio_cpu_ms_per_mb")
        } else {
            (r.ratio_ops, "ratio_cpu_us_per_request")
        };
        s.push_str(&format!(
            "{:<28} {:<9} {:>10.0} {:>9.1} {:>9.0} {:>11} {:>9} {:>8} {:>8}\n",
            e["workload"].as_str().unwrap_or(""),
            e["tunnel"].as_str().unwrap_or(""),
            r.ops_per_sec,
            r.mb_per_sec,
            r.p50_us,
            cell(&e["cpu_us_per_request"], 1),
            cell(&e["cpu_ms_per_mb"], 2),
            tput.map_or("-".to_string(), |x| format!("{x:.2}")),
            cell(&e[cpu], 2),
        ));
    }
    s
}

/// peerpool's CPU per request and per MB divided by HAProxy's.
fn with_cpu_ratio(mut r: Record, haproxy: &Record) -> Record {
    for key in ["cpu_us_per_request", "cpu_ms_per_mb"] {
        let ratio = match (r.extra[key].as_f64(), haproxy.extra[key].as_f64()) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        r.extra[format!("ratio_{key}")] = serde_json::json!(ratio);
    }
    r
}
