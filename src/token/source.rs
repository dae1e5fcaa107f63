//! Where tokens come from: IntelePeer's session login, or a long-standing token given
//! inline or in a file.
//!
//! Knows the auth endpoint's wire format and how each way it can fail is reported;
//! knows nothing of scheduling (see `expiry` and `credential`) nor of sockets: a login
//! goes through a [`LoginTransport`] given by the caller.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// Largest auth response read (DESIGN.md): a token response is tiny.
const MAX_AUTH_RESPONSE: usize = 64 * 1024;

/// Why a login (or a token file read) failed. Display texts carry no secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("bad credentials: the auth endpoint answered 401")]
    BadCredentials,
    #[error("auth endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("auth endpoint timed out after {0:?}")]
    Timeout(Duration),
    #[error("auth endpoint answered {status}")]
    Status {
        status: StatusCode,
        /// The endpoint's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    #[error("auth response is not JSON with a token")]
    NotJson,
    #[error("auth response has no token or an empty one")]
    MissingToken,
    #[error("the token is not a valid HTTP header value")]
    InvalidToken,
    #[error("auth response is larger than {MAX_AUTH_RESPONSE} bytes")]
    TooLarge,
    #[error("the token has already expired")]
    AlreadyExpired,
    #[error("token file {path}: {reason}")]
    TokenFile { path: PathBuf, reason: String },
    #[error("the token fetch was interrupted")]
    Interrupted,
}

impl AuthError {
    /// What the auth endpoint asked for with `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short, stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadCredentials => "bad_credentials",
            Self::Unreachable(_) => "unreachable",
            Self::Timeout(_) => "timeout",
            Self::Status { .. } => "bad_status",
            Self::NotJson | Self::MissingToken | Self::InvalidToken | Self::TooLarge => {
                "bad_response"
            }
            Self::AlreadyExpired => "expired",
            Self::TokenFile { .. } => "token_file",
            Self::Interrupted => "interrupted",
        }
    }
}

/// What a login needs from the network: one POST of a JSON body.
///
/// Implemented by the outbound client in `proxy` (TLS, `upstream.ca_file`, the egress
/// proxy), so that `token` never depends on `proxy`; tests can give a double.
pub trait LoginTransport: Send + Sync + std::fmt::Debug {
    /// POSTs `body` (JSON) to `url` with `Accept`/`Content-Type: application/json`;
    /// reads at most `limit` bytes of the answer's body.
    fn post_json<'a>(
        &'a self,
        url: &'a url::Url,
        body: bytes::Bytes,
        limit: usize,
    ) -> futures_util::future::BoxFuture<'a, Result<LoginAnswer, LoginTransportError>>;
}

/// The auth endpoint's answer, as far as a login looks at it.
#[derive(Debug)]
pub struct LoginAnswer {
    pub status: http::StatusCode,
    /// `Retry-After` in whole seconds, when the answer carried one.
    pub retry_after: Option<std::time::Duration>,
    pub body: bytes::Bytes,
}

/// Why a [`LoginTransport`] got no answer. Texts carry no secret.
#[derive(Debug, thiserror::Error)]
pub enum LoginTransportError {
    /// Connect/TLS/tunnel/reset; the text names what failed (the egress proxy by
    /// host:port when it was the tunnel), never a secret.
    #[error("{0}")]
    Unreachable(String),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// A username/password login against an IntelePeer auth endpoint.
#[derive(Debug, Clone)]
pub struct SessionLogin {
    pub url: Url,
    pub username: String,
    pub password: SecretString,
    /// Bounds the whole login, response body included.
    pub timeout: Duration,
}

#[derive(serde::Serialize)]
struct LoginBody<'a> {
    username: &'a str,
    password: &'a str,
}

#[derive(serde::Deserialize)]
struct LoginResponse {
    token: Option<String>,
}

impl SessionLogin {
    /// Logs in once through `transport` and returns the token.
    pub async fn fetch(&self, transport: &dyn LoginTransport) -> Result<SecretString, AuthError> {
        match tokio::time::timeout(self.timeout, self.fetch_unbounded(transport)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(AuthError::Timeout(self.timeout)),
        }
    }

    async fn fetch_unbounded(
        &self,
        transport: &dyn LoginTransport,
    ) -> Result<SecretString, AuthError> {
        let body = LoginBody {
            username: &self.username,
            password: self.password.expose_secret(),
        };
        let body = serde_json::to_vec(&body).expect("two strings always serialize as JSON");
        let answer = transport
            .post_json(&self.url, Bytes::from(body), MAX_AUTH_RESPONSE)
            .await
            .map_err(|error| match error {
                LoginTransportError::Unreachable(reason) => AuthError::Unreachable(reason),
                LoginTransportError::TooLarge(_) => AuthError::TooLarge,
            })?;
        if answer.status == StatusCode::UNAUTHORIZED {
            return Err(AuthError::BadCredentials);
        }
        if answer.status != StatusCode::OK {
            return Err(AuthError::Status {
                status: answer.status,
                retry_after: answer.retry_after,
            });
        }
        let parsed: LoginResponse =
            serde_json::from_slice(&answer.body).map_err(|_| AuthError::NotJson)?;
        match parsed.token {
            Some(token) if !token.trim().is_empty() => Ok(SecretString::from(token)),
            _ => Err(AuthError::MissingToken),
        }
    }
}

