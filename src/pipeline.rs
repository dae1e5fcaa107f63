//! The request pipeline: shutdown check → client key → browsers → method → admission
//! (`max_concurrency`) → path form → allowlist → route → forward, then one log line and
//! the request metrics.
//!
//! Owns the order of the checks and the in-flight count; every answer the proxy makes
//! itself comes from [`ProxyError`], so this module decides *whether* to refuse, never
//! *how* a refusal looks.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::Either;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

use crate::access::{self, Access, Caller};
use crate::error::ProxyError;
use crate::idempotency::{self, Exchange, Idempotency, KeptBody, OwnAnswer};
use crate::inbound::{ClientBody, RequestHandle};
use crate::proxy::{self, Limits, Outcome, UpstreamClient};
use crate::request_id::RequestId;
use crate::route::{Route, RouteTable};
use crate::shutdown::ShutdownFlag;
use crate::telemetry::{self, RouteMetrics, trace};

/// What the proxy answers: an upstream response streamed through, or its own.
pub(crate) type ProxyResponse = http::Response<Either<LoggedBody, Body>>;

/// Everything a request needs on its way through, shared by every proxy worker.
#[derive(Debug)]
pub(crate) struct Pipeline {
    routes: RouteTable,
    access: Access,
    limits: Limits,
    /// One permit per request in flight; none left → `503 overloaded`.
    inflight: Arc<Semaphore>,
    max_concurrency: usize,
    shutdown: ShutdownFlag,
    /// Kept answers of routes with `idempotency = true`.
    idempotency: Idempotency,
}

/// What the log line says besides the request and its answer: learnt on the way.
#[derive(Debug, Default)]
struct Notes {
    caller: Caller,
    /// Set for requests with an `Idempotency-Key` on an idempotent route.
    idempotency: Option<idempotency::Label>,
}

/// A request the pipeline refused, and the route it had reached (for the log line
/// and the metrics), if any.
struct Refusal<'a> {
    answer: OwnAnswer,
    route: Option<&'a Route>,
}

impl From<ProxyError> for Refusal<'_> {
    /// A refusal before routing.
    fn from(error: ProxyError) -> Self {
        Self {
            answer: OwnAnswer::Error(error),
            route: None,
        }
    }
}

impl Pipeline {
    pub(crate) fn new(
        routes: RouteTable,
        access: Access,
        limits: Limits,
        max_concurrency: usize,
        shutdown: ShutdownFlag,
        idempotency: Idempotency,
    ) -> Self {
        Self {
            routes,
            access,
            limits,
            inflight: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            shutdown,
            idempotency,
        }
    }

    /// The inbound checks (for starting the keys file watcher).
    pub(crate) fn access(&self) -> &Access {
        &self.access
    }

    /// Resolves once no request is in flight (every permit is back).
    pub(crate) async fn idle(&self) {
        let permits = u32::try_from(self.max_concurrency).unwrap_or(u32::MAX);
        let _all = Arc::clone(&self.inflight).acquire_many_owned(permits).await;
    }

