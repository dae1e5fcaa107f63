//! The spans of a request and of the work it causes, as plain `tracing` spans under
//! one target ([`TARGET`]) that only the OpenTelemetry layer sees (the log layer
//! filters them out, so log lines are the same with tracing on or off).
//!
//! Every constructor returns [`Span::none`] unless tracing is on ([`enabled`]): with
//! no collector configured, a request creates no span and does no context work, so
//! the hot path costs what it did before tracing existed. Callers record outcomes on
//! what they get; on a disabled span that is a no-op.
//!
//! What goes into a span is chosen here, from plain values: names, fixed words,
//! status codes and the path without its query string (it carries phone numbers).
//! Never a header value, a token, a password, a key or a query.

use http::{HeaderMap, Method, StatusCode};
use tracing::Span;
use tracing::field::Empty;

/// The target of every span this module makes; the OpenTelemetry layer takes these
/// and nothing else (no events, no other crate's spans).
pub const TARGET: &str = "ipproxy::trace";

/// True when spans are exported: `[tracing] otlp_endpoint` (or
/// `OTEL_EXPORTER_OTLP_ENDPOINT`) was set and the exporter was installed.
#[inline]
pub fn enabled() -> bool {
    #[cfg(feature = "otel")]
    {
        super::otel::installed()
    }
    #[cfg(not(feature = "otel"))]
    {
        false
    }
}

/// The server span of one client request, continuing the client's trace when its
/// `traceparent` (and `tracestate`) is valid. Route, status and `retried` are
/// recorded by [`record_request`].
pub fn request_span(headers: &HeaderMap, method: &Method, path: &str, request_id: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "ipproxy.request",
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method.as_str(),
        url.path = path,
        ipproxy.request_id = request_id,
        ipproxy.route = Empty,
        http.response.status_code = Empty,
        ipproxy.retried = Empty,
    );
    #[cfg(feature = "otel")]
    super::otel::continue_trace(&span, headers);
    #[cfg(not(feature = "otel"))]
    let _ = headers;
    span
}

/// How a client request ended. A 5xx is an error of the server span (as the
/// OpenTelemetry HTTP conventions say); a 4xx is the client's.
pub fn record_request(span: &Span, route: &str, status: StatusCode, retried: bool) {
    if span.is_none() {
        return;
    }
    span.record("ipproxy.route", route);
    span.record("http.response.status_code", status.as_u16());
    span.record("ipproxy.retried", retried);
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
}

/// The trace id of `span` (32 hex digits) for the request log line; `None` when
/// tracing is off.
pub fn trace_id(span: &Span) -> Option<String> {
    if span.is_none() {
        return None;
    }
    #[cfg(feature = "otel")]
    {
        super::otel::trace_id(span)
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

/// The client span of one upstream attempt (`attempt` 1, or 2 for the retry after a
/// 401), a child of the current (request) span.
pub fn upstream_span(attempt: u8, method: &Method, authority: &str, path: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "ipproxy.upstream",
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method.as_str(),
        server.address = authority,
        url.path = path,
        ipproxy.attempt = attempt,
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

/// Replaces any `traceparent`/`tracestate` in `headers` with `span`'s own, so the
/// upstream's spans hang off the proxy's client span. Nothing when `span` is disabled
/// (tracing off: the client's headers pass through as they always did).
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_none() {
        return;
    }
    #[cfg(feature = "otel")]
    super::otel::inject(span, headers);
    #[cfg(not(feature = "otel"))]
    let _ = headers;
}

/// How an upstream attempt ended: its status, or why there was none (`timeout`,
/// `unreachable`, ...).
pub fn record_upstream(span: &Span, outcome: Result<StatusCode, &'static str>) {
    if span.is_none() {
        return;
    }
    match outcome {
        Ok(status) => {
            span.record("http.response.status_code", status.as_u16());
            if status.is_client_error() || status.is_server_error() {
                span.record("otel.status_code", "error");
            }
        }
        Err(kind) => {
            span.record("error.type", kind);
            span.record("otel.status_code", "error");
        }
    }
}

/// One token refresh (the single flight), a child of the span that started it (the
/// request whose 401 caused it) or a root of its own (start-up, refresh ahead).
/// `result` is recorded by [`record_refresh`].
pub fn refresh_span(credential: &str, reason: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "ipproxy.token_refresh",
        ipproxy.credential = credential,
        ipproxy.refresh.reason = reason,
        ipproxy.refresh.result = Empty,
        otel.status_code = Empty,
    )
}

/// How a refresh ended: `login`, `store` (adopted the fleet's token), `kept`,
/// `suppressed` or `error`.
pub fn record_refresh(span: &Span, result: &'static str) {
    if span.is_none() {
        return;
    }
    span.record("ipproxy.refresh.result", result);
    if result == "error" {
        span.record("otel.status_code", "error");
    }
}

/// One login against IntelePeer (or a static token read), a child of the refresh.
pub fn login_span(credential: &str, reason: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "ipproxy.login",
        otel.kind = "client",
        otel.status_code = Empty,
        ipproxy.credential = credential,
        ipproxy.refresh.reason = reason,
        ipproxy.login.result = Empty,
        error.type = Empty,
    )
}

/// How a login ended: `Ok`, or the kind of failure (`bad_credentials`, `timeout`, ...).
pub fn record_login(span: &Span, outcome: Result<(), &'static str>) {
    if span.is_none() {
        return;
    }
    match outcome {
        Ok(()) => {
            span.record("ipproxy.login.result", "ok");
        }
        Err(kind) => {
            span.record("ipproxy.login.result", "error");
            span.record("error.type", kind);
            span.record("otel.status_code", "error");
        }
    }
}

/// One operation on the shared token store (`op`: `read`, `lock`, `write`, ...).
pub fn store_span(kind: &'static str, op: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "ipproxy.store",
        otel.kind = "client",
        otel.status_code = Empty,
        db.system.name = kind,
        ipproxy.store.op = op,
        ipproxy.store.result = Empty,
    )
}

/// How a store operation ended: `ok`, `error` or `timeout`.
pub fn record_store(span: &Span, result: &'static str) {
    if span.is_none() {
        return;
    }
    span.record("ipproxy.store.result", result);
    if result != "ok" {
        span.record("otel.status_code", "error");
    }
}
