//! The simulated auth endpoints: `POST /_rest/v4/authenticate` and
//! `POST /_rest/v4/app/sms/authenticate/get_portal_auth_token`, under the current
//! [`AuthMode`]. Never logs the body: it carries the password.

use axum::body::{Body, to_bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{AuthMode, MAX_INJECTED_DELAY, State, json_error, unauthorized};

/// The auth paths IntelePeer's documentation and samples show.
pub(super) const AUTH_PATHS: [&str; 2] = [
    "/_rest/v4/authenticate",
    "/_rest/v4/app/sms/authenticate/get_portal_auth_token",
];

/// Largest login body read: `{"username","password"}` is a few hundred bytes.
const LOGIN_BODY_LIMIT: usize = 64 * 1024;

/// The login body.
#[derive(serde::Deserialize)]
struct Login {
    username: String,
    password: String,
}

/// Answer a login under the current auth mode; counted whatever the outcome.
pub(super) async fn authenticate(state: &State, body: Body) -> Response {
    state.counters.auth_calls.fetch_add(1, Ordering::Relaxed);
    match state.auth_mode() {
        AuthMode::Ok => {}
        AuthMode::Slow(delay_ms) => {
            tokio::time::sleep(Duration::from_millis(delay_ms).min(MAX_INJECTED_DELAY)).await;
        }
        AuthMode::Down => {
            return with_retry_after(
                json_error(StatusCode::SERVICE_UNAVAILABLE, "service unavailable"),
                HeaderValue::from_static("1"),
            );
        }
        AuthMode::Error => {
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error");
        }
        AuthMode::Garbage => {
            return (
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body><h1>Down for maintenance</h1></body></html>",
            )
                .into_response();
        }
        AuthMode::EmptyToken => {
            return axum::Json(serde_json::json!({"token": ""})).into_response();
        }
        AuthMode::RateLimited => {
            return with_retry_after(
                json_error(StatusCode::TOO_MANY_REQUESTS, "too many requests"),
                HeaderValue::from_static("2"),
            );
        }
        AuthMode::RateLimitedFor(seconds) => {
            return with_retry_after(
                json_error(StatusCode::TOO_MANY_REQUESTS, "too many requests"),
                HeaderValue::from(seconds),
            );
        }
        AuthMode::Reject => return unauthorized(),
    }
    let Ok(body) = to_bytes(body, LOGIN_BODY_LIMIT).await else {
        return unauthorized();
    };
    let Ok(login) = serde_json::from_slice::<Login>(&body) else {
        return unauthorized();
    };
    if !state.credentials_match(&login.username, &login.password) {
        return unauthorized();
    }
    let token = state.issue_token(&login.username);
    axum::Json(serde_json::json!({"token": token})).into_response()
}

fn with_retry_after(mut response: Response, seconds: HeaderValue) -> Response {
    response.headers_mut().insert(header::RETRY_AFTER, seconds);
    response
}
