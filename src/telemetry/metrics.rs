//! Metrics: the Prometheus recorder and the functions that record the metrics of
//! docs/DESIGN.md and OPERATIONS.md.
//!
//! Every label comes from a set bounded by the code or the configuration, never by what
//! a client sends: route and credential names from the configuration, refresh reasons
//! and results from the code, the method as one of [`METHOD_LABELS`], and the status
//! as a registered code or its class (see [`status_label`]). Never a raw path, never a
//! secret.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use metrics::{Counter, Gauge, Histogram, SharedString, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::task::BackgroundTask;

/// Request latency buckets, seconds: sub-millisecond proxy overhead up to the default
/// 30 s request timeout.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Login latency buckets, seconds.
const REFRESH_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

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
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full("ipproxy_store_operation_duration_seconds".into()),
                    STORE_BUCKETS,
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

/// Runs the recorder's upkeep every `UPKEEP_INTERVAL` (5 s) until the guard drops.
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

/// The request metrics of one route, with their handles resolved once: recording a
/// request is then a few atomic operations, with no registry lookup, label building
/// or allocation. Made after the recorder is installed (`server::serve` installs it
/// first), otherwise the handles record nothing.
///
/// A cheap handle (`Clone` shares the handles): an upstream response carries its
/// route's metrics until its body is done.
#[derive(Clone)]
pub struct RouteMetrics(Arc<RouteHandles>);

struct RouteHandles {
    route: SharedString,
    duration: Histogram,
    retries: Counter,
    /// `ipproxy_upstream_aborted_total`: upstream bodies broken off mid-stream.
    aborted: Counter,
    /// `ipproxy_requests_total` per method label × common status, registered on
    /// first use so that only series that happened are exported.
    requests: [[OnceLock<Counter>; STATUSES.len()]; METHOD_LABELS.len()],
}

/// The `method` label values: the methods of RFC 9110 and PATCH by name, and `other`
/// for every other method, so that no client can grow the metric set (a method is any
/// token up to the 64 KiB head limit).
pub const METHOD_LABELS: [&str; 10] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE", "other",
];

/// The index in [`METHOD_LABELS`] of `method`'s label.
fn method_index(method: &Method) -> usize {
    let other = METHOD_LABELS.len() - 1;
    METHOD_LABELS[..other]
        .iter()
        .position(|name| *name == method.as_str())
        .unwrap_or(other)
}

/// The `status` label: the code itself when it is registered (one `http` knows a
/// reason phrase for: about 60 codes), otherwise its class (`2xx` … `9xx`). Status
/// codes come from the upstream; the label set stays bounded and small, and an
/// unregistered code an upstream invents is still told apart by class.
pub fn status_label(status: StatusCode) -> SharedString {
    const CLASSES: [&str; 10] = [
        "0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
    ];
    if status.canonical_reason().is_some() {
        SharedString::from(status.as_str().to_owned())
    } else {
        // `StatusCode` holds 100..=999, so the class is one digit.
        SharedString::const_str(CLASSES[usize::from(status.as_u16() / 100) % CLASSES.len()])
    }
}