    /// Answers one client request, forwarding it with `client`. The request log line
    /// and the request metrics are written when the answer is done: at once for the
    /// proxy's own answers, when the body has been sent (or abandoned) for an upstream
    /// response, so that a client that stalls the download is logged `408`. Either
    /// way the duration is the time to the response head, as the histogram says.
    pub(crate) async fn handle(
        &self,
        client: &UpstreamClient,
        request: http::Request<ClientBody>,
    ) -> ProxyResponse {
        let started = Instant::now();
        let request_id = RequestId::from_headers(request.headers());
        // `Span::none()` unless tracing is on: then nothing below does span work.
        let span = trace::request_span(
            request.headers(),
            request.method(),
            request.uri().path(),
            request_id.as_str(),
        );
        let record = RequestRecord {
            started,
            request_id,
            span,
            method: request.method().clone(),
            // The log line names the path after the request has moved on; the copy is
            // only made when that line is written.
            uri: tracing::enabled!(tracing::Level::INFO).then(|| request.uri().clone()),
            connection: request.body().handle().clone(),
            notes: Notes::default(),
        };
        let mut notes = Notes::default();
        let forwarded = self.admit_and_forward(client, request, &record.request_id, &mut notes);
        let forwarded = if record.span.is_none() {
            forwarded.await
        } else {
            forwarded.instrument(record.span.clone()).await
        };
        let mut record = record;
        record.notes = notes;
        match forwarded {
            Ok((response, route, outcome)) => {
                let status = response.status();
                let head_after = record.started.elapsed();
                response.map(|body| {
                    Either::Left(LoggedBody {
                        body: body.body,
                        log: Some(PendingLog {
                            record,
                            route_name: Arc::clone(&route.name),
                            metrics: route.metrics.clone(),
                            status,
                            head_after,
                            retried: outcome.retried,
                            upstream_aborted: false,
                        }),
                        _in_flight: body.in_flight,
                    })
                })
            }
            Err(refusal) => {
                let response = match refusal.answer {
                    OwnAnswer::Error(error) => error.into_response_for(&record.request_id),
                    OwnAnswer::Kept(response) => response,
                }
                .map(Either::Right);
                let (name, metrics) = match refusal.route {
                    Some(route) => (&*route.name, &route.metrics),
                    None => ("-", RouteMetrics::unrouted()),
                };
                let head_after = record.started.elapsed();
                record.finish(name, metrics, response.status(), head_after, false, false);
                response
            }
        }
    }

    async fn admit_and_forward<'a>(
        &'a self,
        client: &UpstreamClient,
        request: http::Request<ClientBody>,
        request_id: &RequestId,
        notes: &mut Notes,
    ) -> Result<(http::Response<InFlightBody>, &'a Route, Outcome), Refusal<'a>> {
        if self.shutdown.is_set() {
            return Err(ProxyError::ShuttingDown.into());
        }
        // The key first: a caller without one learns nothing about methods, paths,
        // listed hosts or load. Then browsers (a foreign Host, a web page), before
        // any slot or token is taken. Then the method, before a slot is taken or the
        // allowlist consulted: CONNECT and TRACE never go anywhere.
        notes.caller = self.access.check_key(request.headers())?;
        self.access
            .check_browser(request.uri(), request.headers())?;
        access::check_method(request.method())?;
        let in_flight = InFlight::admit(&self.inflight).ok_or(ProxyError::Overloaded)?;
        let path = request.uri().path();
        access::check_path(path)?;
        self.access.check_allowed(request.method(), path)?;
        let route = self.routes.find(path).ok_or(ProxyError::NoRoute)?;
        // Only a keyed POST or PATCH on an idempotent route goes the idempotent way;
        // everything else pays one boolean and, on such a route, one header lookup.
        if route.idempotency && idempotency::applies(request.method()) {
            let key = idempotency::key_of(request.headers()).map_err(|error| Refusal {
                answer: OwnAnswer::Error(error),
                route: Some(route),
            })?;
            if let Some(key) = key {
                let exchange = Exchange {
                    client: client.clone(),
                    limits: self.limits.clone(),
                    route: Arc::clone(route),
                    request_id: request_id.clone(),
                };
                // Boxed: its state (the whole body, the claim) would otherwise make
                // every request's future larger, keyed or not.
                let (result, label) =
                    Box::pin(
                        self.idempotency
                            .forward_once(exchange, request, &notes.caller, &key),
                    )
                    .await;
                notes.idempotency = label;
                return match result {
                    Ok((response, outcome)) => {
                        let response = response.map(|body| InFlightBody { body, in_flight });
                        Ok((response, route, outcome))
                    }
                    Err(answer) => Err(Refusal {
                        answer,
                        route: Some(route),
                    }),
                };
            }
        }
        match proxy::forward(client, &self.limits, route, request, request_id).await {
            Ok((response, outcome)) => {
                let response = response.map(|body| InFlightBody {
                    body: KeptBody::plain(body),
                    in_flight,
                });
                Ok((response, route, outcome))
            }
            Err(error) => Err(Refusal {
                answer: OwnAnswer::Error(error),
                route: Some(route),
            }),
        }
    }
}

