//! peerpool: a sidecar that keeps a pool of QUIC connections to each of its
//! peers and hands out streams over them.
//!
//! # Layout
//!
//! - [`config`]: the TOML schema, its defaults and its validation.
//! - [`identity`]: node keys, certificates and the [`identity::PeerId`] peers pin.
//! - [`pool`]: the pure core (backoff, balancing, dial plan, limit, peer
//!   states). No IO, no clock, no global rng.

pub mod config;
pub mod identity;
pub mod pool;
