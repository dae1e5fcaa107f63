//! Logs and metrics: the `tracing` subscriber (JSON or text) and the Prometheus
//! recorder, plus the few functions that record the metrics of DESIGN.md.
//!
//! Metric labels are route and credential names from the configuration, methods and
//! status codes: bounded sets, never raw paths, never secrets.

use std::io::IsTerminal as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use metrics::{SharedString, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::task::BackgroundTask;
use crate::token::Token;

/// Request latency buckets, seconds: sub-millisecond proxy overhead up to the default
/// 30 s request timeout.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Login latency buckets, seconds.
const REFRESH_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Installs the global `tracing` subscriber. `RUST_LOG`, when set, overrides the
/// configured level. Logs go to stdout.
pub fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::stdout().is_terminal());
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // Already installed (several servers in one test process): keep the first.
    drop(result);
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("ipproxy_request_duration_seconds".into()),
                REQUEST_BUCKETS,
            )
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full("ipproxy_token_refresh_duration_seconds".into()),
                    REFRESH_BUCKETS,
                )
            })
            .expect("bucket lists are non-empty constants");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours still renders
        // (empty), which a test would notice.
        drop(metrics::set_global_recorder(recorder));
        handle
    })
}

/// Histogram samples wait in memory until upkeep folds them into buckets; without
/// it, memory grows with traffic between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the recorder's upkeep every [`UPKEEP_INTERVAL`] until the guard drops.
pub fn start_upkeep() -> BackgroundTask {
    BackgroundTask::spawn(async {
        let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            metrics_handle().run_upkeep();
        }
    })
}

/// One finished client request. `route` is `None` for requests refused before
/// routing (labelled `-`). Labels are shared or static strings where possible: this
/// runs on every request.
pub fn request_finished(
    route: Option<&Arc<str>>,
    method: &Method,
    status: StatusCode,
    duration: Duration,
    retried: bool,
) {
    let route = || {
        route.map_or(SharedString::const_str("-"), |route| {
            SharedString::from(Arc::clone(route))
        })
    };
    counter!(
        "ipproxy_requests_total",
        "route" => route(),
        "method" => method_label(method),
        "status" => status_label(status)
    )
    .increment(1);
    histogram!("ipproxy_request_duration_seconds", "route" => route())
        .record(duration.as_secs_f64());
    if retried {
        counter!("ipproxy_upstream_retries_total", "route" => route()).increment(1);
    }
}

fn method_label(method: &Method) -> SharedString {
    let name = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => return SharedString::from(method.as_str().to_owned()),
    };
    SharedString::const_str(name)
}

fn status_label(status: StatusCode) -> SharedString {
    /// The statuses an IntelePeer proxy answers most, without a per-request string.
    const COMMON: [(u16, &str); 14] = [
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (407, "407"),
        (413, "413"),
        (429, "429"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    match COMMON.iter().find(|(code, _)| *code == status.as_u16()) {
        Some((_, text)) => SharedString::const_str(text),
        None => SharedString::from(status.as_str().to_owned()),
    }
}

/// Requests in flight, up or down by one.
pub fn inflight(delta: f64) {
    gauge!("ipproxy_inflight_requests").increment(delta);
}

pub(crate) fn token_refreshed(credential: &str, reason: &str, token: &Token, took: Duration) {
    refresh_counted(credential, reason, "ok", took);
    gauge!("ipproxy_token_last_refresh_timestamp_seconds", "credential" => credential.to_owned())
        .set(unix_seconds(SystemTime::now()));
    if let Some(expires_at) = token.expires_at() {
        gauge!("ipproxy_token_expiry_timestamp_seconds", "credential" => credential.to_owned())
            .set(unix_seconds(expires_at));
    }
}

pub(crate) fn token_refresh_failed(credential: &str, reason: &str, took: Duration) {
    refresh_counted(credential, reason, "error", took);
}

fn refresh_counted(credential: &str, reason: &str, result: &'static str, took: Duration) {
    counter!(
        "ipproxy_token_refreshes_total",
        "credential" => credential.to_owned(),
        "reason" => reason.to_owned(),
        "result" => result
    )
    .increment(1);
    histogram!("ipproxy_token_refresh_duration_seconds", "credential" => credential.to_owned())
        .record(took.as_secs_f64());
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
