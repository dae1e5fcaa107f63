//! Forwarding: one client request → one upstream request (two when the first answer
//! is a 401 and the body can be replayed), the response streamed back.
//!
//! - `headers`: what crosses the proxy in each direction.
//! - `body`: the replay buffer and the streaming `max_body` limit.
//!
//! Knows routes and leases, not where tokens come from.

mod body;
pub mod headers;
mod pipeline;

pub use pipeline::{Pipeline, ProxyResponse};

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, StatusCode, Uri, header};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::{Config, UpstreamConfig};
use crate::connection::ClientBody;
use crate::error::ProxyError;
use crate::request_id::{self, RequestId};
use crate::route::Route;
use body::{OutboundBody, UpstreamBody};

/// Idle upstream connections are kept this long (IntelePeer is one host per route).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

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

/// The pooled upstream client used for forwarding.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// Builds the pooled HTTPS client for forwarding: rustls (ring) with the standard web
/// roots plus `ca_file`, verification always on, HTTP/1.1 or HTTP/2 by ALPN, no
/// redirects followed (a redirect is the upstream's answer to the client), no
/// decompression (bodies pass through byte for byte).
pub fn build_client(upstream: &UpstreamConfig) -> Result<UpstreamClient, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for certificate in extra_roots(upstream)? {
        roots
            .add(certificate)
            .map_err(|error| ca_file_error(upstream, error.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| ClientError::Build(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(upstream.connect_timeout));
    http.set_nodelay(true);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        // `forward` sets Host from the route's prebuilt value.
        .set_host(false)
        .build(https))
}

/// Builds the client used for logins (reqwest: JSON in, JSON out), trusting the same
/// roots as the forwarding client.
pub fn build_login_client(upstream: &UpstreamConfig) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(upstream.connect_timeout)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    for certificate in extra_roots(upstream)? {
        let certificate = reqwest::Certificate::from_der(certificate.as_ref())
            .map_err(|error| ca_file_error(upstream, error.to_string()))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build()
        .map_err(|error| ClientError::Build(error.to_string()))
}

/// The certificates of `upstream.ca_file` (none when unset).
fn extra_roots(upstream: &UpstreamConfig) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let Some(path) = &upstream.ca_file else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(path).map_err(|error| ca_file_error(upstream, error.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ca_file_error(upstream, error.to_string()))?;
    if certificates.is_empty() {
        return Err(ca_file_error(
            upstream,
            "no PEM certificate found".to_owned(),
        ));
    }
    Ok(certificates)
}

fn ca_file_error(upstream: &UpstreamConfig, reason: String) -> ClientError {
    let path = upstream
        .ca_file
        .as_ref()
        .map_or_else(String::new, |path| path.display().to_string());
    ClientError::CaFile { path, reason }
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
    client: &UpstreamClient,
    limits: &Limits,
    route: &Route,
    request: Request<ClientBody>,
    request_id: &RequestId,
) -> Result<(http::Response<Incoming>, Outcome), ProxyError> {
    let (parts, body) = request.into_parts();
    let uri = upstream_uri(route, &parts.uri)?;
    let mut body =
        OutboundBody::prepare(body, &parts.headers, limits.replay_limit, limits.max_body).await?;

    let credential = &route.credential;
    let lease = credential
        .lease(route.format, limits.request_timeout)
        .await
        .map_err(|unavailable| ProxyError::TokenUnavailable {
            credential: unavailable.credential,
            retry_after: unavailable.retry_after,
        })?;

    // Headers are built for each attempt: cheaper than keeping a copy for a retry
    // that rarely happens.
    let send = |token: HeaderValue, body: UpstreamBody, uri: Uri| {
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        *headers = headers::upstream_request_headers(&parts.headers, &route.header);
        headers.insert(header::HOST, route.host.clone());
        headers.insert(request_id::HEADER, request_id.header_value());
        headers.insert(route.header.clone(), token);
        attempt(client, request, limits.request_timeout)
    };

    let first = send(lease.header, body.attempt(), uri).await;
    let response = match first {
        Err(error) => return Err(body.cut_off(limits).unwrap_or(error)),
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
    let uri = upstream_uri(route, &parts.uri)?;
    let second = send(fresh.header, body.attempt(), uri).await?;
    Ok((
        into_client_response(second, request_id),
        Outcome { retried: true },
    ))
}

fn upstream_uri(route: &Route, inbound: &Uri) -> Result<Uri, ProxyError> {
    route
        .upstream_uri(inbound.path(), inbound.query())
        .map_err(|_| ProxyError::BadRequest("the request target cannot be forwarded"))
}

/// One upstream attempt, bounded until response headers arrive.
async fn attempt(
    client: &UpstreamClient,
    request: Request<UpstreamBody>,
    timeout: Duration,
) -> Result<http::Response<Incoming>, ProxyError> {
    match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => {
            tracing::debug!(cause = %error, connect = error.is_connect(), "upstream request failed");
            Err(ProxyError::UpstreamUnreachable)
        }
        Err(_elapsed) => Err(ProxyError::UpstreamTimeout(timeout)),
    }
}

/// The upstream response, less hop-by-hop headers, with the request id. The body
/// streams as it arrives, unboxed; the server wraps it with the request's in-flight
/// count.
fn into_client_response(
    mut response: http::Response<Incoming>,
    request_id: &RequestId,
) -> http::Response<Incoming> {
    let headers = response.headers_mut();
    headers::strip_response_headers(headers);
    headers.insert(request_id::HEADER, request_id.header_value());
    response
}
