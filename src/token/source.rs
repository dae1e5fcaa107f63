//! Where tokens come from, behind [`TokenSource`]: IntelePeer's session login, or a
//! long-standing token given inline or in a file.
//!
//! Knows the auth endpoint's wire format and how each way it can fail is reported;
//! knows nothing of scheduling, stores or HTTP clients (a [`LoginTransport`] carries
//! the login).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::secret::{Secret, SecretFileError};

/// Largest auth response read: a token response is tiny.
const MAX_AUTH_RESPONSE: usize = 64 * 1024;

/// What kind of source a credential has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceKind {
    /// Logs in with a username and password; the token expires and is refreshed.
    #[default]
    Session,
    /// A long-standing token given to the proxy: never refreshed, never shared.
    Static,
}

impl SourceKind {
    /// `session` or `static`, as `/readyz` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Static => "static",
        }
    }
}

/// Where a credential's token comes from.
pub trait TokenSource: Send + Sync + fmt::Debug {
    fn kind(&self) -> SourceKind;

    /// Fetches a token: logs in, or reads the static token.
    fn fetch(&self) -> BoxFuture<'_, Result<SecretString, AuthError>>;

    /// Re-reads the source's secret file (the password, the static token) and says
    /// whether its content changed since the last read. `Ok(false)` without a file.
    fn reread(&self) -> Result<bool, SecretFileError>;
}

/// What a login needs from the network: one POST of a JSON body.
pub trait LoginTransport: Send + Sync + fmt::Debug {
    /// POSTs `body` (JSON) to `url` with `Accept`/`Content-Type: application/json`;
    /// reads at most `limit` bytes of the answer's body.
    fn post_json<'a>(
        &'a self,
        url: &'a Url,
        body: Bytes,
        limit: usize,
    ) -> BoxFuture<'a, Result<LoginAnswer, LoginTransportError>>;
}

/// The auth endpoint's answer.
#[derive(Debug)]
pub struct LoginAnswer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// Why a login request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LoginTransportError {
    /// Connect/TLS/tunnel/reset; the text names what failed (the egress proxy by
    /// host:port when it was the tunnel), never a secret.
    #[error("{0}")]
    Unreachable(String),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

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
    #[error("secret file {0}")]
    SecretFile(SecretFileError),
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
            Self::SecretFile(_) => "secret_file",
            Self::Interrupted => "interrupted",
        }
    }
}

/// A username/password login against an IntelePeer auth endpoint. The password is
/// read at every login when it comes from a file, so a rotated password is used by
/// the next login.
#[derive(Debug)]
pub struct SessionLogin {
    pub url: Url,
    pub username: String,
    pub password: Secret,
    /// Bounds the whole login, response body included.
    pub timeout: Duration,
    pub transport: std::sync::Arc<dyn LoginTransport>,
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

impl TokenSource for SessionLogin {
    fn kind(&self) -> SourceKind {
        SourceKind::Session
    }

    fn fetch(&self) -> BoxFuture<'_, Result<SecretString, AuthError>> {
        async move {
            match tokio::time::timeout(self.timeout, self.login()).await {
                Ok(result) => result,
                Err(_elapsed) => Err(AuthError::Timeout(self.timeout)),
            }
        }
        .boxed()
    }

    fn reread(&self) -> Result<bool, SecretFileError> {
        self.password.reread()
    }
}

impl SessionLogin {
    async fn login(&self) -> Result<SecretString, AuthError> {
        let password = self.password.current().map_err(AuthError::SecretFile)?;
        let body = serde_json::to_vec(&LoginBody {
            username: &self.username,
            password: password.secret.expose_secret(),
        })
        .map_err(|_| AuthError::Interrupted)?;
        let answer = self
            .transport
            .post_json(&self.url, Bytes::from(body), MAX_AUTH_RESPONSE)
            .await
            .map_err(|error| match error {
                LoginTransportError::Unreachable(why) => AuthError::Unreachable(why),
                LoginTransportError::TooLarge(_) => AuthError::TooLarge,
            })?;
        match answer.status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Err(AuthError::BadCredentials),
            status => {
                return Err(AuthError::Status {
                    status,
                    retry_after: answer.retry_after,
                });
            }
        }
        let parsed: LoginResponse =
            serde_json::from_slice(&answer.body).map_err(|_| AuthError::NotJson)?;
        match parsed.token {
            Some(token) if !token.trim().is_empty() => Ok(SecretString::from(token)),
            _ => Err(AuthError::MissingToken),
        }
    }
}