/// Reads a static token file: trimmed, non-empty.
pub async fn read_token_file(path: &Path) -> Result<SecretString, AuthError> {
    let file_error = |reason: String| AuthError::TokenFile {
        path: path.to_owned(),
        reason,
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|error| file_error(error.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(file_error("the file is empty".to_owned()));
    }
    Ok(SecretString::from(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures_util::FutureExt as _;
    use futures_util::future::BoxFuture;

    use super::*;

    /// Answers every login with what `answer` makes, recording what was posted.
    struct FakeTransport {
        answer: fn() -> Result<LoginAnswer, LoginTransportError>,
        posted: Mutex<Vec<(String, serde_json::Value, usize)>>,
    }

    impl std::fmt::Debug for FakeTransport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("FakeTransport")
        }
    }

    impl LoginTransport for FakeTransport {
        fn post_json<'a>(
            &'a self,
            url: &'a Url,
            body: Bytes,
            limit: usize,
        ) -> BoxFuture<'a, Result<LoginAnswer, LoginTransportError>> {
            let json = serde_json::from_slice(&body).expect("the login body is JSON");
            self.posted
                .lock()
                .expect("not poisoned")
                .push((url.to_string(), json, limit));
            let answer = (self.answer)();
            async move { answer }.boxed()
        }
    }

    /// Never answers: for the timeout.
    #[derive(Debug)]
    struct SilentTransport;

    impl LoginTransport for SilentTransport {
        fn post_json<'a>(
            &'a self,
            _: &'a Url,
            _: Bytes,
            _: usize,
        ) -> BoxFuture<'a, Result<LoginAnswer, LoginTransportError>> {
            futures_util::future::pending().boxed()
        }
    }

    fn login() -> SessionLogin {
        SessionLogin {
            url: Url::parse("https://auth.example/_rest/v4/authenticate").expect("url"),
            username: "api-user".to_owned(),
            password: SecretString::from("pw"),
            timeout: Duration::from_secs(5),
        }
    }

    fn answer(status: u16, body: &'static str) -> Result<LoginAnswer, LoginTransportError> {
        Ok(LoginAnswer {
            status: StatusCode::from_u16(status).expect("status"),
            retry_after: (status == 503).then_some(Duration::from_secs(7)),
            body: Bytes::from_static(body.as_bytes()),
        })
    }

    async fn fetch_with(
        answer: fn() -> Result<LoginAnswer, LoginTransportError>,
    ) -> Result<SecretString, AuthError> {
        let transport = FakeTransport {
            answer,
            posted: Mutex::new(Vec::new()),
        };
        let result = login().fetch(&transport).await;
        let posted = transport.posted.lock().expect("not poisoned");
        assert_eq!(posted.len(), 1);
        let (url, body, limit) = &posted[0];
        assert_eq!(url, "https://auth.example/_rest/v4/authenticate");
        assert_eq!(
            body,
            &serde_json::json!({"username": "api-user", "password": "pw"})
        );
        assert_eq!(*limit, MAX_AUTH_RESPONSE);
        result
    }

    #[tokio::test]
    async fn a_200_with_a_token_is_the_token() {
        let token = fetch_with(|| answer(200, r#"{"token":"abc"}"#))
            .await
            .expect("token");
        assert_eq!(token.expose_secret(), "abc");
    }

    #[tokio::test]
    async fn each_bad_answer_maps_to_its_auth_error() {
        let error = fetch_with(|| answer(401, "{}")).await.expect_err("401");
        assert!(matches!(error, AuthError::BadCredentials), "{error}");
        let error = fetch_with(|| answer(503, "")).await.expect_err("503");
        assert!(
            matches!(error, AuthError::Status { status, retry_after: Some(after) }
                if status == StatusCode::SERVICE_UNAVAILABLE && after == Duration::from_secs(7)),
            "{error}"
        );
        let error = fetch_with(|| answer(200, "<html>"))
            .await
            .expect_err("html");
        assert!(matches!(error, AuthError::NotJson), "{error}");
        let error = fetch_with(|| answer(200, r#"{"token":" "}"#))
            .await
            .expect_err("blank token");
        assert!(matches!(error, AuthError::MissingToken), "{error}");
        let error = fetch_with(|| Err(LoginTransportError::TooLarge(MAX_AUTH_RESPONSE)))
            .await
            .expect_err("too large");
        assert!(matches!(error, AuthError::TooLarge), "{error}");
        let error = fetch_with(|| {
            Err(LoginTransportError::Unreachable(
                "the egress proxy 127.0.0.1:3128 could not be reached".to_owned(),
            ))
        })
        .await
        .expect_err("unreachable");
        assert_eq!(
            error.to_string(),
            "auth endpoint unreachable: the egress proxy 127.0.0.1:3128 could not be reached"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_login_without_an_answer_times_out() {
        let error = login().fetch(&SilentTransport).await.expect_err("timeout");
        assert!(matches!(error, AuthError::Timeout(limit) if limit == Duration::from_secs(5)));
    }
}
