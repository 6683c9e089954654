//! The multi-host testbed: a client node and a group of replicas, each in
//! its own network namespace with its own address (198.51.100.0/24), a
//! real DNS server (dnsmasq) resolving the group's name, CA-issued
//! identities shared by name, and real `peerpool run` processes that are
//! restarted, killed, cut off and reloaded under load. Every scenario
//! asserts counts.
//!
//! Needs root and `ip`/`dnsmasq` (CI installs and runs as root).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use peerpool::config::{Config, ForwardConfig, PeerAddr, PeerConfig, ServiceConfig};
use peerpool::identity::{self, ca};
use peerpool::{EndpointState, PeerId, PeerStatus};
use peerpool_testkit::load::{self, Mode, Report};
use peerpool_testkit::netns::{Guard, Host, Testbed};
use peerpool_testkit::prelude::*;
use peerpool_testkit::prom::{self, alert_expr, check_dashboard, query};

const QUIC_PORT: u16 = 4433;
const NAME: &str = "payments.test";
const GROUP: &str = "payments";
const CLIENT: &str = "client";
/// Inside every host: its own loopback.
const ADMIN: &str = "127.0.0.1:9464";
const FORWARD: &str = "127.0.0.1:8000";
const UPSTREAM: &str = "127.0.0.1:7000";
const IDLE: Duration = Duration::from_secs(3);
const REFRESH_MIN: Duration = Duration::from_secs(1);
/// `outlier.base_ejection_time` of the testbed (the default is 10 s).
const EJECTION: Duration = Duration::from_secs(4);

