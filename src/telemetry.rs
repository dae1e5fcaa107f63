//! Logs, metrics and traces: the log subscriber in `logs` (each line escaped by
//! `escape`), the Prometheus recorder
//! and every recording function in `metrics`, the spans in [`trace`], exported by
//! `otel` (feature `otel`) when `[tracing]` names a collector. Recording functions
//! take plain values, never domain types.

mod escape;
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_is_utc_in_whole_seconds() {
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        assert_eq!(super::rfc3339(time), "2023-11-14T22:13:20Z");
    }
}
