//! The handles of forwards and services, resolved once when they start:
//! no lookup by name, no lock and no allocation per connection or stream.

use std::time::Duration;

use super::labels::{RetryReason, TransferResult};
use super::series::LabelledCounter;
use super::*;

/// One `[[forward]]`: its results, connection lifetimes and the
/// connections it holds.
pub(crate) struct ForwardMetrics {
    results: LabelledCounter<TransferResult>,
    active: metrics::Gauge,
    retries: LabelledCounter<RetryReason>,
    duration: HistogramKey,
}

impl ForwardMetrics {
    /// `label` is the forward's listen address.
    pub(crate) fn new(label: &str) -> ForwardMetrics {
        ForwardMetrics {
            results: LabelledCounter::new(
                FORWARD_CONNECTIONS,
                vec![metrics::Label::new("forward", label.to_string())],
                "result",
            ),
            retries: LabelledCounter::new(
                RETRIES,
                vec![metrics::Label::new("forward", label.to_string())],
                "reason",
            ),
            duration: HistogramKey::new(FORWARD_DURATION, "forward", label),
            active: metrics::gauge!(FORWARD_ACTIVE, "forward" => label.to_string()),
        }
    }

    pub(crate) fn record(&self, result: TransferResult, lifetime: Duration) {
        self.results.increment(result);
        self.duration.record(lifetime);
    }

    /// `delta` connections more (or fewer) held now.
    pub(crate) fn held(&self, delta: f64) {
        self.active.increment(delta);
    }

    pub(crate) fn retried(&self, reason: RetryReason) {
        self.retries.increment(reason);
    }

    pub(crate) fn touch(&self) {
        self.results.touch();
        self.retries.touch();
        self.active.increment(0.0);
    }
}

/// One `[[service]]` (or the catch-all of unknown names): its results.
pub(crate) struct ServiceMetrics {
    results: LabelledCounter<TransferResult>,
}

impl ServiceMetrics {
    pub(crate) fn new(service: &str) -> ServiceMetrics {
        ServiceMetrics {
            results: LabelledCounter::new(
                SERVICE_STREAMS,
                vec![metrics::Label::new("service", service.to_string())],
                "result",
            ),
        }
    }

    pub(crate) fn count(&self, result: TransferResult) {
        self.results.increment(result);
    }

    pub(crate) fn touch(&self) {
        self.results.touch();
    }
}

/// The node's stream memory: reserved now, and its limit.
pub(crate) fn stream_memory(reserved: u64, limit: u64) {
    metrics::gauge!(STREAM_MEMORY).set(reserved as f64);
    metrics::gauge!(STREAM_MEMORY_LIMIT).set(limit as f64);
}

/// The access log's counters: lines written, lines dropped.
#[derive(Clone)]
pub(crate) struct AccessLogMetrics {
    pub(crate) written: metrics::Counter,
    pub(crate) dropped: metrics::Counter,
}

impl AccessLogMetrics {
    pub(crate) fn new() -> AccessLogMetrics {
        AccessLogMetrics {
            written: metrics::counter!(ACCESS_LOG_LINES, "result" => "written"),
            dropped: metrics::counter!(ACCESS_LOG_LINES, "result" => "dropped"),
        }
    }

    pub(crate) fn touch(&self) {
        self.written.increment(0);
        self.dropped.increment(0);
    }
}
