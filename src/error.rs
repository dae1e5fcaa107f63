//! The proxy's own answers: every status code and JSON error body of docs/DESIGN.md's error
//! table is decided here and nowhere else.
//!
//! Upstream responses (a 401 after the retry included) never pass through this module:
//! they are IntelePeer's answers and go back to the client unchanged. Messages are
//! fixed sentences or carry only non-secret facts (a route name, a limit, a duration).

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::request_id::{self, RequestId};

/// `error` and its sources, joined with `": "` ("client error (Connect): tcp connect
/// error: Connection refused"): the one way a chain of causes is written out.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Everything the proxy itself may answer instead of an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("this path is not allowed through the proxy")]
    PathNotAllowed,
    /// A browser request on the proxy port (an `Origin` not in `access.allow_origins`,
    /// or `Sec-Fetch-Site` other than `none`): a web page must not be able to act with
    /// the account's token.
    #[error(
        "refused: a browser request from a web page (Origin or Sec-Fetch-Site); the proxy \
         serves server-side clients, and only the origins in access.allow_origins"
    )]
    BrowserRequest,
    /// A `Host` (or `:authority`) that is not one of the proxy's own names: what a page
    /// on a DNS-rebound name sends.
    #[error(
        "refused: this Host is not one of the proxy's names (loopback, its listen address, \
         access.allow_hosts)"
    )]
    MisdirectedRequest,
    #[error("no route matches this path")]
    NoRoute,
    #[error("a valid proxy key is required (Proxy-Authorization: Bearer <key>)")]
    ProxyAuthRequired,
    /// `CONNECT` or `TRACE`: a tunnel would carry the token wherever the client points
    /// it, and a `TRACE` answer echoes the request, injected token included.
    #[error("CONNECT and TRACE are never forwarded")]
    MethodNotAllowed,
    /// The client stalled: no next chunk of its request body within `client_timeout`.
    #[error("the request body stalled for longer than {0:?}")]
    ClientTimeout(Duration),
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the upstream could not be reached or gave a bad response")]
    UpstreamUnreachable,
    /// The tunnel through the egress proxy failed: says which proxy (`host:port`,
    /// never its credentials) and what it did.
    #[error("the upstream could not be reached: the egress proxy {proxy} {reason}")]
    EgressUnreachable { proxy: String, reason: String },
    #[error("no valid token is available for credential {credential}; try again later")]
    TokenUnavailable {
        credential: String,
        retry_after: Duration,
    },
    #[error("the proxy has too many requests in flight; try again shortly")]
    Overloaded,
    #[error("the proxy is shutting down; retry on another instance")]
    ShuttingDown,
    #[error("the upstream sent no response within {0:?}")]
    UpstreamTimeout(Duration),
    /// Admin `/refresh` named a credential that no route uses.
    #[error("no credential named {0:?} is used by a route")]
    UnknownCredential(String),
    /// Admin `/refresh`: the login failed. `reason` carries no secret.
    #[error("credential {credential}: {reason}")]
    RefreshFailed { credential: String, reason: String },
    /// Admin `/refresh` from a page of another site (`Origin` or `Sec-Fetch-Site`):
    /// a web page must not be able to make the proxy log in.
    #[error("refused: the request comes from another site's page (Origin or Sec-Fetch-Site)")]
    CrossSite,
    /// A request with this `Idempotency-Key` is still in flight.
    #[error("a request with this Idempotency-Key is still in progress; retry shortly")]
    IdempotencyInProgress,
    /// The key was used, but its answer was too large to keep for repeats.
    #[error("this Idempotency-Key was used and its answer was too large to keep")]
    IdempotencyAnswerNotKept,
    /// The key was used for another method, path, query or body.
    #[error("this Idempotency-Key was used for another method, path, query or body")]
    IdempotencyKeyMismatch,
    /// The shared store is unreachable and `idempotency.on_store_down = "reject"`.
    #[error("idempotent requests cannot be served: the shared store is unreachable")]
    IdempotencyUnavailable,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: String,
    request_id: &'a str,
}

/// `Retry-After` sent with `503 overloaded`, `503 shutting_down` and
/// `409 idempotency_in_progress`.
const SHORT_RETRY_AFTER: HeaderValue = HeaderValue::from_static("1");

const CLOSE: HeaderValue = HeaderValue::from_static("close");

/// `Allow` sent with `405 method_not_allowed`: the methods of RFC 9110 that the proxy
/// forwards, and PATCH. Any other method passes through too, but cannot be listed.
const ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH");

