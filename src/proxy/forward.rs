//! Forwarding: one client request → one upstream request (two when the first answer
//! is a 401 and the body can be replayed: the one retry, with a fresh token), the
//! response streamed back.

use std::time::Duration;

use http::{HeaderValue, Request, StatusCode, Uri, header};

use super::body::{OutboundBody, UpstreamBody};
use super::headers;
use super::pool::{ResponseBody, UpstreamClient};
use crate::config::Config;
use crate::error::ProxyError;
use crate::inbound::ClientBody;
use crate::request_id::{self, RequestId};
use crate::route::Route;
use crate::telemetry::trace;

/// Limits that apply to every forwarded request.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Per attempt, until response headers.
    pub request_timeout: Duration,
    pub replay_limit: u64,
    pub max_body: u64,
    /// For the `408` message when a request body stalls (the bound itself is enforced
    /// by the connection watch).
    pub client_timeout: Duration,
}

impl Limits {
    pub fn from_config(config: &Config) -> Self {
        Self {
            request_timeout: config.server.request_timeout,
            replay_limit: config.server.replay_limit,
            max_body: config.server.max_body,
            client_timeout: config.server.client_timeout,
        }
    }
}

/// What became of a forwarded request, for the request log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// A second attempt was sent after a 401.
    pub retried: bool,
}

/// Forwards `request` along `route`. The path has already passed the access checks.
pub async fn forward(
    client: &UpstreamClient,
    limits: &Limits,
    route: &Route,
    request: Request<ClientBody>,
    request_id: &RequestId,
) -> Result<(http::Response<ResponseBody>, Outcome), ProxyError> {
    let (parts, body) = request.into_parts();
    let body =
        OutboundBody::prepare(body, &parts.headers, limits.replay_limit, limits.max_body).await?;
    forward_prepared(client, limits, route, &parts, body, request_id)
        .await
        .map_err(|failed| failed.error)
}

/// A forwarded request that got no upstream answer, and whether it may have reached
/// the upstream (an idempotency key is released only when it cannot have).
#[derive(Debug)]
pub struct Failed {
    pub error: ProxyError,
    /// False when nothing was sent: no token, no connection (connect refused, the
    /// egress tunnel failed, TLS), a target that cannot be forwarded.
    pub may_have_left: bool,
}

impl Failed {
    fn before_sending(error: ProxyError) -> Self {
        Self {
            error,
            may_have_left: false,
        }
    }
}