/// The statuses an IntelePeer proxy answers most, with a cached counter.
const STATUSES: [(u16, &str); 14] = [
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

impl RouteMetrics {
    /// The metrics of route `route`; `-` for requests refused before routing.
    pub fn new(route: &str) -> Self {
        let route = SharedString::from(route.to_owned());
        Self(Arc::new(RouteHandles {
            duration: histogram!("ipproxy_request_duration_seconds", "route" => route.clone()),
            retries: counter!("ipproxy_upstream_retries_total", "route" => route.clone()),
            aborted: counter!("ipproxy_upstream_aborted_total", "route" => route.clone()),
            requests: Default::default(),
            route,
        }))
    }

    /// The metrics of requests refused before routing (route `-`).
    pub fn unrouted() -> &'static Self {
        static UNROUTED: OnceLock<RouteMetrics> = OnceLock::new();
        UNROUTED.get_or_init(|| Self::new("-"))
    }

    /// One finished client request.
    pub fn request_finished(
        &self,
        method: &Method,
        status: StatusCode,
        duration: Duration,
        retried: bool,
    ) {
        self.count_request(method, status);
        self.0.duration.record(duration.as_secs_f64());
        if retried {
            self.0.retries.increment(1);
        }
    }

    /// One upstream response body that broke off after its head went out.
    pub fn upstream_aborted(&self) {
        self.0.aborted.increment(1);
    }

    fn count_request(&self, method: &Method, status: StatusCode) {
        let register = |method: SharedString, status: SharedString| {
            counter!(
                "ipproxy_requests_total",
                "route" => self.0.route.clone(),
                "method" => method,
                "status" => status
            )
        };
        let m = method_index(method);
        let method = SharedString::const_str(METHOD_LABELS[m]);
        match STATUSES
            .iter()
            .position(|(code, _)| *code == status.as_u16())
        {
            Some(s) => self.0.requests[m][s]
                .get_or_init(|| register(method, SharedString::const_str(STATUSES[s].1)))
                .increment(1),
            None => register(method, status_label(status)).increment(1),
        }
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RouteMetrics")
            .field("route", &self.0.route)
            .finish_non_exhaustive()
    }
}

/// Requests in flight, up or down by one.
pub fn inflight(delta: f64) {
    static INFLIGHT: OnceLock<Gauge> = OnceLock::new();
    INFLIGHT
        .get_or_init(|| gauge!("ipproxy_inflight_requests"))
        .increment(delta);
}

/// Login (and store operation) latency buckets, seconds.
const STORE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A token was stored: fetched by this process (`source` `login`) or adopted from the
/// shared store (`store`).
pub fn token_refreshed(
    credential: &str,
    reason: &'static str,
    source: &'static str,
    expires_at: Option<SystemTime>,
    took: Duration,
) {
    refresh_counted(credential, reason, "ok", source, took);
    gauge!("ipproxy_token_last_refresh_timestamp_seconds", "credential" => credential.to_owned())
        .set(unix_seconds(SystemTime::now()));
    if let Some(expires_at) = expires_at {
        gauge!("ipproxy_token_expiry_timestamp_seconds", "credential" => credential.to_owned())
            .set(unix_seconds(expires_at));
    }
}

/// A fetch failed (`source` is always `login`: reading the store never fails one).
pub fn token_refresh_failed(credential: &str, reason: &'static str, took: Duration) {
    refresh_counted(credential, reason, "error", "login", took);
}

fn refresh_counted(
    credential: &str,
    reason: &'static str,
    result: &'static str,
    source: &'static str,
    took: Duration,
) {
    counter!(
        "ipproxy_token_refreshes_total",
        "credential" => credential.to_owned(),
        "reason" => reason,
        "result" => result,
        "source" => source
    )
    .increment(1);
    histogram!("ipproxy_token_refresh_duration_seconds", "credential" => credential.to_owned())
        .record(took.as_secs_f64());
}

/// A 401 on the current token passed through without a login: the reauth interval
/// was still closed.
pub fn reauth_suppressed(credential: &str) {
    counter!("ipproxy_reauth_suppressed_total", "credential" => credential.to_owned()).increment(1);
}

/// One operation on the shared token store (`op` and `result` are fixed words).
pub fn store_operation(op: &'static str, result: &'static str, took: Duration) {
    counter!("ipproxy_store_operations_total", "op" => op, "result" => result).increment(1);
    if result != "unreadable" && result != "conflict" {
        histogram!("ipproxy_store_operation_duration_seconds", "op" => op)
            .record(took.as_secs_f64());
    }
}

/// Secret files were re-read: `trigger` is `sighup`, or `file_changed` (a watched
/// file changed). Lets operators, and tests, see that a rotation was picked up.
pub fn secret_files_reloaded(trigger: &'static str) {
    counter!("ipproxy_secret_reloads_total", "trigger" => trigger).increment(1);
}

