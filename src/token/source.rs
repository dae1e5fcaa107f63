//! Where tokens come from: IntelePeer's session login, or a long-standing token given
//! inline or in a file.
//!
//! Knows the auth endpoint's wire format and how each way it can fail is reported;
//! knows nothing of scheduling (see `expiry` and `credential`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use http::{StatusCode, header};
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
    /// Logs in once and returns the token.
    pub async fn fetch(&self, client: &reqwest::Client) -> Result<SecretString, AuthError> {
        match tokio::time::timeout(self.timeout, self.fetch_unbounded(client)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(AuthError::Timeout(self.timeout)),
        }
    }

    async fn fetch_unbounded(&self, client: &reqwest::Client) -> Result<SecretString, AuthError> {
        let body = LoginBody {
            username: &self.username,
            password: self.password.expose_secret(),
        };
        let mut response = client
            .post(self.url.clone())
            .header(header::ACCEPT, "application/json")
            .json(&body)
            .send()
            .await
            .map_err(|error| AuthError::Unreachable(describe(&error)))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            return Err(AuthError::BadCredentials);
        }
        if status != StatusCode::OK {
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(AuthError::Status {
                status,
                retry_after,
            });
        }
        let mut bytes = BytesMut::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| AuthError::Unreachable(describe(&error)))?
        {
            if bytes.len() + chunk.len() > MAX_AUTH_RESPONSE {
                return Err(AuthError::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        let parsed: LoginResponse =
            serde_json::from_slice(&bytes).map_err(|_| AuthError::NotJson)?;
        match parsed.token {
            Some(token) if !token.trim().is_empty() => Ok(SecretString::from(token)),
            _ => Err(AuthError::MissingToken),
        }
    }
}

/// A reqwest error as a sentence: its category and underlying causes, without the
/// URL (reqwest's own Display includes it).
fn describe(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if error.is_connect() {
        "connection failed"
    } else if error.is_timeout() {
        "timed out"
    } else if error.is_body() || error.is_decode() {
        "bad response body"
    } else {
        "request failed"
    }
    .to_owned();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
