//! `[[forward]]` and `[[service]]`: the sidecar's local listeners that
//! forward to a peer's service, and the services this node serves to its
//! peers from local upstreams, each over TCP or a Unix socket
//! ([`Address`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::units;

/// The longest Unix socket path the kernel takes (`sun_path` is 108 bytes
/// with its terminating zero).
pub const MAX_UNIX_PATH_BYTES: usize = 107;

/// A local socket address: `IP:PORT` (TCP) or `unix:/absolute/path` (a Unix
/// stream socket).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Address {
    /// The TCP address, if it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Address::Tcp(a) => Some(*a),
            Address::Unix(_) => None,
        }
    }

    /// The socket file's path, if it is a Unix socket.
    pub fn unix(&self) -> Option<&Path> {
        match self {
            Address::Tcp(_) => None,
            Address::Unix(p) => Some(p),
        }
    }

    /// TCP port 0: the kernel picks a port at bind, so two such addresses
    /// are not the same listener.
    pub fn is_ephemeral(&self) -> bool {
        self.tcp().is_some_and(|a| a.port() == 0)
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Address {
        Address::Tcp(a)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => a.fmt(f),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Address, String> {
        let Some(path) = s.strip_prefix("unix:") else {
            return units::parse_addr(s).map(Address::Tcp).map_err(|_| {
                format!(
                    "{:?} is neither IP:PORT nor unix:/absolute/path (e.g. \"127.0.0.1:8080\", \"[::1]:8080\" or \"unix:/run/app.sock\"); host names are not resolved",
                    s.chars().take(80).collect::<String>()
                )
            });
        };
        let shown = || path.chars().take(80).collect::<String>();
        if !path.starts_with('/') {
            // Relative to what would depend on the working directory of
            // whoever started the node; abstract sockets (@name) have no
            // file to guard with a mode.
            return Err(format!(
                "unix socket path {:?} must be absolute (start with /)",
                shown()
            ));
        }
        if path.len() > MAX_UNIX_PATH_BYTES {
            return Err(format!(
                "unix socket path {:?}... is {} bytes; the kernel takes at most {MAX_UNIX_PATH_BYTES}",
                shown(),
                path.len()
            ));
        }
        if path.ends_with('/') || path.contains('\0') {
            return Err(format!("unix socket path {:?} names no file", shown()));
        }
        Ok(Address::Unix(PathBuf::from(path)))
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    pub listen: Address,
    pub peer: String,
    pub service: String,
    /// Tries on other endpoints when a stream fails before any byte of the
    /// answer reached the client.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// TCP connections held at once; past it the forward stops accepting
    /// and new ones wait in the listen backlog (as HAProxy's `maxconn`).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// A connection that moves no byte either way for this long is reset
    /// on both sides; 0 (the default) never times out.
    #[serde(default, with = "units::non_negative_secs")]
    pub idle_timeout: Duration,
}

fn default_retries() -> u32 {
    2
}

fn default_max_connections() -> u32 {
    1024
}

impl ForwardConfig {
    pub fn new(
        listen: impl Into<Address>,
        peer: impl Into<String>,
        service: impl Into<String>,
    ) -> Self {
        ForwardConfig {
            listen: listen.into(),
            peer: peer.into(),
            service: service.into(),
            retries: default_retries(),
            max_connections: default_max_connections(),
            idle_timeout: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub upstream: Address,
    /// The peers (by name) that may open it; unset: every peer this node
    /// admits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// `"v2"`: each upstream connection starts with a PROXY protocol v2
    /// header naming the original client and the calling peer.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
}

/// What a service tells its upstream about the caller first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    /// Nothing: the stream's bytes only.
    #[default]
    Off,
    /// A PROXY protocol version 2 header (README "Caller identity").
    V2,
}

impl ServiceConfig {
    pub fn new(name: impl Into<String>, upstream: impl Into<Address>) -> Self {
        ServiceConfig {
            name: name.into(),
            upstream: upstream.into(),
            allow: None,
            proxy_protocol: ProxyProtocol::Off,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ip_port_or_an_absolute_unix_path_and_print_as_written() {
        for text in ["127.0.0.1:80", "[::1]:8080", "unix:/run/app.sock"] {
            let a: Address = text.parse().unwrap();
            assert_eq!(a.to_string(), text);
        }
        assert_eq!(
            "unix:/a b/c".parse::<Address>(),
            Ok(Address::Unix("/a b/c".into()))
        );
        let longest = format!("unix:/{}", "x".repeat(MAX_UNIX_PATH_BYTES - 1));
        assert!(longest.parse::<Address>().is_ok());
        let too_long = format!("unix:/{}", "x".repeat(MAX_UNIX_PATH_BYTES));
        let e = too_long.parse::<Address>().unwrap_err();
        assert!(e.contains("108 bytes") && e.contains("at most 107"), "{e}");
        for (bad, says) in [
            ("unix:run/app.sock", "must be absolute"),
            ("unix:@abstract", "must be absolute"),
            ("unix:", "must be absolute"),
            ("unix:/run/", "names no file"),
            ("localhost:80", "neither IP:PORT nor unix:/absolute/path"),
            ("/run/app.sock", "neither IP:PORT nor unix:/absolute/path"),
        ] {
            let e = bad.parse::<Address>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(Address::from(SocketAddr::from(([127, 0, 0, 1], 0))).is_ephemeral());
        assert!(!Address::Unix("/x".into()).is_ephemeral());
    }
}
