//! The control paths under `/__sim/`, which the real IntelePeer does not have: counters
//! and switches for tests, reachable with `curl` and no token. Bodies are read as JSON
//! whatever their `Content-Type`, so `curl -X PUT -d '"down"'` works.
//!
//! - `GET  /__sim/counters` → [`Counters`](super::Counters) as JSON
//! - `POST /__sim/reset` → zero the counters
//! - `POST /__sim/revoke` → revoke every token issued so far
//! - `PUT  /__sim/auth-mode` with an [`AuthMode`] (`"down"`, `{"slow": 1500}`)
//! - `PUT  /__sim/latency` with `{"ms": N}`
//! - `PUT  /__sim/answer-delay` with `{"ms": N}` (an SMS send is counted, then its
//!   answer waits)
//! - `GET  /__sim/sends` → SMS sends per `(from, to, text)`:
//!   `[{"from": ..., "to": ..., "text": ..., "count": N}]`
//! - `PUT  /__sim/token-ttl` with `{"secs": N}` or `{"ms": N}`
//! - `PUT  /__sim/numbers` with `["+15550001111", ...]` (the account's numbers; `[]`
//!   accepts any `from`)
//!
//! Changes answer `204 No Content`; a bad body `400` with a JSON error.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::{AuthMode, Simulator, json_error};

/// The control router, to be nested under `/__sim`.
pub(super) fn router() -> Router<Simulator> {
    Router::new()
        .route("/counters", get(counters))
        .route("/reset", post(reset))
        .route("/revoke", post(revoke))
        .route("/auth-mode", put(set_auth_mode))
        .route("/latency", put(set_latency))
        .route("/answer-delay", put(set_answer_delay))
        .route("/sends", get(sends))
        .route("/token-ttl", put(set_token_ttl))
        .route("/numbers", put(set_numbers))
        .fallback(not_found)
}

async fn counters(State(sim): State<Simulator>) -> Response {
    axum::Json(sim.counters()).into_response()
}

async fn reset(State(sim): State<Simulator>) -> StatusCode {
    sim.reset_counters();
    StatusCode::NO_CONTENT
}

async fn revoke(State(sim): State<Simulator>) -> StatusCode {
    sim.revoke_all();
    StatusCode::NO_CONTENT
}

async fn set_auth_mode(State(sim): State<Simulator>, body: Bytes) -> Response {
    match parse::<AuthMode>(&body) {
        Ok(mode) => {
            sim.set_auth_mode(mode);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => bad_body(&err),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyBody {
    ms: u64,
}

async fn set_latency(State(sim): State<Simulator>, body: Bytes) -> Response {
    match parse::<LatencyBody>(&body) {
        Ok(LatencyBody { ms }) => {
            sim.set_latency(Duration::from_millis(ms));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => bad_body(&err),
    }
}

async fn set_answer_delay(State(sim): State<Simulator>, body: Bytes) -> Response {
    match parse::<LatencyBody>(&body) {
        Ok(LatencyBody { ms }) => {
            sim.set_answer_delay(Duration::from_millis(ms));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => bad_body(&err),
    }
}

async fn sends(State(sim): State<Simulator>) -> Response {
    axum::Json(sim.sends()).into_response()
}

/// `{"secs": N}` or `{"ms": N}`, exactly one of them.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenTtlBody {
    secs: Option<u64>,
    ms: Option<u64>,
}

async fn set_token_ttl(State(sim): State<Simulator>, body: Bytes) -> Response {
    let ttl = match parse::<TokenTtlBody>(&body) {
        Ok(TokenTtlBody {
            secs: Some(secs),
            ms: None,
        }) => Duration::from_secs(secs),
        Ok(TokenTtlBody {
            secs: None,
            ms: Some(ms),
        }) => Duration::from_millis(ms),
        Ok(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "give exactly one of {\"secs\": N} or {\"ms\": N}",
            );
        }
        Err(err) => return bad_body(&err),
    };
    sim.set_token_ttl(ttl);
    StatusCode::NO_CONTENT.into_response()
}

async fn set_numbers(State(sim): State<Simulator>, body: Bytes) -> Response {
    match parse::<Vec<String>>(&body) {
        Ok(numbers) => {
            sim.set_numbers(numbers);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => bad_body(&err),
    }
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such control path")
}

/// Parse a control body, whatever its `Content-Type`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(body)
}

/// A 400 quoting the parse error (control bodies hold no secret).
fn bad_body(err: &serde_json::Error) -> Response {
    json_error(StatusCode::BAD_REQUEST, &format!("bad body: {err}"))
}
