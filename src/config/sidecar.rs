//! `[[forward]]` and `[[service]]`: the sidecar's TCP listeners that
//! forward to a peer's service, and the services this node serves to its
//! peers from TCP upstreams.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    #[serde(with = "units::addr")]
    pub listen: SocketAddr,
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
    pub fn new(listen: SocketAddr, peer: impl Into<String>, service: impl Into<String>) -> Self {
        ForwardConfig {
            listen,
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
    #[serde(with = "units::addr")]
    pub upstream: SocketAddr,
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
    pub fn new(name: impl Into<String>, upstream: SocketAddr) -> Self {
        ServiceConfig {
            name: name.into(),
            upstream,
            allow: None,
            proxy_protocol: ProxyProtocol::Off,
        }
    }
}
