//! Forwarding: one client request → one upstream request (two when the first answer
//! is a 401 and the body can be replayed), the response streamed back.
//!
//! - `headers`: what crosses the proxy in each direction.
//! - `body`: the replay buffer and the streaming `max_body` limit.
//!
//! Knows routes and leases, not where tokens come from.

mod body;
pub mod headers;

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Request, StatusCode, header};

use crate::config::{Config, UpstreamConfig};
use crate::error::ProxyError;
use crate::request_id::{self, RequestId};
use crate::route::Route;
use body::OutboundBody;

/// Idle upstream connections are kept this long (IntelePeer is one host per route).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Limits that apply to every forwarded request.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Per attempt, until response headers.
    pub request_timeout: Duration,
    pub replay_limit: u64,
    pub max_body: u64,
}

impl Limits {
    pub fn from_config(config: &Config) -> Self {
        Self {
            request_timeout: config.server.request_timeout,
            replay_limit: config.server.replay_limit,
            max_body: config.server.max_body,
        }
    }
}

/// What became of a forwarded request, for the request log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// A second attempt was sent after a 401.
    pub retried: bool,
}

/// Builds the pooled HTTPS client used for upstream requests and logins: rustls with
/// the standard web roots plus `ca_file`, verification always on, no redirects
/// followed (a redirect is the upstream's answer to the client), no decompression.
pub fn build_client(upstream: &UpstreamConfig) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(upstream.connect_timeout)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(path) = &upstream.ca_file {
        let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
            path: path.display().to_string(),
            reason: source.to_string(),
        })?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| ClientError::CaFile {
                path: path.display().to_string(),
                reason: error.to_string(),
            })?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|error| ClientError::Build(error.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("the HTTPS client could not be built: {0}")]
    Build(String),
}

/// Forwards `request` along `route`. The path has already passed the access checks.
pub async fn forward(
    client: &reqwest::Client,
    limits: &Limits,
    route: &Route,
    request: Request<Body>,
    request_id: &RequestId,
) -> Result<(Response, Outcome), ProxyError> {
    let (parts, body) = request.into_parts();
    let url = route
        .upstream_url(parts.uri.path(), parts.uri.query())
        .map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded"))?;
    let mut upstream_headers = headers::upstream_request_headers(&parts.headers, &route.header);
    upstream_headers.insert(request_id::HEADER, request_id.header_value());
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let mut body =
        OutboundBody::prepare(body, content_length, limits.replay_limit, limits.max_body).await?;

    let credential = &route.credential;
    let lease = credential
        .lease(route.format_index, limits.request_timeout)
        .await
        .map_err(|unavailable| ProxyError::TokenUnavailable {
            credential: unavailable.credential,
            retry_after: unavailable.retry_after,
        })?;

    let send = |token: HeaderValue, body: reqwest::Body| {
        let mut headers = upstream_headers.clone();
        headers.insert(route.header.clone(), token);
        let request = client
            .request(parts.method.clone(), url.clone())
            .headers(headers)
            .body(body);
        attempt(request, limits.request_timeout)
    };

    let first = send(lease.header, body.attempt()).await;
    let response = match first {
        Err(error) if body.exceeded_limit() => {
            drop(error);
            return Err(ProxyError::BodyTooLarge {
                limit: limits.max_body,
            });
        }
        other => other?,
    };
    if response.status() != StatusCode::UNAUTHORIZED || !body.is_replayable() {
        return Ok((
            into_client_response(response, request_id),
            Outcome::default(),
        ));
    }
    let Some(fresh) = credential
        .lease_after_rejection(route.format_index, lease.generation, limits.request_timeout)
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
    let second = send(fresh.header, body.attempt()).await?;
    Ok((
        into_client_response(second, request_id),
        Outcome { retried: true },
    ))
}

/// One upstream attempt, bounded until response headers arrive.
async fn attempt(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<reqwest::Response, ProxyError> {
    match tokio::time::timeout(timeout, request.send()).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) if error.is_timeout() && !error.is_connect() => {
            Err(ProxyError::UpstreamTimeout(timeout))
        }
        Ok(Err(error)) => {
            tracing::debug!(cause = %error, "upstream request failed");
            Err(ProxyError::UpstreamUnreachable)
        }
        Err(_elapsed) => Err(ProxyError::UpstreamTimeout(timeout)),
    }
}

/// The upstream response, streamed, less hop-by-hop headers, with the request id.
fn into_client_response(response: reqwest::Response, request_id: &RequestId) -> Response {
    let response: http::Response<reqwest::Body> = response.into();
    let (mut parts, body) = response.into_parts();
    headers::strip_response_headers(&mut parts.headers);
    parts
        .headers
        .insert(request_id::HEADER, request_id.header_value());
    Response::from_parts(parts, Body::new(body))
}
