//! The request pipeline: shutdown check → client key → admission (`max_concurrency`) →
//! path form → allowlist → route → forward, then one log line and the request metrics.
//!
//! Owns the order of the checks and the in-flight count; every answer the proxy makes
//! itself comes from [`ProxyError`], so this module decides *whether* to refuse, never
//! *how* a refusal looks.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http::Uri;
use http_body::{Frame, SizeHint};
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Limits, Outcome, ResponseBody, UpstreamClient};
use crate::access::{self, Access};
use crate::error::ProxyError;
use crate::request_id::RequestId;
use crate::route::{Route, RouteTable};
use crate::shutdown::ShutdownFlag;
use crate::telemetry::{self, RouteMetrics};

/// What the proxy answers: an upstream response streamed through, or its own.
pub type ProxyResponse = http::Response<Either<Guarded, Body>>;

/// Everything a request needs on its way through, shared by every proxy worker.
#[derive(Debug)]
pub struct Pipeline {
    routes: RouteTable,
    access: Access,
    limits: Limits,
    /// One permit per request in flight; none left → `503 overloaded`.
    inflight: Arc<Semaphore>,
    max_concurrency: usize,
    shutdown: ShutdownFlag,
}

/// A request the pipeline refused, and the route it had reached (for the log line
/// and the metrics), if any.
struct Refusal<'a> {
    error: ProxyError,
    route: Option<&'a Route>,
}

impl From<ProxyError> for Refusal<'_> {
    /// A refusal before routing.
    fn from(error: ProxyError) -> Self {
        Self { error, route: None }
    }
}

impl Pipeline {
    pub fn new(
        routes: RouteTable,
        access: Access,
        limits: Limits,
        max_concurrency: usize,
        shutdown: ShutdownFlag,
    ) -> Self {
        Self {
            routes,
            access,
            limits,
            inflight: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            shutdown,
        }
    }

    /// The inbound checks (for starting the keys file watcher).
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Resolves once no request is in flight (every permit is back).
    pub async fn idle(&self) {
        let permits = u32::try_from(self.max_concurrency).unwrap_or(u32::MAX);
        let _all = Arc::clone(&self.inflight).acquire_many_owned(permits).await;
    }

    /// Answers one client request, forwarding it with `client`.
    pub async fn handle(
        &self,
        client: &UpstreamClient,
        request: http::Request<Incoming>,
    ) -> ProxyResponse {
        let started = Instant::now();
        let request_id = RequestId::from_headers(request.headers());
        let method = request.method().clone();
        // The log line names the path after the request has moved on; the copy is only
        // made when that line is written.
        let uri = tracing::enabled!(tracing::Level::INFO).then(|| request.uri().clone());
        let (response, route, retried) =
            match self.admit_and_forward(client, request, &request_id).await {
                Ok((response, route, outcome)) => (response, Some(route), outcome.retried),
                Err(refusal) => {
                    let response = refusal
                        .error
                        .into_response_for(&request_id)
                        .map(Either::Right);
                    (response, refusal.route, false)
                }
            };
        let status = response.status();
        let duration = started.elapsed();
        let metrics = match route {
            Some(route) => &route.metrics,
            None => RouteMetrics::unrouted(),
        };
        metrics.request_finished(&method, status, duration, retried);
        tracing::info!(
            request_id = request_id.as_str(),
            method = method.as_str(),
            route = route.map_or("-", |route| &*route.name),
            path = uri.as_ref().map(Uri::path),
            status = status.as_u16(),
            duration_ms = duration.as_secs_f64() * 1000.0,
            retried,
            "request"
        );
        response
    }

    async fn admit_and_forward<'a>(
        &'a self,
        client: &UpstreamClient,
        request: http::Request<Incoming>,
        request_id: &RequestId,
    ) -> Result<(ProxyResponse, &'a Route, Outcome), Refusal<'a>> {
        if self.shutdown.is_set() {
            return Err(ProxyError::ShuttingDown.into());
        }
        // The key first: a caller without one learns nothing about paths or load.
        self.access.check_key(request.headers())?;
        let in_flight = InFlight::admit(&self.inflight).ok_or(ProxyError::Overloaded)?;
        let path = request.uri().path();
        access::check_path(path)?;
        self.access.check_allowed(request.method(), path)?;
        let route = self.routes.find(path).ok_or(ProxyError::NoRoute)?;
        match super::forward(client, &self.limits, route, request, request_id).await {
            Ok((response, outcome)) => Ok((in_flight.hold_until_sent(response), route, outcome)),
            Err(error) => Err(Refusal {
                error,
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
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    fn admit(inflight: &Arc<Semaphore>) -> Option<Self> {
        let permit = Arc::clone(inflight).try_acquire_owned().ok()?;
        telemetry::inflight(1.0);
        Some(Self { _permit: permit })
    }

    /// Moves the count into `response`'s body, released when the body is done.
    fn hold_until_sent(self, response: http::Response<ResponseBody>) -> ProxyResponse {
        response.map(|body| {
            Either::Left(Guarded {
                body,
                _in_flight: self,
            })
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        telemetry::inflight(-1.0);
    }
}

/// An upstream response body holding its request's [`InFlight`] count.
#[derive(Debug)]
pub struct Guarded {
    body: ResponseBody,
    _in_flight: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