/// A request counted against `max_concurrency` and `ipproxy_inflight_requests`, from
/// admission until its response body has been sent (or dropped): a slow download
/// holds an upstream connection and memory just as a slow upstream does.
#[derive(Debug)]
struct InFlight {
    permit: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    fn admit(inflight: &Arc<Semaphore>) -> Option<Self> {
        let permit = Arc::clone(inflight).try_acquire_owned().ok()?;
        telemetry::inflight(1.0);
        Some(Self {
            permit: Some(permit),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The slot first: once the gauge reads 0, a new request is admitted.
        drop(self.permit.take());
        telemetry::inflight(-1.0);
    }
}

/// An upstream response body and its request's [`InFlight`] count, before the log
/// line is attached.
struct InFlightBody {
    body: KeptBody,
    in_flight: InFlight,
}

/// What the request log line and the request metrics need.
#[derive(Debug)]
struct RequestRecord {
    started: Instant,
    request_id: RequestId,
    /// The server span ([`Span::none`](tracing::Span::none) with tracing off); it
    /// ends when the line is written, with the answer.
    span: tracing::Span,
    method: Method,
    uri: Option<Uri>,
    /// Says whether the request was abandoned for stalling (logged `408`).
    connection: RequestHandle,
    notes: Notes,
}

impl RequestRecord {
    /// Writes the request log line and counts the request; `duration` is the time to
    /// the response head. `upstream_aborted`: the upstream broke off the body after
    /// `status` went out (logged `outcome="upstream_aborted"` and counted).
    fn finish(
        self,
        route: &str,
        metrics: &RouteMetrics,
        status: StatusCode,
        duration: Duration,
        retried: bool,
        upstream_aborted: bool,
    ) {
        metrics.request_finished(&self.method, status, duration, retried);
        if upstream_aborted {
            metrics.upstream_aborted();
        }
        trace::record_request(&self.span, route, status, retried);
        // Only for a line that is written (its hex costs an allocation).
        let trace_id = self.uri.as_ref().and_then(|_| trace::trace_id(&self.span));
        // Entered so that the span ends now, with the answer (not at its head).
        let _in_span = self.span.enter();
        tracing::info!(
            request_id = self.request_id.as_str(),
            trace_id = trace_id.as_deref(),
            method = self.method.as_str(),
            route,
            path = self.uri.as_ref().map(Uri::path),
            status = status.as_u16(),
            duration_ms = duration.as_secs_f64() * 1000.0,
            retried,
            outcome = upstream_aborted.then_some(UPSTREAM_ABORTED),
            caller = self.notes.caller.name(),
            idempotency = self.notes.idempotency.map(idempotency::Label::as_str),
            "request"
        );
    }
}

/// The log line of an upstream response, written when its body is done.
#[derive(Debug)]
struct PendingLog {
    record: RequestRecord,
    route_name: Arc<str>,
    metrics: RouteMetrics,
    /// The upstream's status, as sent to the client.
    status: StatusCode,
    /// From the request's arrival to the response head.
    head_after: Duration,
    retried: bool,
    /// The upstream body ended in an error (a reset, invalid chunked encoding, a
    /// connection closed short of `Content-Length`): the client got the status and
    /// part of the body, then a broken connection.
    upstream_aborted: bool,
}

/// The `outcome` of a request line whose upstream body broke off mid-stream.
const UPSTREAM_ABORTED: &str = "upstream_aborted";

/// An upstream response body holding its request's [`InFlight`] count and its log
/// line, both released when the body has been sent or dropped.
#[derive(Debug)]
pub(crate) struct LoggedBody {
    body: KeptBody,
    log: Option<PendingLog>,
    _in_flight: InFlight,
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            // Abandoned because the client stopped taking the body: the upstream's
            // status went out, but the request ended as a client timeout.
            let status = if log.record.connection.stalled() {
                StatusCode::REQUEST_TIMEOUT
            } else {
                log.status
            };
            log.record.finish(
                &log.route_name,
                &log.metrics,
                status,
                log.head_after,
                log.retried,
                log.upstream_aborted,
            );
        }
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled
            && let Some(log) = &mut this.log
        {
            log.upstream_aborted = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