fn sock(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn quic(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((ip, QUIC_PORT))
}

/// What every node of the testbed shares: fast failure detection (3 s
/// idle timeout, 1 s keep-alive), short probes, DNS re-read every second.
fn base(ip: Ipv4Addr, keys: &Path, ca_file: &Path) -> Config {
    let mut c = Config::default();
    c.node.listen = quic(ip);
    c.node.cert = keys.join(identity::CERT_FILE);
    c.node.key = keys.join(identity::KEY_FILE);
    c.node.idle_timeout = IDLE;
    c.node.keep_alive_interval = Duration::from_secs(1);
    c.admin.listen = sock(ADMIN);
    c.admin.drain_timeout = Duration::from_secs(5);
    c.pool.max_connections_per_peer = 2;
    c.pool.connection_timeout = Duration::from_secs(2);
    c.retry.max_delay = Duration::from_secs(2);
    c.discovery.refresh_min = REFRESH_MIN;
    c.discovery.refresh_max = Duration::from_secs(2);
    c.outlier.base_ejection_time = EJECTION;
    c.trust.ca = ca_file.to_path_buf();
    c
}

fn write_config(path: &Path, c: &Config) {
    std::fs::write(path, toml::to_string(c).expect("config toml")).expect("write config");
}

struct Replica {
    host: Host,
    node: NodeProc,
    _echo: Option<Guard>,
    keys: PathBuf,
}

struct Bed {
    client: Host,
    client_node: NodeProc,
    client_config: PathBuf,
    client_keys: PathBuf,
    replicas: Vec<Replica>,
    ca_dir: PathBuf,
    /// Dropped last: it removes the hosts.
    tb: Testbed,
}

impl Bed {
    /// `n` replicas of "payments" (their upstreams up unless listed in
    /// `upstream_down`) and a client forwarding to them by DNS name.
    fn new(n: usize, upstream_down: &[usize], tune: impl FnOnce(&mut Config)) -> Bed {
        init_tracing();
        let mut tb = Testbed::start();
        let ca_dir = tb.dir.path().join("ca");
        ca::ca_init(&ca_dir, false, 30).expect("ca init");
        let client = tb.host("client");
        let client_keys = tb.dir.path().join("client-keys");
        ca::ca_issue(&ca_dir, CLIENT, &client_keys, false, 30).expect("issue client");
        let mut replicas = Vec::new();
        for i in 0..n {
            let keys = tb.dir.path().join(format!("replica-keys-{i}"));
            let r = start_replica(&mut tb, &ca_dir, keys, !upstream_down.contains(&i));
            replicas.push(r);
        }
        let ips: Vec<Ipv4Addr> = replicas.iter().map(|r| r.host.ip).collect();
        tb.set_name(NAME, &ips);
        let mut c = base(client.ip, &client_keys, &ca_dir.join(ca::CA_CERT_FILE));
        c.peers = vec![PeerConfig {
            name: GROUP.into(),
            id: None,
            ids: Vec::new(),
            addr: Some(PeerAddr::Name {
                host: NAME.into(),
                port: QUIC_PORT,
            }),
        }];
        c.forward = vec![ForwardConfig::new(sock(FORWARD), GROUP, "echo")];
        tune(&mut c);
        let client_config = tb.dir.path().join("client.toml");
        write_config(&client_config, &c);
        let client_node = spawn_node(&client, &client_config, &tb.dir.path().join("client.log"));
        let bed = Bed {
            client,
            client_node,
            client_config,
            client_keys,
            replicas,
            ca_dir,
            tb,
        };
        bed.wait_endpoints_connected(n, Duration::from_secs(20));
        bed
    }

    fn client_admin<T: Send>(&self, f: impl FnOnce(&Admin) -> T + Send) -> T {
        self.client.run(|| f(&Admin::new(sock(ADMIN))))
    }

    fn group(&self) -> PeerStatus {
        self.client_admin(|a| a.peer(GROUP))
            .expect("client /peers has the group")
    }

    /// Waits until `n` endpoints of the group hold a usable connection.
    fn wait_endpoints_connected(&self, n: usize, limit: Duration) -> Duration {
        wait_blocking(&format!("{n} endpoints connected"), limit, || {
            self.client_admin(|a| a.peer(GROUP))
                .map(|p| connected_endpoints(&p) >= n)
                .unwrap_or(false)
        })
    }

    fn endpoint(&self, addr: SocketAddr) -> Option<peerpool::EndpointInfo> {
        self.group().endpoints.into_iter().find(|e| e.addr == addr)
    }

    /// Waits until the endpoint is connected and not ejected (a replica that
    /// failed under load is ejected for a while after it returns).
    fn wait_taking_traffic(&self, addr: SocketAddr) {
        wait_blocking(
            &format!("{addr} connected and not ejected"),
            EJECTION * 2 + Duration::from_secs(10),
            || {
                self.endpoint(addr)
                    .is_some_and(|e| e.connections > 0 && e.ejected_for.is_none())
            },
        );
    }

    /// Streams a replica's `echo` service served with `result`.
    fn served(&self, i: usize, result: &str) -> u64 {
        replica_metric(
            &self.replicas[i].host,
            "peerpool_service_streams_total",
            &[("service", "echo"), ("result", result)],
        ) as u64
    }

    fn served_ok(&self) -> Vec<u64> {
        (0..self.replicas.len())
            .map(|i| self.served(i, "ok"))
            .collect()
    }

    fn client_metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.client_admin(|a| a.metrics());
        metric(&text, name, labels).unwrap_or(0.0)
    }

    /// Load through the client's forward, run inside the client host.
    fn load(&self, opts: load::Options) -> JoinHandle<Report> {
        self.client.spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(load::run(opts))
        })
    }
}

fn connected_endpoints(p: &PeerStatus) -> usize {
    p.endpoints
        .iter()
        .filter(|e| {
            p.connections
                .iter()
                .any(|c| c.usable && c.remote_addr == e.addr)
        })
        .count()
}

fn replica_metric(host: &Host, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = host.run(|| Admin::new(sock(ADMIN)).metrics());
    metric(&text, name, labels).unwrap_or(0.0)
}

fn spawn_node(host: &Host, config: &Path, log: &Path) -> NodeProc {
    let node = NodeProc::spawn_via(host.command(bin!()), config, log, "info")
        .unwrap_or_else(|e| panic!("{e}"));
    let what = format!("node in {} healthy", host.ns);
    host.run(|| wait_blocking(&what, Duration::from_secs(20), || node.admin.healthy()));
    node
}

/// A replica of "payments" on a new host: a key issued for the group's
/// name (kept in `keys`, made there on first use), an echo upstream unless
/// `upstream`is false, and its node.
fn start_replica(tb: &mut Testbed, ca_dir: &Path, keys: PathBuf, upstream: bool) -> Replica {
    let host = tb.host("replica");
    start_replica_on(tb, host, ca_dir, keys, upstream, &[])
}