impl ProxyError {
    /// The status code and the stable `error` code of docs/DESIGN.md's table.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::PathNotAllowed => (StatusCode::FORBIDDEN, "path_not_allowed"),
            Self::BrowserRequest => (StatusCode::FORBIDDEN, "cross_site_request"),
            Self::MisdirectedRequest => (StatusCode::MISDIRECTED_REQUEST, "misdirected_request"),
            Self::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            Self::ProxyAuthRequired => (
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "proxy_auth_required",
            ),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::ClientTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "client_timeout"),
            Self::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::UpstreamUnreachable | Self::EgressUnreachable { .. } => {
                (StatusCode::BAD_GATEWAY, "upstream_unreachable")
            }
            Self::TokenUnavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "token_unavailable"),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Self::UpstreamTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            Self::UnknownCredential(_) => (StatusCode::NOT_FOUND, "unknown_credential"),
            Self::RefreshFailed { .. } => (StatusCode::BAD_GATEWAY, "refresh_failed"),
            Self::CrossSite => (StatusCode::FORBIDDEN, "cross_site_refused"),
            Self::IdempotencyInProgress => (StatusCode::CONFLICT, "idempotency_in_progress"),
            Self::IdempotencyAnswerNotKept => (StatusCode::CONFLICT, "idempotency_answer_not_kept"),
            Self::IdempotencyKeyMismatch => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_mismatch")
            }
            Self::IdempotencyUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "idempotency_unavailable")
            }
        }
    }

    /// The JSON response, carrying the request's id.
    pub fn into_response_for(self, request_id: &RequestId) -> Response {
        let (status, code) = self.status_and_code();
        let body = ErrorBody {
            error: code,
            message: self.to_string(),
            request_id: request_id.as_str(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(request_id::HEADER, request_id.header_value());
        match self {
            Self::ProxyAuthRequired => {
                headers.insert(
                    header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
            }
            Self::TokenUnavailable { retry_after, .. } => {
                // Whole seconds, at least one: a client must not spin.
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Self::MethodNotAllowed => {
                headers.insert(header::ALLOW, ALLOW);
            }
            Self::Overloaded | Self::IdempotencyInProgress => {
                headers.insert(header::RETRY_AFTER, SHORT_RETRY_AFTER);
            }
            Self::ShuttingDown => {
                headers.insert(header::RETRY_AFTER, SHORT_RETRY_AFTER);
                headers.insert(header::CONNECTION, CLOSE);
            }
            // The rest of the body is read and dropped for a while (proxy::body),
            // then the connection closes, as nginx does after a 413.
            Self::BodyTooLarge { .. } => {
                headers.insert(header::CONNECTION, CLOSE);
            }
            // The request is abandoned: the rest of a stalled body is not waited for.
            Self::ClientTimeout(_) => {
                headers.insert(header::CONNECTION, CLOSE);
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[test]
    fn each_answer_carries_the_headers_its_client_needs() {
        let id = RequestId::generate();
        let header = |error: ProxyError, name: header::HeaderName| {
            error
                .into_response_for(&id)
                .headers()
                .get(name)
                .map(|value| value.to_str().expect("ascii").to_owned())
        };
        let close = Some("close".to_owned());
        assert_eq!(
            header(ProxyError::Overloaded, header::RETRY_AFTER).as_deref(),
            Some("1")
        );
        assert_eq!(header(ProxyError::Overloaded, header::CONNECTION), None);
        assert_eq!(
            header(ProxyError::ShuttingDown, header::RETRY_AFTER).as_deref(),
            Some("1")
        );
        assert_eq!(header(ProxyError::ShuttingDown, header::CONNECTION), close);
        assert_eq!(
            header(ProxyError::BodyTooLarge { limit: 1 }, header::CONNECTION),
            close
        );
        assert_eq!(
            header(
                ProxyError::ClientTimeout(Duration::from_secs(1)),
                header::CONNECTION
            ),
            close
        );
        assert!(
            header(ProxyError::MethodNotAllowed, header::ALLOW)
                .is_some_and(|allow| allow.contains("GET") && !allow.contains("TRACE"))
        );
        assert_eq!(header(ProxyError::NoRoute, header::CONNECTION), None);
        assert_eq!(header(ProxyError::NoRoute, header::RETRY_AFTER), None);
    }

    #[tokio::test]
    async fn error_body_has_code_message_and_request_id() {
        let id = RequestId::generate();
        let response = ProxyError::NoRoute.into_response_for(&id);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = body_json(response).await;
        assert_eq!(body["error"], "no_route");
        assert_eq!(body["request_id"], id.as_str());
        assert!(!body["message"].as_str().expect("message").is_empty());
    }

    #[tokio::test]
    async fn token_unavailable_carries_whole_second_retry_after() {
        let error = ProxyError::TokenUnavailable {
            credential: "default".into(),
            retry_after: Duration::from_millis(1500),
        };
        let response = error.into_response_for(&RequestId::generate());
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    #[tokio::test]
    async fn method_not_allowed_lists_the_forwarded_methods_without_connect_or_trace() {
        let response = ProxyError::MethodNotAllowed.into_response_for(&RequestId::generate());
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        let allow = response.headers()[header::ALLOW].to_str().expect("ascii");
        for method in allow.split(", ") {
            let method = http::Method::from_bytes(method.as_bytes()).expect("a method");
            assert_ne!(method, http::Method::CONNECT);
            assert_ne!(method, http::Method::TRACE);
        }
        assert!(allow.contains("GET") && allow.contains("PATCH"), "{allow}");
        assert_eq!(body_json(response).await["error"], "method_not_allowed");
    }

    #[test]
    fn proxy_auth_required_asks_for_bearer() {
        let response = ProxyError::ProxyAuthRequired.into_response_for(&RequestId::generate());
        assert_eq!(response.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert_eq!(response.headers()[header::PROXY_AUTHENTICATE], "Bearer");
    }
}
