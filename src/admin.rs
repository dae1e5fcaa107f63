//! The admin listener: `/healthz` (liveness), `/readyz` (holds a valid token for every
//! credential a route uses, and not shutting down), `POST /refresh` (refused when a
//! page of another site sent it) and `/metrics`.
//!
//! Separate from the proxy port so that probes and scrapes never compete with client
//! traffic for `max_concurrency`, and so the admin port can stay private. It is given
//! narrow handles (the credential registry, the shutdown flag, the metrics handle),
//! never the application state; its error answers come from [`ProxyError`].

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};

use crate::error::ProxyError;
use crate::request_id::RequestId;
use crate::shutdown::ShutdownFlag;
use crate::token::store::{Store, StoreStatus};
use crate::token::{Credential, CredentialStatus, Registry};

/// What the admin endpoints may see and do.
#[derive(Debug, Clone)]
pub(crate) struct Handles {
    /// Readiness of every credential, and the forced refresh.
    pub credentials: Registry,
    /// The token store's health, shown (never judged) by readiness.
    pub store: Store,
    /// Set once shutdown starts: readiness turns 503.
    pub shutdown: ShutdownFlag,
    /// Renders `/metrics`.
    pub metrics: &'static PrometheusHandle,
}

pub(crate) fn router(handles: Handles) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/refresh", post(refresh))
        .route("/metrics", get(metrics))
        .with_state(handles)
}

async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"status": "ok"})),
    )
}

/// The `/readyz` body.
#[derive(Serialize)]
struct Readiness {
    ready: bool,
    shutting_down: bool,
    credentials: Vec<CredentialStatus>,
    /// A shared store's state; an unreachable store alone never makes readiness 503.
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<StoreStatus>,
}

async fn readyz(State(handles): State<Handles>) -> Response {
    let shutting_down = handles.shutdown.is_set();
    let credentials = handles.credentials.statuses();
    let ready = !shutting_down && credentials.iter().all(|status| status.ready);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        shutting_down,
        credentials,
        store: handles.store.status(),
    };
    (status, axum::Json(body)).into_response()
}

#[derive(Deserialize)]
struct RefreshQuery {
    credential: Option<String>,
}

/// The `/refresh` answer: always this one object.
#[derive(Serialize)]
struct Refreshed<'a> {
    credential: &'a str,
    generation: u64,
    /// RFC 3339; `null` for a static credential (it has no known expiry).
    expires_at: Option<String>,
}

/// Forces a token refresh for `?credential=NAME`, or for the only credential in use
/// when there is just one, through that credential's single flight.
async fn refresh(
    State(handles): State<Handles>,
    Query(query): Query<RefreshQuery>,
    headers: HeaderMap,
) -> Response {
    let request_id = RequestId::from_headers(&headers);
    if let Err(error) = refuse_cross_site(&headers) {
        return error.into_response_for(&request_id);
    }
    match refresh_one(&handles.credentials, query.credential.as_deref()).await {
        Ok(response) => response,
        Err(error) => error.into_response_for(&request_id),
    }
}

/// Refuses what a page of another site could make a browser send: a form, `text/plain`
/// or bodiless POST needs no CORS preflight, so without this any web page open on a
/// machine that can reach the admin port could make the proxy log in.
///
/// - `Sec-Fetch-Site` other than `same-origin` or `none` (a typed URL) → refused.
/// - `Origin`, when present, must be the admin listener's own: `http://` and the
///   `Host` the request came to, and that host an IP address or `localhost` (a name
///   could be one an attacker made resolve to this address: DNS rebinding). One
///   `Origin` only; `null` is nobody's.
///
/// curl, kubectl port-forward and scripts send neither header and are let in.
fn refuse_cross_site(headers: &HeaderMap) -> Result<(), ProxyError> {
    const SEC_FETCH_SITE: &str = "sec-fetch-site";
    if let Some(site) = headers.get(SEC_FETCH_SITE) {
        let site = site.as_bytes();
        if !site.eq_ignore_ascii_case(b"same-origin") && !site.eq_ignore_ascii_case(b"none") {
            return Err(ProxyError::CrossSite);
        }
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return Ok(());
    };
    let own = |origin: &[u8]| -> Option<()> {
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let origin = std::str::from_utf8(origin).ok()?;
        let authority = origin
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
            .and_then(|_| origin.get(7..))?;
        let named = http::uri::Authority::try_from(host).ok()?;
        let is_address = named.host().eq_ignore_ascii_case("localhost")
            || named
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok();
        (is_address && authority.eq_ignore_ascii_case(host)).then_some(())
    };
    match (own(origin.as_bytes()), origins.next()) {
        (Some(()), None) => Ok(()),
        _ => Err(ProxyError::CrossSite),
    }
}

