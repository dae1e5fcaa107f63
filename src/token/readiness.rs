//! What `/readyz` shows of a credential, and the health record it is built from.
//!
//! A credential is ready while it holds a usable token and the upstream has not
//! rejected it (a forced refresh after a 401 failed). Never carries a token.

use std::time::SystemTime;

use serde::Serialize;
use tokio::time::Instant;

use super::slot::{Token, TokenGeneration};

/// The outcome of recent fetches, updated by the single flight.
#[derive(Debug, Default)]
pub(super) struct Health {
    pub consecutive_failures: u32,
    /// No login before this instant (backoff) unless an operator forces one.
    pub retry_at: Option<Instant>,
    pub last_error: Option<String>,
    pub last_refresh: Option<SystemTime>,
    /// The last refresh forced by a 401 failed: IntelePeer rejects the token.
    pub rejected: bool,
}

impl Health {
    /// After a successful fetch: failures, backoff and the rejection are cleared.
    pub(super) fn succeeded(&mut self, at: SystemTime) {
        *self = Self {
            last_refresh: Some(at),
            ..Self::default()
        };
    }

    /// Whether a login must wait for the backoff deadline.
    pub(super) fn backing_off(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| now < at)
    }
}

/// One credential in the `/readyz` body.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialStatus {
    pub name: String,
    pub kind: &'static str,
    pub ready: bool,
    /// The last forced refresh after a 401 failed: IntelePeer rejects the token.
    pub rejected: bool,
    pub generation: TokenGeneration,
    #[serde(serialize_with = "rfc3339_opt")]
    pub expires_at: Option<SystemTime>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_refresh: Option<SystemTime>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
}

impl CredentialStatus {
    pub(super) fn new(
        name: &str,
        kind: &'static str,
        token: Option<&Token>,
        health: &Health,
        now: Instant,
    ) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            ready: token.is_some_and(|token| token.is_usable(now)) && !health.rejected,
            rejected: health.rejected,
            generation: token.map_or(0, |token| token.generation),
            expires_at: token.and_then(Token::expires_at),
            last_refresh: health.last_refresh,
            last_error: health.last_error.clone(),
            consecutive_failures: health.consecutive_failures,
        }
    }
}

fn rfc3339_opt<S: serde::Serializer>(
    time: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serializer.serialize_some(&crate::telemetry::rfc3339(*time)),
        None => serializer.serialize_none(),
    }
}