fn start_replica_on(
    tb: &Testbed,
    host: Host,
    ca_dir: &Path,
    keys: PathBuf,
    upstream: bool,
    more_services: &[&str],
) -> Replica {
    if !keys.join(identity::CERT_FILE).exists() {
        ca::ca_issue(ca_dir, GROUP, &keys, false, 30).expect("issue replica");
    }
    let echo = upstream.then(|| {
        let child = host
            .command(bin!())
            .args(["load", "--serve-echo", UPSTREAM])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start echo upstream");
        let guard = Guard::new(child);
        host.run(|| {
            wait_blocking("echo upstream listening", Duration::from_secs(10), || {
                std::net::TcpStream::connect(sock(UPSTREAM)).is_ok()
            })
        });
        guard
    });
    let mut c = base(host.ip, &keys, &ca_dir.join(ca::CA_CERT_FILE));
    c.peers = vec![PeerConfig {
        name: CLIENT.into(),
        id: None,
        ids: Vec::new(),
        addr: None,
    }];
    let mut svc = ServiceConfig::new("echo", sock(UPSTREAM));
    svc.allow = Some(vec![CLIENT.into()]);
    c.service = vec![svc];
    for name in more_services {
        c.service.push(ServiceConfig::new(*name, sock(UPSTREAM)));
    }
    let config = tb.dir.path().join(format!("{}.toml", host.ns));
    write_config(&config, &c);
    let node = spawn_node(
        &host,
        &config,
        &tb.dir.path().join(format!("{}.log", host.ns)),
    );
    Replica {
        host,
        node,
        _echo: echo,
        keys,
    }
}

fn per_request(requests: Option<u64>, concurrency: usize, duration: Duration) -> load::Options {
    load::Options {
        target: sock(FORWARD),
        concurrency,
        duration,
        size: 1024,
        mode: Mode::Echo,
        connection_per_request: true,
        requests,
        request_timeout: Duration::from_secs(15),
    }
}

fn join(h: JoinHandle<Report>) -> Report {
    h.join().expect("load thread")
}

#[test]
fn requests_spread_evenly_over_the_replicas_of_a_dns_name() {
    let bed = Bed::new(3, &[], |_| {});
    let before = bed.served_ok();
    let report = join(bed.load(per_request(Some(3000), 16, Duration::from_secs(60))));
    // A replica counts a stream once the forward acknowledged all of it.
    let mut after = bed.served_ok();
    let counted = |after: &[u64]| after.iter().sum::<u64>() - before.iter().sum::<u64>();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while counted(&after) < 3000 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = bed.served_ok();
    }
    let per: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let group = bed.group();
    let latency_ms: Vec<String> = group
        .endpoints
        .iter()
        .map(|e| format!("{} {:.2} ms", e.addr, e.latency_seconds * 1e3))
        .collect();
    eprintln!(
        "3000 requests: {per:?} per replica, {:?}; balancer latencies {latency_ms:?}",
        report.errors
    );
    assert_eq!(report.requests, 3000, "{:?}", report.errors);
    assert_eq!(report.error_count(), 0, "{:?}", report.errors);
    assert_eq!(per.iter().sum::<u64>(), 3000, "every request served once");
    for (i, n) in per.iter().enumerate() {
        let share = *n as f64 / 3000.0;
        assert!(
            (0.2333..=0.4333).contains(&share),
            "replica {i} served {n} of 3000 ({:.1} %), outside 33 ± 10 %",
            share * 100.0
        );
    }
    assert_eq!(group.endpoints.len(), 3, "{:?}", group.endpoints);
    assert!(
        bed.tb.queries(NAME) >= 1,
        "the client resolved the name through dnsmasq"
    );
}