/// [`forward`] with the body already read (or streaming).
pub async fn forward_prepared(
    client: &UpstreamClient,
    limits: &Limits,
    route: &Route,
    parts: &http::request::Parts,
    mut body: OutboundBody,
    request_id: &RequestId,
) -> Result<(http::Response<ResponseBody>, Outcome), Failed> {
    let uri = upstream_uri(route, &parts.uri).map_err(Failed::before_sending)?;

    let credential = &route.credential;
    let lease = credential
        .lease(route.format, limits.request_timeout)
        .await
        .map_err(|unavailable| {
            Failed::before_sending(ProxyError::TokenUnavailable {
                credential: unavailable.credential,
                retry_after: unavailable.retry_after,
            })
        })?;

    // Headers are built for each attempt (again if the pool must send it again on a
    // new connection): cheaper than keeping a copy for a retry that rarely happens.
    let build = |token: &HeaderValue, body: UpstreamBody, uri: Uri, span: &tracing::Span| {
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        *headers = headers::upstream_request_headers(&parts.headers, &route.header);
        headers.insert(header::HOST, route.host().clone());
        headers.insert(request_id::HEADER, request_id.header_value());
        headers.insert(route.header.clone(), token.clone());
        // The upstream sees this attempt's span as the parent, in place of the
        // client's own `traceparent` (nothing happens unless tracing is on).
        trace::inject(span, headers);
        request
    };
    let inbound = &parts.uri;
    let send = |token: HeaderValue, body: UpstreamBody, uri: Uri, number: u8| {
        // `Span::none()` unless tracing is on.
        let span = trace::upstream_span(
            number,
            &parts.method,
            uri.authority().map_or("", |authority| authority.as_str()),
            uri.path(),
        );
        let request = build(&token, body, uri, &span);
        let retry_span = span.clone();
        let again = move |body| {
            Some(build(
                &token,
                body,
                upstream_uri(route, inbound).ok()?,
                &retry_span,
            ))
        };
        attempt(client, request, again, limits.request_timeout, span)
    };

    let first = send(lease.header, body.attempt(), uri, 1).await;
    let response = match first {
        Err(failed) => {
            return Err(match body.cut_off(limits) {
                Some(error) => Failed {
                    error,
                    may_have_left: true,
                },
                None => failed,
            });
        }
        Ok(response) => response,
    };
    if response.status() != StatusCode::UNAUTHORIZED || !body.is_replayable() {
        return Ok((
            into_client_response(response, request_id),
            Outcome::default(),
        ));
    }
    let Some(fresh) = credential
        .lease_after_rejection(route.format, lease.generation, limits.request_timeout)
        .await
    else {
        // Nothing fresher exists or the refresh failed: IntelePeer's 401 goes back as
        // it came.
        return Ok((
            into_client_response(response, request_id),
            Outcome::default(),
        ));
    };
    drop(response);
    // The first attempt was refused (401): only the second can have had an effect.
    let uri = upstream_uri(route, &parts.uri).map_err(Failed::before_sending)?;
    let second = send(fresh.header, body.attempt(), uri, 2).await?;
    Ok((
        into_client_response(second, request_id),
        Outcome { retried: true },
    ))
}

fn upstream_uri(route: &Route, inbound: &Uri) -> Result<Uri, ProxyError> {
    route
        .upstream_uri_for(inbound)
        .map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded"))
}

/// One upstream attempt, bounded until response headers arrive; `again` rebuilds the
/// request if the pool must send it again on a new connection. Its outcome is
/// recorded on its `span`, which ends with it.
async fn attempt(
    client: &UpstreamClient,
    request: Request<UpstreamBody>,
    again: impl FnOnce(UpstreamBody) -> Option<Request<UpstreamBody>>,
    timeout: Duration,
    span: tracing::Span,
) -> Result<http::Response<ResponseBody>, Failed> {
    match tokio::time::timeout(timeout, client.send(request, again)).await {
        Ok(Ok(response)) => {
            trace::record_upstream(&span, Ok(response.status()));
            Ok(response)
        }
        Ok(Err(error)) => {
            tracing::debug!(cause = %error, connect = error.is_connect(), "upstream request failed");
            let may_have_left = !error.is_connect();
            let error = match error.egress() {
                Some(egress) => {
                    trace::record_upstream(&span, Err("egress_unreachable"));
                    ProxyError::EgressUnreachable {
                        proxy: egress.proxy.clone(),
                        reason: egress.reason.clone(),
                    }
                }
                None => {
                    trace::record_upstream(&span, Err("unreachable"));
                    ProxyError::UpstreamUnreachable
                }
            };
            Err(Failed {
                error,
                may_have_left,
            })
        }
        Err(_elapsed) => {
            trace::record_upstream(&span, Err("timeout"));
            // Possibly during the connect, but possibly after the request was
            // written: counted as sent.
            Err(Failed {
                error: ProxyError::UpstreamTimeout(timeout),
                may_have_left: true,
            })
        }
    }
}

/// The upstream response, less hop-by-hop headers, with the request id. The body
/// streams as it arrives, unboxed; the server wraps it with the request's in-flight
/// count.
fn into_client_response(
    mut response: http::Response<ResponseBody>,
    request_id: &RequestId,
) -> http::Response<ResponseBody> {
    let headers = response.headers_mut();
    headers::strip_response_headers(headers);
    headers.insert(request_id::HEADER, request_id.header_value());
    response
}