/// A long-standing token: given inline, or read from a file (re-read on every fetch,
/// keeping the last good value when it becomes unreadable).
#[derive(Debug)]
pub struct StaticSource(pub Secret);

impl TokenSource for StaticSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Static
    }

    fn fetch(&self) -> BoxFuture<'_, Result<SecretString, AuthError>> {
        let result = self
            .0
            .current()
            .map(|current| current.secret)
            .map_err(AuthError::SecretFile);
        async move { result }.boxed()
    }

    fn reread(&self) -> Result<bool, SecretFileError> {
        self.0.reread()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

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

    fn login(transport: std::sync::Arc<dyn LoginTransport>) -> SessionLogin {
        SessionLogin {
            url: Url::parse("https://auth.example/_rest/v4/authenticate").expect("url"),
            username: "api-user".to_owned(),
            password: Secret::Inline(SecretString::from("pw")),
            timeout: Duration::from_secs(5),
            transport,
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
        let transport = std::sync::Arc::new(FakeTransport {
            answer,
            posted: Mutex::new(Vec::new()),
        });
        let result = login(transport.clone()).fetch().await;
        let posted = transport.posted.lock().expect("not poisoned");
        assert_eq!(posted.len(), 1);
        let (url, body, limit) = &posted[0];
        assert_eq!(url, "https://auth.example/_rest/v4/authenticate");
        assert_eq!(
            body,
            &serde_json::json!({"username": "api-user", "password": "pw"})
        );
        assert_eq!(*limit, 64 * 1024, "a login answer is read up to 64 KiB");
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
        assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(AuthError::BadCredentials.retry_after(), None);
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
        let error = login(std::sync::Arc::new(SilentTransport))
            .fetch()
            .await
            .expect_err("timeout");
        assert!(matches!(error, AuthError::Timeout(limit) if limit == Duration::from_secs(5)));
    }

    #[test]
    fn each_source_and_failure_has_its_label() {
        assert_eq!(
            login(std::sync::Arc::new(SilentTransport)).kind(),
            SourceKind::Session
        );
        let fixed = StaticSource(Secret::Inline(SecretString::from("tok")));
        assert_eq!(fixed.kind(), SourceKind::Static);
        for (error, kind) in [
            (AuthError::BadCredentials, "bad_credentials"),
            (AuthError::Unreachable("down".to_owned()), "unreachable"),
            (AuthError::Timeout(Duration::from_secs(1)), "timeout"),
            (AuthError::NotJson, "bad_response"),
            (AuthError::AlreadyExpired, "expired"),
            (AuthError::Interrupted, "interrupted"),
        ] {
            assert_eq!(error.kind(), kind, "{error}");
        }
    }

    #[test]
    fn a_rewritten_password_or_token_file_is_seen_as_changed_once() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "first\n").expect("write");
        let file = || Secret::File(crate::secret::SecretFile::new(path.clone()));
        let mut session = login(std::sync::Arc::new(SilentTransport));
        session.password = file();
        let sources: [&dyn TokenSource; 2] = [&session, &StaticSource(file())];
        for source in sources {
            source.reread().expect("readable");
            assert!(
                !source.reread().expect("readable"),
                "{:?}: unchanged",
                source.kind()
            );
        }
        std::fs::write(&path, "second\n").expect("write");
        for source in sources {
            assert!(
                source.reread().expect("readable"),
                "{:?}: changed",
                source.kind()
            );
            assert!(
                !source.reread().expect("readable"),
                "{:?}: once",
                source.kind()
            );
        }
        let inline = StaticSource(Secret::Inline(SecretString::from("tok")));
        assert!(!inline.reread().expect("inline"));
    }
}
