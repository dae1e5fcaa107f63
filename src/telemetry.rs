//! Logs, metrics and traces: the log subscriber in `logs`, the Prometheus recorder
//! and every recording function in `metrics`, the spans in [`trace`], exported by
//! `otel` (feature `otel`) when `[tracing]` names a collector. Recording functions
//! take plain values, never domain types.

mod logs;
mod metrics;
#[cfg(feature = "otel")]
mod otel;
pub mod trace;

use std::time::SystemTime;

pub use self::metrics::*;
pub use logs::{LogGuard, TelemetryGuard, exit_now, init, init_logging};

/// `time` as RFC 3339 in whole seconds (UTC), as logs, `/readyz` and `/refresh` show it.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
