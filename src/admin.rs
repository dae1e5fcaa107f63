//! The admin listener: `/healthz` (liveness), `/readyz` (holds a valid token for every
//! credential a route uses, and not shutting down), `POST /refresh` and `/metrics`.
//!
//! Separate from the proxy port so that probes and scrapes never compete with client
//! traffic for `max_concurrency`, and so the admin port can stay private.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::server::AppState;
use crate::token::CredentialStatus;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/refresh", post(refresh))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"status": "ok"})),
    )
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    shutting_down: bool,
    credentials: Vec<CredentialStatus>,
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let shutting_down = state.shutting_down.load(Ordering::SeqCst);
    let credentials: Vec<CredentialStatus> = state
        .routes
        .credentials()
        .values()
        .map(|credential| credential.status())
        .collect();
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
    };
    (status, axum::Json(body)).into_response()
}

#[derive(Deserialize)]
struct RefreshQuery {
    credential: Option<String>,
}

#[derive(Serialize)]
struct Refreshed {
    credential: String,
    generation: u64,
    expires_at: Option<String>,
}

#[derive(Serialize)]
struct AdminError {
    error: &'static str,
    message: String,
}

/// Forces a token refresh for one credential (`?credential=NAME`) or for all, through
/// each credential's single flight.
async fn refresh(
    State(state): State<Arc<AppState>>,
    Query(query): Query<RefreshQuery>,
) -> Response {
    let credentials = state.routes.credentials();
    let selected: Vec<_> = match &query.credential {
        Some(name) => match credentials.get(name) {
            Some(credential) => vec![credential.clone()],
            None => {
                let body = AdminError {
                    error: "unknown_credential",
                    message: format!("no credential named {name:?} is used by a route"),
                };
                return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
            }
        },
        None => credentials.values().cloned().collect(),
    };
    let mut refreshed = Vec::with_capacity(selected.len());
    for credential in selected {
        match credential.force_refresh().await {
            Ok(token) => refreshed.push(Refreshed {
                credential: credential.name().to_owned(),
                generation: token.generation,
                expires_at: token
                    .expires_at()
                    .map(|at| humantime::format_rfc3339_seconds(at).to_string()),
            }),
            Err(error) => {
                let body = AdminError {
                    error: "refresh_failed",
                    message: format!("credential {}: {error}", credential.name()),
                };
                return (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response();
            }
        }
    }
    match refreshed.len() {
        1 => axum::Json(refreshed.remove(0)).into_response(),
        _ => axum::Json(refreshed).into_response(),
    }
}

async fn metrics() -> Response {
    let text = crate::telemetry::metrics_handle().render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