#[test]
fn a_rolling_restart_to_new_addresses_and_keys_fails_no_request() {
    let mut bed = Bed::new(3, &[], |_| {});
    let load = bed.load(per_request(None, 16, Duration::from_secs(15)));
    let started = Instant::now();
    let mut appeared = Vec::new();
    for i in 0..3 {
        // The orchestrator's order: the pod leaves the DNS answer and gets
        // SIGTERM; a new pod with a new address and a new key comes up.
        let old = bed.replicas.remove(0);
        let rest: Vec<Ipv4Addr> = bed.replicas.iter().map(|r| r.host.ip).collect();
        bed.tb.set_name(NAME, &rest);
        let mut old_node = old.node;
        old_node.signal("-TERM");
        let code = old_node.wait(Duration::from_secs(15));
        assert_eq!(code, Some(0), "replica {i} drained and exited 0");
        let old_host = old.host.clone();
        drop(old._echo);
        bed.tb.remove(&old_host);
        let keys = bed.tb.dir.path().join(format!("replica-keys-new-{i}"));
        let new = start_replica(&mut bed.tb, &bed.ca_dir, keys, true);
        let new_addr = quic(new.host.ip);
        assert_ne!(new.host.ip, old_host.ip);
        bed.replicas.push(new);
        let all: Vec<Ipv4Addr> = bed.replicas.iter().map(|r| r.host.ip).collect();
        bed.tb.set_name(NAME, &all);
        let took = wait_blocking("new endpoint in /peers", Duration::from_secs(10), || {
            bed.endpoint(new_addr).is_some()
        });
        appeared.push(took);
        bed.wait_endpoints_connected(3, Duration::from_secs(15));
    }
    let restarts_took = started.elapsed();
    let report = join(load);
    eprintln!(
        "rolling restart in {restarts_took:?}: {} requests, errors {:?}, new endpoints seen after {appeared:?}, retries {}",
        report.requests,
        report.errors,
        bed.client_metric("peerpool_retries_total", &[("reason", "refused")])
            + bed.client_metric("peerpool_retries_total", &[("reason", "reset")])
    );
    assert!(
        restarts_took < Duration::from_secs(14),
        "the restarts finished under load ({restarts_took:?})"
    );
    assert_eq!(report.error_count(), 0, "{:?}", report.errors);
    assert!(report.requests > 1000, "load ran: {}", report.requests);
    for t in &appeared {
        assert!(
            *t <= REFRESH_MIN + Duration::from_secs(2),
            "a new endpoint took {t:?} to appear (limit refresh_min + 2 s)"
        );
    }
    let ids: Vec<PeerId> = bed
        .replicas
        .iter()
        .map(|r| identity::id_of_cert_file(&r.keys.join(identity::CERT_FILE)).expect("id"))
        .collect();
    let group = bed.group();
    for id in ids {
        assert!(
            group.connections.iter().any(|c| c.peer_id == id),
            "a connection to the new key {id}"
        );
    }
}

#[test]
fn a_killed_replica_fails_only_answered_requests_and_is_used_again_when_back() {
    let mut bed = Bed::new(3, &[], |_| {});
    let victim = quic(bed.replicas[0].host.ip);
    let load = bed.load(per_request(None, 16, Duration::from_secs(12)));
    std::thread::sleep(Duration::from_secs(3));
    bed.replicas[0].node.kill();
    let dead_after = wait_blocking(
        "the killed replica's connections dropped",
        Duration::from_secs(10),
        || bed.endpoint(victim).is_some_and(|e| e.connections == 0),
    );
    let report = join(load);
    eprintln!(
        "SIGKILL under load: {} requests, errors {:?}, connections dropped after {dead_after:?}, retries reset {} refused {} open_failed {}",
        report.requests,
        report.errors,
        bed.client_metric("peerpool_retries_total", &[("reason", "reset")]),
        bed.client_metric("peerpool_retries_total", &[("reason", "refused")]),
        bed.client_metric("peerpool_retries_total", &[("reason", "open_failed")]),
    );
    assert!(
        report.errors.keys().all(|k| *k == "reset"),
        "only resets, never a truncated success: {:?}",
        report.errors
    );
    assert!(
        report.error_count() <= 16,
        "at most the requests in flight on it fail: {:?}",
        report.errors
    );
    assert!(
        dead_after <= IDLE + Duration::from_millis(1500),
        "declared dead within the idle timeout: {dead_after:?}"
    );

    // Declared dead: no request waits on it (each would stall for the idle
    // timeout) and none fails.
    let after = join(bed.load(per_request(Some(500), 16, Duration::from_secs(30))));
    let max_us = after.latency_us.max();
    assert_eq!(after.error_count(), 0, "{:?}", after.errors);
    assert!(
        max_us < 1_000_000,
        "no request stalled on the dead replica (max {max_us} µs)"
    );

    // Back at the same address with the same key: used again.
    let r = bed.replicas.remove(0);
    let (host, keys, echo) = (r.host.clone(), r.keys.clone(), r._echo);
    drop(r.node);
    drop(echo);
    let back = start_replica_on(&bed.tb, host, &bed.ca_dir, keys, true, &[]);
    bed.replicas.insert(0, back);
    bed.wait_taking_traffic(victim);
    let before = bed.served(0, "ok");
    let again = join(bed.load(per_request(Some(600), 8, Duration::from_secs(30))));
    assert_eq!(again.error_count(), 0, "{:?}", again.errors);
    let used = bed.served(0, "ok") - before;
    eprintln!("after its return the replica served {used} of 600");
    assert!(
        used >= 60,
        "the returned replica takes traffic again: {used} of 600"
    );
}