/// Finished spans lost: `reason` is `queue_full` (the collector is slower than the
/// spans come) or `export_failed` (the collector refused or did not answer a batch).
pub fn trace_spans_dropped(reason: &'static str, count: usize) {
    counter!("ipproxy_trace_spans_dropped_total", "reason" => reason).increment(count as u64);
}

/// Spans the collector accepted.
pub fn trace_spans_exported(count: usize) {
    counter!("ipproxy_trace_spans_exported_total").increment(count as u64);
}

/// Whether the shared token store answers (`up`), and whether it refuses writes
/// while it does (`degraded`).
pub fn store_state(up: bool, degraded: bool) {
    gauge!("ipproxy_store_up").set(if up { 1.0 } else { 0.0 });
    gauge!("ipproxy_store_degraded").set(if degraded { 1.0 } else { 0.0 });
}

/// Trouble with the shared store started: `kind` is `unreachable` or `degraded`.
pub fn store_trouble(kind: &'static str) {
    counter!("ipproxy_store_troubles_total", "kind" => kind).increment(1);
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// One idempotent request's outcome on `route` (`result` is one of docs/DESIGN.md's
/// fixed words). Only requests that carry an `Idempotency-Key` get here.
pub fn idempotency_counted(route: &str, result: &'static str) {
    counter!("ipproxy_idempotency_total", "route" => route.to_owned(), "result" => result)
        .increment(1);
}

/// Keys held in this replica's memory store.
pub fn idempotency_entries(count: usize) {
    gauge!("ipproxy_idempotency_entries").set(count as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_metrics_count_common_and_uncommon_labels_alike() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let metrics = RouteMetrics::new("sms");
            let ms = Duration::from_millis(3);
            metrics.request_finished(&Method::GET, StatusCode::OK, ms, false);
            metrics.request_finished(&Method::GET, StatusCode::OK, ms, true);
            let propfind = Method::from_bytes(b"PROPFIND").expect("a method");
            metrics.request_finished(&propfind, StatusCode::IM_A_TEAPOT, ms, false);
            let lowercase = Method::from_bytes(b"get").expect("a method");
            metrics.request_finished(&lowercase, StatusCode::OK, ms, false);
            metrics.request_finished(&Method::TRACE, StatusCode::METHOD_NOT_ALLOWED, ms, false);
            let invented = StatusCode::from_u16(599).expect("a status");
            metrics.request_finished(&Method::GET, invented, ms, false);
        });
        let text = handle.render();
        for line in [
            r#"ipproxy_requests_total{route="sms",method="GET",status="200"} 2"#,
            r#"ipproxy_requests_total{route="sms",method="other",status="418"} 1"#,
            r#"ipproxy_requests_total{route="sms",method="other",status="200"} 1"#,
            r#"ipproxy_requests_total{route="sms",method="TRACE",status="405"} 1"#,
            r#"ipproxy_requests_total{route="sms",method="GET",status="5xx"} 1"#,
            r#"ipproxy_upstream_retries_total{route="sms"} 1"#,
            r#"ipproxy_request_duration_seconds_count{route="sms"} 6"#,
        ] {
            assert!(text.lines().any(|found| found == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn every_method_label_is_bounded_and_every_status_label_is_a_code_or_a_class() {
        for method in ["GET", "PATCH", "CONNECT", "TRACE"] {
            let method = Method::from_bytes(method.as_bytes()).expect("a method");
            assert_eq!(METHOD_LABELS[method_index(&method)], method.as_str());
        }
        for method in ["PROPFIND", "get", "X-ANYTHING", &"M".repeat(1000)] {
            let method = Method::from_bytes(method.as_bytes()).expect("a method");
            assert_eq!(METHOD_LABELS[method_index(&method)], "other");
        }
        let labels: std::collections::BTreeSet<String> = (100..=999)
            .map(|code| status_label(StatusCode::from_u16(code).expect("a status")).into_owned())
            .collect();
        assert!(labels.len() < 80, "{} status labels", labels.len());
        assert!(labels.contains("422") && labels.contains("7xx") && labels.contains("2xx"));
    }
}
