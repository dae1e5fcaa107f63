//! The loop that keeps a session token fresh (fetch when the schedule says, wake when
//! a token was stored out of band, converge when the shared store comes back), and
//! the record of each flight's outcome: metrics and one log line.

use std::time::Duration;

use tokio::time::Instant;

use super::Credential;
use crate::telemetry;
use crate::token::schedule::{self, RefreshReason};
use crate::token::slot::{FetchedFrom, Token};
use crate::token::source::AuthError;

impl Credential {
    pub(super) fn record_stored(
        &self,
        token: &Token,
        origin: FetchedFrom,
        reason: RefreshReason,
        took: Duration,
    ) {
        telemetry::token_refreshed(
            self.name(),
            reason.as_str(),
            origin.as_str(),
            token.expires_at(),
            took,
        );
        tracing::info!(
            credential = self.name(),
            generation = token.generation,
            fleet_generation = token.fleet_generation,
            expires_at = token
                .expires_at()
                .map_or_else(|| "never".to_owned(), telemetry::rfc3339),
            reason = reason.as_str(),
            source = origin.as_str(),
            duration_ms = took.as_millis() as u64,
            "token stored"
        );
    }

    pub(super) fn record_failure(&self, error: &AuthError, reason: RefreshReason, took: Duration) {
        let now = self.inner.clock.now();
        let mut state = self.lock_state();
        let health = &mut state.health;
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        let delay = schedule::backoff(
            health.consecutive_failures,
            error.retry_after(),
            self.inner.random.unit(),
        );
        health.retry_at = Some(now + delay);
        health.last_error = Some(error.to_string());
        if reason == RefreshReason::Rejected {
            health.rejected = true;
        }
        let failures = health.consecutive_failures;
        drop(state);
        telemetry::token_refresh_failed(self.name(), reason.as_str(), took);
        let still_valid = self
            .inner
            .slot
            .with(|token| token.is_some_and(|token| token.is_usable(now)));
        // One event either way; only its level and message differ.
        macro_rules! log_failure {
            ($level:ident, $message:literal) => {
                tracing::$level!(
                    credential = self.name(),
                    reason = reason.as_str(),
                    error = %error,
                    kind = error.kind(),
                    consecutive_failures = failures,
                    retry_in_ms = delay.as_millis() as u64,
                    still_valid,
                    $message
                )
            };
        }
        if matches!(error, AuthError::BadCredentials) {
            log_failure!(
                error,
                "login failed: IntelePeer rejected the username or password"
            );
        } else {
            log_failure!(warn, "token fetch failed");
        }
    }

    /// Keeps a session token fresh: fetches when [`schedule::next_fetch`] says, wakes
    /// early when a token is stored out of band, and converges on the fleet's token
    /// when the shared store comes back after an outage.
    pub(super) async fn refresh_loop(&self) {
        let mut recoveries = self.inner.store.recoveries();
        // A second look at the fleet's entry after a recovery: a replica that published
        // its token before another published a newer one adopts that one now, not at
        // its next refresh.
        let mut confirm_at: Option<Instant> = None;
        loop {
            let fetch = self.next_fetch();
            tokio::select! {
                () = tokio::time::sleep_until(fetch.at) => {
                    let _ = self.join_or_start(fetch.reason).await;
                }
                () = self.inner.changed.notified() => {}
                Ok(()) = recoveries.changed() => {
                    let _ = self.join_or_start(RefreshReason::Resync).await;
                    confirm_at = Some(self.inner.clock.now() + self.resync_confirm_delay());
                }
                () = sleep_until_some(confirm_at) => {
                    confirm_at = None;
                    let _ = self.join_or_start(RefreshReason::Resync).await;
                }
            }
        }
    }

    /// How long after a recovery the fleet's entry is read again: long enough for
    /// every replica to have seen the store come back (its health probe runs every
    /// 2 s), drawn so that replicas do not read in step.
    fn resync_confirm_delay(&self) -> Duration {
        RESYNC_CONFIRM.mul_f64(1.0 + self.inner.random.unit())
    }

    fn next_fetch(&self) -> schedule::Fetch {
        let retry_at = self.lock_state().health.retry_at;
        let times = self
            .inner
            .slot
            .with(|token| token.and_then(|token| token.times));
        schedule::next_fetch(times.as_ref(), retry_at, self.inner.clock.now())
    }
}

/// The shortest delay of the second look at the fleet's entry after a recovery (see
/// [`Credential::resync_confirm_delay`]).
pub(super) const RESYNC_CONFIRM: Duration = Duration::from_secs(5);

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
