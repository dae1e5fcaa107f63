//! The admin listener: `/healthz` (liveness), `/readyz` (holds a valid token for every
//! credential a route uses, and not shutting down), `POST /refresh` and `/metrics`.
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
pub struct Handles {
    /// Readiness of every credential, and the forced refresh.
    pub credentials: Registry,
    /// The token store's health, shown (never judged) by readiness.
    pub store: Store,
    /// Set once shutdown starts: readiness turns 503.
    pub shutdown: ShutdownFlag,
    /// Renders `/metrics`.
    pub metrics: &'static PrometheusHandle,
}

pub fn router(handles: Handles) -> Router {
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
    match refresh_one(&handles.credentials, query.credential.as_deref()).await {
        Ok(response) => response,
        Err(error) => error.into_response_for(&request_id),
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
