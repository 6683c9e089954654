//! The configuration: one TOML file, every table `deny_unknown_fields`,
//! durations as seconds, defaults in one place (`config/default.toml` is
//! proven equal to them by a test).
//!
//! - `schema`: the tables and their defaults;
//! - `units`: seconds as floats in the file, `Duration` in the program, and
//!   `IP:PORT` addresses, each with a message that says what is expected;
//! - `check`: the rules serde cannot express, one message per rule;
//! - `limits`: `[handshake]` and the rules of the buffer keys of `[node]`;
//! - `logging`: `[access_log]` and its rules;
//! - `sidecar`: `[[forward]]` and `[[service]]`, and their addresses (TCP or
//!   `unix:/path`);
//! - `load`: reading a file and reporting every problem at once, each naming
//!   the key, the bad value and what is allowed, e.g.
//!   `pool.max_connections_per_peer: must be between 1 and 64, got 0`.

mod check;
pub mod limits;
mod load;
mod logging;
mod schema;
mod sidecar;
mod units;

pub use check::{check_peer, check_peer_name, PeerProblem};
pub use limits::{stream_reservation, AddressValidation, HandshakeConfig};
pub use load::{ConfigError, Loaded, Problem};
pub use logging::{AccessLogConfig, AccessLogFormat, MAX_ACCESS_LOG_QUEUE};
pub use schema::{
    AdminConfig, Config, DiscoveryConfig, NodeConfig, OutlierConfig, PeerAddr, PeerConfig,
    PoolConfig, RetryConfig, TrustConfig, ADMIN_GET_PATHS, MAX_CONFIG_BYTES,
    MAX_CONNECTIONS_PER_PEER, MAX_SERVICE_NAME_BYTES,
};
pub use sidecar::{Address, ForwardConfig, ProxyProtocol, ServiceConfig, MAX_UNIX_PATH_BYTES};
pub use units::{parse_addr, MAX_SECS};
