//! A testbed of real hosts on one machine: each host its own network
//! namespace with one address in 198.51.100.0/24 (a documentation range)
//! on a veth pair into a Linux bridge, and a real DNS server (Debian's
//! `dnsmasq`) in a namespace of its own that every host uses through
//! `/etc/netns/NAME/resolv.conf`.
//!
//! Everything is named after the test process (`pt<pid>`), so parallel
//! runs never collide, and removed when the [`Testbed`] is dropped (also
//! when the test fails); what a killed run left behind is removed by the
//! next one. Needs root (CI runs as root).
//!
//! Code that must run inside a host (an admin call, a load generator) runs
//! on a thread moved into that host's namespace ([`Host::run`],
//! [`Host::spawn`]): sockets belong to the namespace of the thread that
//! creates them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait::wait_blocking;

/// The bridge's subnet; hosts get .10 and up, the DNS server .2.
const SUBNET: [u8; 3] = [198, 51, 100];
const DNS_HOST: u8 = 2;
const NETNS_DIR: &str = "/var/run/netns";

/// A host of the testbed.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name (for `ip netns exec`).
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The veth end inside the namespace.
    dev: String,
}

impl Host {
    /// Runs `f` on a thread inside this host's network namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&self.ns);
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Starts `f` on a thread inside this host's network namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns = self.ns.clone();
        std::thread::spawn(move || {
            enter(&ns);
            f()
        })
    }

    /// A command that runs `program` inside this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) {
    let path = Path::new(NETNS_DIR).join(ns);
    let file =
        std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&file),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
}

/// A child process, killed when dropped.
pub struct Guard(Option<Child>);

impl Guard {
    pub fn new(child: Child) -> Guard {
        Guard(Some(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The bridge, the DNS server and the hosts of one test.
pub struct Testbed {
    tag: String,
    bridge: String,
    dns: Host,
    dnsmasq: Option<Guard>,
    hosts_file: PathBuf,
    dns_log: PathBuf,
    records: BTreeMap<String, Vec<Ipv4Addr>>,
    hosts: Vec<Host>,
    next: u8,
    pub dir: tempfile::TempDir,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

fn addr(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], last)
}

/// Whether a tag's process is gone (what it made may be removed).
fn dead(tag: &str) -> bool {
    let Some(hex) = tag.strip_prefix("pt") else {
        return false;
    };
    match u32::from_str_radix(hex, 16) {
        Ok(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
        Err(_) => false,
    }
}

/// Removes namespaces and bridges of earlier runs whose process died.
fn sweep() {
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(tag) = name.split('-').next() {
                if name.starts_with("pt") && dead(tag) {
                    kill_all_in(&name);
                    let _ = ip(&["netns", "del", &name]);
                    let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
                }
            }
        }
    }
    if let Ok(out) = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            if let Some(tag) = name.strip_suffix("br") {
                if dead(tag) {
                    let _ = ip(&["link", "del", name]);
                }
            }
        }
    }
}

