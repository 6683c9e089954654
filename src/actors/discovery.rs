//! Discovery: the endpoints of a peer addressed by host name are the A and
//! AAAA records of that name, resolved with the system's resolver
//! (`/etc/resolv.conf`, through hickory), re-resolved when the records'
//! TTL ends, never sooner than `discovery.refresh_min` and never later than
//! `discovery.refresh_max`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::TokioResolver;

use crate::config::DiscoveryConfig;

/// How long one resolution may take in all.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The node's DNS resolver.
pub(crate) struct Resolver(TokioResolver);

/// One resolution's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) addrs: BTreeSet<SocketAddr>,
    /// Until when the records may be kept.
    pub(crate) ttl: Duration,
}

impl Resolver {
    /// The system's configuration (`/etc/resolv.conf`), both address
    /// families, short timeouts (a resolution failure keeps the last good
    /// answer, so waiting long helps nobody).
    pub(crate) fn system() -> Result<Resolver, String> {
        let mut b = TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?;
        let opts = b.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = LOOKUP_TIMEOUT / 2;
        opts.attempts = 2;
        Ok(Resolver(b.build()))
    }

    /// The addresses of `host` with `port`, of the families `local` can
    /// reach (an IPv4 socket dials no IPv6 address).
    pub(crate) async fn resolve(
        &self,
        host: &str,
        port: u16,
        local: SocketAddr,
    ) -> Result<Answer, String> {
        let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, self.0.lookup_ip(host))
            .await
            .map_err(|_| format!("no answer for {host} within {LOOKUP_TIMEOUT:?}"))?
            .map_err(|e| format!("{host}: {e}"))?;
        let addrs: BTreeSet<SocketAddr> = lookup
            .iter()
            .filter(|ip| local.is_ipv6() || ip.is_ipv4())
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        if addrs.is_empty() {
            return Err(format!("{host} has no address this node can reach"));
        }
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(Instant::now());
        Ok(Answer { addrs, ttl })
    }
}

/// When to resolve again after an answer valid for `ttl`.
pub(crate) fn next_refresh(ttl: Duration, cfg: &DiscoveryConfig) -> Duration {
    ttl.clamp(cfg.refresh_min, cfg.refresh_max.max(cfg.refresh_min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_the_ttl_within_the_bounds() {
        let cfg = DiscoveryConfig::default();
        assert_eq!(next_refresh(Duration::ZERO, &cfg), Duration::from_secs(1));
        assert_eq!(
            next_refresh(Duration::from_secs(7), &cfg),
            Duration::from_secs(7)
        );
        assert_eq!(
            next_refresh(Duration::from_secs(3600), &cfg),
            Duration::from_secs(30)
        );
    }
}