async fn refresh_one(credentials: &Registry, name: Option<&str>) -> Result<Response, ProxyError> {
    let credential = select(credentials, name)?;
    let token = credential
        .force_refresh()
        .await
        .map_err(|error| ProxyError::RefreshFailed {
            credential: credential.name().to_owned(),
            reason: error.to_string(),
        })?;
    let body = Refreshed {
        credential: credential.name(),
        generation: token.generation,
        expires_at: token.expires_at().map(crate::telemetry::rfc3339),
    };
    Ok(axum::Json(body).into_response())
}

fn select<'a>(credentials: &'a Registry, name: Option<&str>) -> Result<&'a Credential, ProxyError> {
    match name {
        Some(name) => credentials
            .get(name)
            .ok_or_else(|| ProxyError::UnknownCredential(name.to_owned())),
        None => {
            let mut all = credentials.iter();
            match (all.next(), all.next()) {
                (Some(only), None) => Ok(only),
                _ => Err(ProxyError::BadRequest(
                    "several credentials are in use: name one with ?credential=NAME",
                )),
            }
        }
    }
}

async fn metrics(State(handles): State<Handles>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handles.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, http::HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn tools_without_origin_and_same_origin_pages_are_let_in() {
        for allowed in [
            headers(&[("host", "127.0.0.1:9901")]),
            headers(&[]),
            headers(&[
                ("host", "localhost:9901"),
                ("origin", "http://localhost:9901"),
            ]),
            headers(&[
                ("host", "127.0.0.1:9901"),
                ("origin", "http://127.0.0.1:9901"),
            ]),
            headers(&[("host", "[::1]:9901"), ("origin", "http://[::1]:9901")]),
            headers(&[("host", "10.1.2.3:9901"), ("sec-fetch-site", "same-origin")]),
            headers(&[("host", "10.1.2.3:9901"), ("sec-fetch-site", "none")]),
        ] {
            assert!(refuse_cross_site(&allowed).is_ok(), "{allowed:?}");
        }
    }

    #[test]
    fn other_origins_and_cross_or_same_site_fetches_are_refused() {
        for refused in [
            headers(&[
                ("host", "127.0.0.1:9901"),
                ("origin", "http://evil.example"),
            ]),
            headers(&[("host", "127.0.0.1:9901"), ("origin", "null")]),
            headers(&[
                ("host", "127.0.0.1:9901"),
                ("origin", "https://127.0.0.1:9901"),
            ]),
            headers(&[
                ("host", "127.0.0.1:9901"),
                ("origin", "http://127.0.0.1:9902"),
            ]),
            headers(&[("origin", "http://127.0.0.1:9901")]),
            // DNS rebinding: a name of the attacker's now resolving to this address.
            headers(&[
                ("host", "evil.example:9901"),
                ("origin", "http://evil.example:9901"),
            ]),
            headers(&[
                ("host", "127.0.0.1:9901"),
                ("origin", "http://127.0.0.1:9901"),
                ("origin", "http://evil.example"),
            ]),
            headers(&[("host", "127.0.0.1:9901"), ("sec-fetch-site", "cross-site")]),
            headers(&[("host", "127.0.0.1:9901"), ("sec-fetch-site", "same-site")]),
        ] {
            assert!(
                matches!(refuse_cross_site(&refused), Err(ProxyError::CrossSite)),
                "{refused:?}"
            );
        }
    }
}
