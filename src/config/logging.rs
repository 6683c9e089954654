//! `[access_log]`: where the line per forwarded connection and per served
//! stream goes, in which format, how many of them, and how many may wait
//! for the writer. Written by `sidecar::access_log`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The most lines that may wait for the writer (`access_log.queue`).
pub const MAX_ACCESS_LOG_QUEUE: usize = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// `TIME KIND NAME key=value ...`.
    Text,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// `""` = off, `"-"` = standard output, else a file (appended to,
    /// created mode 0644 if missing; reopened on SIGUSR1).
    pub path: PathBuf,
    pub format: AccessLogFormat,
    /// The share of connections and streams logged, 0.0 to 1.0.
    pub sample: f64,
    /// Lines that may wait for the writer; past it lines are dropped and
    /// counted, never making traffic wait.
    pub queue: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            path: PathBuf::new(),
            format: AccessLogFormat::Json,
            sample: 1.0,
            queue: 4096,
        }
    }
}

impl AccessLogConfig {
    /// (key, what is wrong) for every rule broken; `check` reports them.
    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !(0.0..=1.0).contains(&self.sample) {
            p.push((
                "access_log.sample",
                format!("must be between 0.0 and 1.0, got {}", self.sample),
            ));
        }
        if !(1..=MAX_ACCESS_LOG_QUEUE).contains(&self.queue) {
            p.push((
                "access_log.queue",
                format!(
                    "must be between 1 and {MAX_ACCESS_LOG_QUEUE}, got {}",
                    self.queue
                ),
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_and_queue_out_of_range_are_named() {
        assert!(AccessLogConfig::default().problems().is_empty());
        let bad = AccessLogConfig {
            sample: 1.5,
            queue: 0,
            ..AccessLogConfig::default()
        };
        let keys: Vec<&str> = bad.problems().iter().map(|p| p.0).collect();
        assert_eq!(keys, ["access_log.sample", "access_log.queue"]);
        let nan = AccessLogConfig {
            sample: f64::NAN,
            ..AccessLogConfig::default()
        };
        assert_eq!(nan.problems().len(), 1, "NaN is no share");
    }
}
