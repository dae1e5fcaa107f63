//! The one outbound stack for connections to IntelePeer, forwarding and logins alike:
//! TCP (`upstream.connect_timeout`, no Nagle) → the egress tunnel where configured
//! (`egress`) → rustls on ring with the standard web roots plus `upstream.ca_file`,
//! verification always on → HTTP/1.1 or HTTP/2 by ALPN.
//!
//! Forwarding gets one pooled client per worker ([`build_client`], the connections
//! in `pool`); logins get one [`LoginTransport`] ([`build_login_client`]) on hyper-util's
//! pooled client over the same egress connector and roots, so they trust the same
//! roots and leave the network the same way. Nothing else may use this stack: a store
//! or a trace collector is reached inside the network, without the egress proxy.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Uri, header};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use url::Url;

use super::egress::{EgressConnector, EgressError};
use super::pool::{IDLE_TIMEOUT, PoolSettings, UpstreamClient};
use crate::config::UpstreamConfig;
use crate::error;
use crate::token::{LoginAnswer, LoginTransport, LoginTransportError};

/// TLS over the egress connector, for the login client.
type Connector = HttpsConnector<EgressConnector>;

/// Builds a worker's pooled client for forwarding: no redirects followed (a redirect
/// is the upstream's answer to the client), no decompression (bodies pass through byte
/// for byte), `Host` left to `forward`.
pub fn build_client(upstream: &UpstreamConfig) -> Result<UpstreamClient, ClientError> {
    build_client_with(upstream, PoolSettings::default())
}

/// [`build_client`] with other pool settings (tests: a short idle timeout, a small
/// bound).
pub fn build_client_with(
    upstream: &UpstreamConfig,
    settings: PoolSettings,
) -> Result<UpstreamClient, ClientError> {
    Ok(UpstreamClient::new(
        egress_connector(upstream),
        tls_config(upstream)?,
        settings,
    ))
}

/// Builds the transport for logins on the same stack as forwarding (same roots, same
/// egress). Built once per process, so it also says how IntelePeer is reached.
pub fn build_login_client(
    upstream: &UpstreamConfig,
) -> Result<Arc<dyn LoginTransport>, ClientError> {
    let egress = &upstream.egress;
    if !egress.is_direct() {
        let shown = |proxy: Option<&crate::config::EgressProxy>| {
            proxy.map_or_else(
                || "direct".to_owned(),
                |proxy| format!("{proxy} ({})", proxy.source),
            )
        };
        tracing::info!(
            https = %shown(egress.https.as_ref()),
            http = %shown(egress.http.as_ref()),
            no_proxy = egress.no_proxy.as_ref().map_or("", |list| list.entries.as_str()),
            "connections to IntelePeer go through the egress proxy (CONNECT)"
        );
    }
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(connector(upstream)?);
    Ok(Arc::new(LoginClient { client }))
}

fn connector(upstream: &UpstreamConfig) -> Result<Connector, ClientError> {
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(upstream)?)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(egress_connector(upstream)))
}

/// rustls on ring, the standard web roots plus `upstream.ca_file`, verification on,
/// the default in-memory session cache (new connections resume TLS sessions).
fn tls_config(upstream: &UpstreamConfig) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for certificate in extra_roots(upstream)? {
        roots
            .add(certificate)
            .map_err(|error| ca_file_error(upstream, error.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| ClientError::Build(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// TCP (`connect_timeout`, no Nagle) or the egress tunnel.
fn egress_connector(upstream: &UpstreamConfig) -> EgressConnector {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(upstream.connect_timeout));
    tcp.set_nodelay(true);
    EgressConnector::new(tcp, &upstream.egress, upstream.connect_timeout)
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

/// Logins over the outbound stack: JSON in, JSON out, no redirects followed.
#[derive(Debug)]
struct LoginClient {
    client: Client<Connector, Full<Bytes>>,
}

impl LoginTransport for LoginClient {
    fn post_json<'a>(
        &'a self,
        url: &'a Url,
        body: Bytes,
        limit: usize,
    ) -> BoxFuture<'a, Result<LoginAnswer, LoginTransportError>> {
        async move {
            let uri: Uri = url.as_str().parse().map_err(|_| {
                LoginTransportError::Unreachable("the auth URL is not a valid HTTP URI".to_owned())
            })?;
            let mut request = Request::new(Full::new(body));
            *request.method_mut() = http::Method::POST;
            *request.uri_mut() = uri;
            let headers = request.headers_mut();
            headers.insert(header::ACCEPT, APPLICATION_JSON);
            headers.insert(header::CONTENT_TYPE, APPLICATION_JSON);
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| LoginTransportError::Unreachable(describe(&error)))?;
            let status = response.status();
            let retry_after = retry_after(response.headers());
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|error| {
                    if error.downcast_ref::<LengthLimitError>().is_some() {
                        LoginTransportError::TooLarge(limit)
                    } else {
                        LoginTransportError::Unreachable(format!(
                            "the answer's body could not be read: {}",
                            error::chain(error.as_ref())
                        ))
                    }
                })?
                .to_bytes();
            Ok(LoginAnswer {
                status,
                retry_after,
                body,
            })
        }
        .boxed()
    }
}

const APPLICATION_JSON: http::HeaderValue = http::HeaderValue::from_static("application/json");

/// `Retry-After` in whole seconds (the form auth endpoints send with 429 and 503).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A client error as a sentence, without the URL: the egress failure when the tunnel
/// broke (it names the proxy), otherwise the category and the underlying causes.
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    if let Some(egress) = EgressError::find(error) {
        return egress.to_string();
    }
    let category = if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match std::error::Error::source(error) {
        Some(cause) => format!("{category}: {}", error::chain(cause)),
        None => category.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_whole_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            header::RETRY_AFTER,
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