/// SIGKILLs every process inside namespace `ns`.
fn kill_all_in(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

impl Testbed {
    /// The bridge and the DNS server; panics with what is missing when the
    /// machine cannot host a testbed.
    pub fn start() -> Testbed {
        crate::require("ip", "apt-get install -y iproute2");
        let dnsmasq = crate::require("dnsmasq", "apt-get install -y dnsmasq");
        assert!(
            rustix::process::geteuid().is_root(),
            "the multi-host testbed needs root (ip netns); CI runs as root"
        );
        sweep();
        let tag = format!("pt{:x}", std::process::id());
        let bridge = format!("{tag}br");
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts_file = dir.path().join("hosts");
        let dns_log = dir.path().join("dnsmasq.log");
        std::fs::write(&hosts_file, "").expect("write hosts file");
        must(&["link", "add", &bridge, "type", "bridge"]);
        let mut tb = Testbed {
            dns: Host {
                ns: String::new(),
                ip: addr(DNS_HOST),
                dev: String::new(),
            },
            tag,
            bridge,
            dnsmasq: None,
            hosts_file,
            dns_log,
            records: BTreeMap::new(),
            hosts: Vec::new(),
            next: 10,
            dir,
        };
        must(&["link", "set", &tb.bridge, "up"]);
        tb.dns = tb.make_host("dns", DNS_HOST);
        let child = tb
            .dns
            .command(&dnsmasq)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--local-ttl=1",
                "--bind-interfaces",
                "--user=root",
            ])
            .arg(format!("--listen-address={}", tb.dns.ip))
            .arg(format!("--addn-hosts={}", tb.hosts_file.display()))
            .arg(format!("--log-facility={}", tb.dns_log.display()))
            // Its own pid file: testbeds of tests running at once must not
            // share the system's.
            .arg(format!(
                "--pid-file={}",
                tb.dns_log.with_extension("pid").display()
            ))
            .arg("--log-queries")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        tb.dnsmasq = Some(Guard::new(child));
        wait_blocking("dnsmasq started", Duration::from_secs(30), || {
            tb.reads() >= 1
        });
        tb
    }

    /// How many times dnsmasq has read the hosts file.
    fn reads(&self) -> usize {
        let needle = format!("read {}", self.hosts_file.display());
        std::fs::read_to_string(&self.dns_log)
            .unwrap_or_default()
            .matches(&needle)
            .count()
    }

    fn make_host(&mut self, label: &str, last: u8) -> Host {
        let ns = format!("{}-{label}", self.tag);
        let dev = format!("{}v{last}", self.tag);
        let port = format!("{}p{last}", self.tag);
        must(&["netns", "add", &ns]);
        must(&["link", "add", &dev, "type", "veth", "peer", "name", &port]);
        must(&["link", "set", &dev, "netns", &ns]);
        must(&["link", "set", &port, "master", &self.bridge]);
        must(&["link", "set", &port, "up"]);
        let cidr = format!("{}/24", addr(last));
        must(&["-n", &ns, "addr", "add", &cidr, "dev", &dev]);
        must(&["-n", &ns, "link", "set", &dev, "up"]);
        must(&["-n", &ns, "link", "set", "lo", "up"]);
        let etc = PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&etc).expect("create /etc/netns/NS");
        std::fs::write(
            etc.join("resolv.conf"),
            format!(
                "nameserver {}\noptions timeout:1 attempts:2\n",
                addr(DNS_HOST)
            ),
        )
        .expect("write resolv.conf");
        Host {
            ns,
            ip: addr(last),
            dev,
        }
    }

    /// A new host with the next free address.
    pub fn host(&mut self, label: &str) -> Host {
        let last = self.next;
        self.next = self.next.checked_add(1).expect("at most 245 hosts");
        let h = self.make_host(&format!("{label}{last}"), last);
        self.hosts.push(h.clone());
        h
    }

    /// Takes a host off the network for good: its processes are killed
    /// and its namespace deleted.
    pub fn remove(&mut self, host: &Host) {
        kill_all_in(&host.ns);
        let _ = ip(&["netns", "del", &host.ns]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", host.ns));
        self.hosts.retain(|h| h.ns != host.ns);
    }

    /// Cuts (or restores) a host's link: its veth goes down (up).
    pub fn link(&self, host: &Host, up: bool) {
        must(&[
            "-n",
            &host.ns,
            "link",
            "set",
            &host.dev,
            if up { "up" } else { "down" },
        ]);
    }

    /// Makes `name` resolve to `ips` (A records, TTL 1 s) and waits until
    /// dnsmasq has read the change.
    pub fn set_name(&mut self, name: &str, ips: &[Ipv4Addr]) {
        self.records.insert(name.to_string(), ips.to_vec());
        let text: String = self
            .records
            .iter()
            .flat_map(|(n, ips)| ips.iter().map(move |ip| format!("{ip} {n}\n")))
            .collect();
        std::fs::write(&self.hosts_file, text).expect("write hosts file");
        let before = self.reads();
        let pid = self.dnsmasq.as_ref().map_or(0, Guard::pid);
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "SIGHUP dnsmasq");
        wait_blocking(
            "dnsmasq re-read its hosts file",
            Duration::from_secs(10),
            || self.reads() > before,
        );
    }

    /// DNS queries dnsmasq answered so far (from its query log).
    pub fn queries(&self, name: &str) -> usize {
        let needle = format!("query[A] {name} ");
        std::fs::read_to_string(&self.dns_log)
            .unwrap_or_default()
            .matches(&needle)
            .count()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let hosts: Vec<Host> = self.hosts.clone();
        for h in &hosts {
            self.remove(h);
        }
        self.dnsmasq = None;
        let dns = self.dns.clone();
        kill_all_in(&dns.ns);
        let _ = ip(&["netns", "del", &dns.ns]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", dns.ns));
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
