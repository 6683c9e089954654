//! What stream openers and forwards learn about a peer's endpoints, shared
//! with the peer's actor: the latency of each endpoint (peak-EWMA of the
//! time from stream open to the first response byte), its run of failures,
//! and the handle a stream carries to report both.
//!
//! Failures are counted here, on the hot path, without a message; only the
//! one that completes a run of `outlier.consecutive_failures` goes to the
//! actor, whose core decides the ejection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::pool::PeakEwma;

/// Time constant of the endpoint latency EWMA.
const LATENCY_TAU: Duration = Duration::from_secs(10);

/// One endpoint's measurements, kept across snapshots.
#[derive(Debug)]
pub(crate) struct EndpointStats {
    latency: Mutex<PeakEwma>,
    epoch: Instant,
    failures: AtomicU32,
}

impl Default for EndpointStats {
    fn default() -> Self {
        EndpointStats {
            latency: Mutex::new(PeakEwma::new(LATENCY_TAU)),
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
        }
    }
}

impl EndpointStats {
    fn ewma(&self) -> std::sync::MutexGuard<'_, PeakEwma> {
        self.latency.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seconds; 0 before the first sample.
    pub(crate) fn latency(&self) -> f64 {
        self.ewma().value()
    }

    pub(crate) fn observe(&self, took: Duration) {
        let now = self.epoch.elapsed();
        self.ewma().observe(took.as_secs_f64(), now);
    }

    /// Counts a failure; returns the length of the run it extends.
    pub(crate) fn failed(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// A success ends the run.
    pub(crate) fn succeeded(&self) {
        self.failures.store(0, Ordering::Release);
    }
}

/// An endpoint failed `outlier.consecutive_failures` times in a row.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct EndpointFailing(pub(crate) SocketAddr);

/// Where failures that complete a run are sent: the peer's actor, as long
/// as one runs.
#[derive(Default)]
pub(crate) struct FailureSink {
    actor: Mutex<Option<Recipient<EndpointFailing>>>,
}

impl FailureSink {
    pub(crate) fn attach(&self, to: Option<Recipient<EndpointFailing>>) {
        *self.actor.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }

    fn send(&self, addr: SocketAddr) {
        if let Some(actor) = &*self.actor.lock().unwrap_or_else(|e| e.into_inner()) {
            actor.do_send(EndpointFailing(addr));
        }
    }
}

/// What a stream knows of the endpoint it runs on, to report how it went.
#[derive(Clone)]
pub(crate) struct EndpointHandle {
    pub(crate) addr: SocketAddr,
    pub(crate) stats: Arc<EndpointStats>,
    /// The run length that ejects (`outlier.consecutive_failures`).
    pub(crate) eject_after: u32,
    pub(crate) sink: Arc<FailureSink>,
}

impl EndpointHandle {
    pub(crate) fn first_byte_after(&self, took: Duration) {
        self.stats.observe(took);
    }

    pub(crate) fn ok(&self) {
        self.stats.succeeded();
    }

    pub(crate) fn failed(&self) {
        if self.stats.failed() == self.eject_after {
            self.sink.send(self.addr);
        }
    }
}