#[test]
fn a_replica_with_its_upstream_down_is_ejected_and_clients_see_no_failure() {
    let bed = Bed::new(3, &[2], |_| {});
    let bad = quic(bed.replicas[2].host.ip);
    let load = bed.load(per_request(Some(900), 8, Duration::from_secs(30)));
    let mut seen_ejected = false;
    while !load.is_finished() {
        if bed
            .endpoint(bad)
            .is_some_and(|e| e.state == EndpointState::Ejected && e.ejected_for.is_some())
        {
            seen_ejected = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = join(load);
    let refused = bed.served(2, "upstream_unreachable");
    let ejections = bed.client_metric("peerpool_ejections_total", &[("peer", GROUP)]);
    let retries = bed.client_metric("peerpool_retries_total", &[("reason", "refused")]);
    eprintln!(
        "upstream down on one replica: {} requests, errors {:?}, {refused} refused there, {ejections} ejections, {retries} retries",
        report.requests, report.errors
    );
    assert_eq!(report.requests, 900);
    assert_eq!(
        report.error_count(),
        0,
        "retried elsewhere: {:?}",
        report.errors
    );
    assert!(ejections >= 1.0, "ejected after consecutive_failures");
    assert!(seen_ejected, "/peers showed the endpoint ejected");
    assert!(
        refused >= 5,
        "it failed consecutive_failures (5) times first: {refused}"
    );
    // 5 failures per ejection, plus what was in flight when it was ejected.
    let bound = 5 * (ejections as u64 + 1) + 8;
    assert!(
        refused <= bound,
        "ejected, it got little traffic: {refused} (bound {bound})"
    );
    assert_eq!(retries as u64, refused, "every refusal was retried");
}

#[test]
fn sighup_applies_a_new_config_under_load_and_an_invalid_one_changes_nothing() {
    let mut bed = Bed::new(2, &[], |c| {
        c.peers.push(PeerConfig {
            name: "spare".into(),
            id: None,
            ids: Vec::new(),
            addr: None,
        });
    });
    let old_id = identity::id_of_cert_file(&bed.client_keys.join(identity::CERT_FILE)).expect("id");
    // Long-lived streams: one per persistent connection, for the whole run.
    let persistent = bed.load(load::Options {
        connection_per_request: false,
        ..per_request(None, 8, Duration::from_secs(14))
    });
    std::thread::sleep(Duration::from_secs(2));

    // The replicas gain a service; the client a forward to it, loses a
    // peer, and gets a new key from the CA.
    for r in &bed.replicas {
        let path = &r.node.config;
        let mut c = Config::parse(&std::fs::read_to_string(path).expect("read")).expect("parse");
        c.service.push(ServiceConfig::new("echo2", sock(UPSTREAM)));
        write_config(path, &c);
        r.node.signal("-HUP");
    }
    for r in &bed.replicas {
        wait_blocking("replica reloaded", Duration::from_secs(10), || {
            replica_metric(
                &r.host,
                "peerpool_config_reloads_total",
                &[("result", "ok")],
            ) >= 1.0
        });
    }
    let new_keys = bed.tb.dir.path().join("client-keys-rotated");
    let new_id = ca::ca_issue(&bed.ca_dir, CLIENT, &new_keys, false, 30)
        .expect("issue")
        .id;
    assert_ne!(new_id, old_id);
    let mut c =
        Config::parse(&std::fs::read_to_string(&bed.client_config).expect("read")).expect("parse");
    c.peers.retain(|p| p.name != "spare");
    c.node.cert = new_keys.join(identity::CERT_FILE);
    c.node.key = new_keys.join(identity::KEY_FILE);
    c.forward
        .push(ForwardConfig::new(sock("127.0.0.1:8001"), GROUP, "echo2"));
    write_config(&bed.client_config, &c);
    bed.client_node.signal("-HUP");
    wait_blocking("client reloaded", Duration::from_secs(10), || {
        bed.client_metric("peerpool_config_reloads_total", &[("result", "ok")]) >= 1.0
    });
    assert!(
        bed.client_admin(|a| a.peer("spare")).is_none(),
        "the removed peer is gone"
    );
    let through_new = join(bed.load(load::Options {
        target: sock("127.0.0.1:8001"),
        ..per_request(Some(200), 4, Duration::from_secs(20))
    }));
    assert_eq!(
        through_new.requests, 200,
        "the new forward and service work: {:?}",
        through_new.errors
    );
    let echo2 = || {
        replica_metric(
            &bed.replicas[0].host,
            "peerpool_service_streams_total",
            &[("service", "echo2"), ("result", "ok")],
        ) + replica_metric(
            &bed.replicas[1].host,
            "peerpool_service_streams_total",
            &[("service", "echo2"), ("result", "ok")],
        )
    };
    // A serving node counts a stream once the forwarding side acknowledged
    // its end, a moment after the client read it.
    let _ = peerpool_testkit::wait::try_wait_blocking(Duration::from_secs(5), || echo2() >= 200.0);
    assert_eq!(echo2(), 200.0, "served by the new service");

    // A new replica: its connections from the client carry the new key;
    // the old replicas' connections keep the old one.
    let keys = bed.tb.dir.path().join("replica-keys-late");
    let late_host = bed.tb.host("replica");
    let late = start_replica_on(&bed.tb, late_host, &bed.ca_dir, keys, true, &["echo2"]);
    let late_host = late.host.clone();
    bed.replicas.push(late);
    let all: Vec<Ipv4Addr> = bed.replicas.iter().map(|r| r.host.ip).collect();
    bed.tb.set_name(NAME, &all);
    bed.wait_endpoints_connected(3, Duration::from_secs(15));
    let seen_by_late = late_host
        .run(|| Admin::new(sock(ADMIN)).peer(CLIENT))
        .expect("late replica knows the client");
    assert!(
        !seen_by_late.connections.is_empty()
            && seen_by_late.connections.iter().all(|c| c.peer_id == new_id),
        "new connections present the new certificate: {:?}",
        seen_by_late
            .connections
            .iter()
            .map(|c| c.peer_id)
            .collect::<Vec<_>>()
    );
    let seen_by_first = bed.replicas[0]
        .host
        .run(|| Admin::new(sock(ADMIN)).peer(CLIENT))
        .expect("first replica knows the client");
    assert!(
        seen_by_first
            .connections
            .iter()
            .any(|c| c.peer_id == old_id),
        "connections made before the rotation go on"
    );

    // An invalid file: nothing changes.
    let peers_before: Vec<String> = bed
        .client_admin(|a| a.peers())
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.name)
        .collect();
    std::fs::write(&bed.client_config, "[pool]\nmax_connections_per_peer = 0\n").expect("write");
    bed.client_node.signal("-HUP");
    wait_blocking("invalid reload counted", Duration::from_secs(10), || {
        bed.client_metric("peerpool_config_reloads_total", &[("result", "error")]) >= 1.0
    });
    let peers_after: Vec<String> = bed
        .client_admin(|a| a.peers())
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(peers_before, peers_after);
    let still = join(bed.load(load::Options {
        target: sock("127.0.0.1:8001"),
        ..per_request(Some(50), 2, Duration::from_secs(10))
    }));
    assert_eq!(still.requests, 50, "forwards unchanged: {:?}", still.errors);
    let log = bed.client_node.log_text();
    assert!(
        log.contains("pool.max_connections_per_peer"),
        "the problem is logged as check prints it"
    );

    let report = join(persistent);
    eprintln!(
        "reload under load: {} requests on 8 persistent streams, errors {:?}",
        report.requests, report.errors
    );
    assert_eq!(
        report.error_count(),
        0,
        "no existing stream broke: {:?}",
        report.errors
    );
    assert!(report.requests > 1000);
}

#[test]
fn a_cut_link_is_noticed_within_the_idle_timeout_and_healed_when_it_returns() {
    let bed = Bed::new(3, &[], |_| {});
    let cut = quic(bed.replicas[0].host.ip);
    let load = bed.load(per_request(None, 16, Duration::from_secs(14)));
    std::thread::sleep(Duration::from_secs(2));
    bed.tb.link(&bed.replicas[0].host, false);
    let noticed = wait_blocking(
        "cut replica's connections dropped",
        Duration::from_secs(10),
        || bed.endpoint(cut).is_some_and(|e| e.connections == 0),
    );
    let served_cut = bed.served_ok();
    std::thread::sleep(Duration::from_secs(3));
    let served_later = bed.served_ok();
    bed.tb.link(&bed.replicas[0].host, true);
    let healed = wait_blocking("cut replica reconnected", Duration::from_secs(20), || {
        bed.endpoint(cut).is_some_and(|e| e.connections > 0)
    });
    let report = join(load);
    eprintln!(
        "link cut: noticed after {noticed:?}, healed {healed:?} after the link returned; {} requests, errors {:?}; served while cut {:?} -> {:?}",
        report.requests, report.errors, served_cut, served_later
    );
    assert!(
        noticed <= IDLE + Duration::from_millis(1500),
        "noticed within the idle timeout: {noticed:?}"
    );
    assert!(
        report.errors.keys().all(|k| *k == "reset") && report.error_count() <= 16,
        "at most the answered requests in flight fail, as resets: {:?}",
        report.errors
    );
    assert_eq!(
        served_later[0], served_cut[0],
        "nothing reached the cut replica"
    );
    assert!(
        served_later[1] + served_later[2] > served_cut[1] + served_cut[2] + 100,
        "traffic went on on the others"
    );
    bed.wait_taking_traffic(cut);
    let before = bed.served(0, "ok");
    let again = join(bed.load(per_request(Some(600), 8, Duration::from_secs(30))));
    assert_eq!(again.error_count(), 0, "{:?}", again.errors);
    let used = bed.served(0, "ok") - before;
    eprintln!("after the link returned the replica served {used} of 600");
    assert!(
        used >= 60,
        "used again after the link returned: {used} of 600"
    );
}

#[test]
fn the_group_panels_and_alerts_work_against_a_real_prometheus() {
    // Two replicas, one failing: ejecting it takes half the endpoints out.
    // A second peer whose name never resolves.
    let bed = Bed::new(2, &[1], |c| {
        c.peers.push(PeerConfig {
            name: "ghost".into(),
            id: None,
            ids: Vec::new(),
            addr: Some(PeerAddr::Name {
                host: "ghost.test".into(),
                port: QUIC_PORT,
            }),
        });
    });
    let listen = sock("127.0.0.1:9090");
    let dir = bed.tb.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let program = bed.client.command(require("prometheus", prom::HINT));
    let _prom = prom::start(program, &dir, listen, &[sock(ADMIN)]);
    let q = |expr: &str| bed.client.run(|| query(listen, expr));
    wait_blocking(
        "prometheus scrapes the client",
        Duration::from_secs(30),
        || q("up{job=\"peerpool\"} == 1").is_ok_and(|r| !r.is_empty()),
    );
    let load = bed.load(per_request(None, 2, Duration::from_secs(25)));

    let ejected = alert_expr("PeerpoolEndpointsEjected");
    wait_blocking(
        "the half-ejected alert expression",
        Duration::from_secs(20),
        || q(&ejected).is_ok_and(|r| !r.is_empty()),
    );
    let dns = alert_expr("PeerpoolDnsResolutionFailing");
    wait_blocking("the DNS alert expression", Duration::from_secs(20), || {
        q(&dns).is_ok_and(|r| r.iter().any(|s| s["metric"]["peer"] == "ghost"))
    });
    let dns_now = q(&dns).unwrap_or_default();
    assert!(
        dns_now.iter().all(|s| s["metric"]["peer"] == "ghost"),
        "the resolving group does not alert: {dns_now:?}"
    );
    let reload = alert_expr("PeerpoolConfigReloadFailed");
    assert!(
        q(&reload).is_ok_and(|r| r.is_empty()),
        "no reload failed yet"
    );
    std::fs::write(&bed.client_config, "[pool]\nmax_connections_per_peer = 0\n").expect("write");
    bed.client_node.signal("-HUP");
    wait_blocking(
        "the reload alert expression",
        Duration::from_secs(20),
        || q(&reload).is_ok_and(|r| !r.is_empty()),
    );

    let (checked, failures) = bed.client.run(|| check_dashboard(listen, &["Groups"]));
    let report = join(load);
    eprintln!(
        "{checked} dashboard queries answered on the testbed; load {} requests, errors {:?}",
        report.requests, report.errors
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(report.error_count(), 0, "{:?}", report.errors);
}
