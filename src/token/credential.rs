//! One credential: its token slot and the single flight that replaces the token, with
//! the gates in front of it (backoff, the reauth interval). The fleet protocol that a
//! flight runs over the token store is in `fleet.rs`; the loop that keeps the token
//! fresh, and the record of each flight's outcome, in `refresh.rs`.
//!
//! Readers take one lock-free `ArcSwap` load. Writers (the refresh loop, a 401, the
//! admin `/refresh`, `SIGHUP`, a changed token file) all go through the single flight,
//! so at most one fetch per credential is in flight in this process and everyone who
//! needs a fresh token awaits that one result. With a shared store, the flight first
//! reads the fleet's entry (adopting a newer token instead of logging in) and takes
//! the fleet's lock before a login, so the whole fleet makes one login per refresh.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use http::HeaderValue;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::clock::{Clock, Random};
use super::readiness::{CredentialStatus, Health};
use super::schedule::{self, RefreshReason};
use super::slot::{FetchedFrom, FormatId, Slot, Token, TokenGeneration};
use super::source::{AuthError, SourceKind, TokenSource};
use super::store::Store;
use crate::config::HeaderFormat;
use crate::task::BackgroundTask;
use crate::telemetry::{self, trace};

/// The timing settings of one credential.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lifetime assumed when the token carries no JWT `exp`.
    pub token_ttl: Duration,
    /// Refresh this long before expiry (at most half the lifetime).
    pub refresh_before: Duration,
    /// At most one 401-caused login per this interval (fleet-wide with a shared store).
    pub min_reauth_interval: Duration,
    /// Bounds a login, and how long another replica's login is waited for.
    pub request_timeout: Duration,
}

/// Everything a credential is made of.
#[derive(Debug)]
pub struct CredentialParts {
    pub name: String,
    pub settings: Settings,
    /// The header formats of the routes using this credential; a [`Lease`] for a
    /// [`FormatId`] carries the token rendered with that format.
    pub formats: Vec<HeaderFormat>,
    pub source: Box<dyn TokenSource>,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub random: Arc<dyn Random>,
}

/// A token as handed to one request: the header value and the generation it came from.
#[derive(Debug, Clone)]
pub struct Lease {
    pub header: HeaderValue,
    pub generation: TokenGeneration,
}

/// Why a request could not get a token.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no valid token for credential {credential}")]
pub struct TokenUnavailable {
    pub credential: String,
    /// When the next login attempt is due.
    pub retry_after: Duration,
}

/// Why a refresh produced no token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A 401-caused login already happened (in the fleet) within the reauth interval.
    #[error("a 401-caused login happened less than min_reauth_interval ago")]
    Suppressed,
}

type FlightResult = Result<Arc<Token>, RefreshError>;
type Flight = Shared<BoxFuture<'static, FlightResult>>;

/// A shared handle on one credential.
#[derive(Debug, Clone)]
pub struct Credential {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    settings: Settings,
    formats: Vec<HeaderFormat>,
    source: Box<dyn TokenSource>,
    store: Store,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    slot: Slot,
    /// One lock for the flight and its gates, so that "is a fetch in flight, may one
    /// start" is decided in one step.
    state: Mutex<CredentialState>,
    /// Wakes the refresh loop when a token was stored out of band.
    changed: Notify,
    /// The runtime flights run on (the one that started the credential), so that a
    /// fetch outlives the request or worker that asked for it.
    runtime: OnceLock<Handle>,
}

#[derive(Debug, Default)]
struct CredentialState {
    flight: Option<Flight>,
    health: Health,
    /// No 401-caused login before this instant: this process made one, or the fleet's
    /// entry says another replica did, less than `min_reauth_interval` ago.
    reauth_closed_until: Option<Instant>,
    /// Fingerprints of the last tokens IntelePeer rejected here: never adopted from the
    /// store again (after an outage the fleet's entry may hold one of them).
    rejected: fleet::RejectedTokens,
}

/// A token obtained by a flight, and from where; `origin` is `None` when the flight
/// kept the current token (the fleet already agreed with it).
struct Obtained {
    token: Arc<Token>,
    origin: Option<FetchedFrom>,
}

impl Credential {
    pub fn new(parts: CredentialParts) -> Self {
        Self {
            inner: Arc::new(Inner {
                name: parts.name,
                settings: parts.settings,
                formats: parts.formats,
                source: parts.source,
                store: parts.store,
                clock: parts.clock,
                random: parts.random,
                slot: Slot::default(),
                state: Mutex::new(CredentialState::default()),
                changed: Notify::new(),
                runtime: OnceLock::new(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn is_static(&self) -> bool {
        self.inner.source.kind() == SourceKind::Static
    }

    /// Starts the first fetch now (so requests that arrive before it wait for this very
    /// fetch) and, for a session credential, the loop that keeps the token fresh.
    pub fn start(&self) -> BackgroundTask {
        let _ = self.inner.runtime.set(Handle::current());
        let _first = self.join_or_start(RefreshReason::Startup);
        let this = self.clone();
        if self.is_static() {
            BackgroundTask::spawn(async {})
        } else {
            BackgroundTask::spawn(async move { this.refresh_loop().await })
        }
    }

    /// The current token for `format` when it is usable: one `ArcSwap` load, no lock,
    /// no allocation.
    pub fn current(&self, format: FormatId) -> Option<Lease> {
        let now = self.inner.clock.now();
        self.inner.slot.with(|token| {
            let token = token?;
            token.is_usable(now).then(|| lease_of(token, format))
        })
    }

    /// A usable token, waiting up to `wait` for a fetch in flight. Fails at once when
    /// there is no usable token and no fetch in flight (the credential is backing off).
    pub async fn lease(&self, format: FormatId, wait: Duration) -> Result<Lease, TokenUnavailable> {
        if let Some(lease) = self.current(format) {
            return Ok(lease);
        }
        let in_flight = self.lock_state().flight.clone();
        if let Some(flight) = in_flight
            && let Ok(Ok(token)) = tokio::time::timeout(wait, flight).await
        {
            return Ok(lease_of(&token, format));
        }
        // The flight may have finished between the checks above.
        self.current(format).ok_or_else(|| self.unavailable())
    }

    /// After the upstream rejected generation `rejected` with a 401: a newer token if
    /// one is stored, otherwise the result of one 401-caused refresh (shared with every
    /// other request that saw the same 401). `None` means "return the 401 as it came":
    /// a static credential (nothing fresher exists), a credential backing off, the
    /// reauth interval still closed (the 401 is counted as suppressed), or a failed
    /// refresh.
    pub async fn lease_after_rejection(
        &self,
        format: FormatId,
        rejected: TokenGeneration,
        wait: Duration,
    ) -> Option<Lease> {
        if let Some(lease) = self.newer_than(format, rejected) {
            return Some(lease);
        }
        if self.is_static() {
            return None;
        }
        let flight = {
            let mut state = self.lock_state();
            // Compared again under the lock: a flight may have stored one meanwhile.
            if let Some(lease) = self.newer_than(format, rejected) {
                return Some(lease);
            }
            if let Some(token) = self.inner.slot.load()
                && token.generation == rejected
            {
                state.rejected.remember(token.fingerprint);
            }
            match state.flight.clone() {
                Some(flight) => flight,
                None => {
                    let now = self.inner.clock.now();
                    if state.health.backing_off(now) {
                        return None;
                    }
                    // With a shared store the flight still reads the fleet's entry
                    // first: another replica may hold a newer token.
                    if state.reauth_closed_until.is_some_and(|until| now < until)
                        && !self.inner.store.is_shared()
                    {
                        drop(state);
                        telemetry::reauth_suppressed(self.name());
                        return None;
                    }
                    self.start_flight(&mut state, RefreshReason::Rejected)
                }
            }
        };
        match tokio::time::timeout(wait, flight).await {
            Ok(Ok(token)) if token.generation > rejected => Some(lease_of(&token, format)),
            Ok(Err(RefreshError::Suppressed)) => {
                telemetry::reauth_suppressed(self.name());
                None
            }
            _ => None,
        }
    }

    /// An operator's forced refresh (`POST /refresh`): ignores backoff and the reauth
    /// interval, shares a fetch already in flight.
    pub async fn force_refresh(&self) -> Result<Arc<Token>, RefreshError> {
        self.join_or_start(RefreshReason::Manual).await
    }

    /// The secret files were re-read (`SIGHUP`): a session credential with no usable
    /// token or a changed password logs in now; a static one with a changed token file
    /// stores it now. Returns whether a fetch was started.
    pub fn reload(&self) -> bool {
        let changed = match self.inner.source.reread() {
            Ok(changed) => changed,
            Err(error) => {
                tracing::error!(credential = self.name(), cause = %error, "secret file unreadable: keeping its last good value");
                false
            }
        };
        let usable = self
            .inner
            .slot
            .with(|token| token.is_some_and(|token| token.is_usable(self.inner.clock.now())));
        let reason = if self.is_static() {
            RefreshReason::FileChanged
        } else {
            RefreshReason::Reload
        };
        let start = changed || (!usable && !self.is_static());
        if start {
            drop(self.join_or_start(reason));
        }
        start
    }

    /// For `/readyz`.
    pub fn status(&self) -> CredentialStatus {
        let state = self.lock_state();
        self.inner.slot.with(|token| {
            CredentialStatus::new(
                self.name(),
                self.inner.source.kind().as_str(),
                token,
                &state.health,
                self.inner.clock.now(),
            )
        })
    }

    fn newer_than(&self, format: FormatId, rejected: TokenGeneration) -> Option<Lease> {
        self.current(format)
            .filter(|lease| lease.generation > rejected)
    }

    fn unavailable(&self) -> TokenUnavailable {
        let retry_at = self.lock_state().health.retry_at;
        let now = self.inner.clock.now();
        TokenUnavailable {
            credential: self.inner.name.clone(),
            retry_after: retry_at
                .map(|at| at.saturating_duration_since(now))
                .unwrap_or(schedule::BACKOFF_BASE),
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, CredentialState> {
        // A panic while holding this lock cannot leave the state inconsistent: every
        // field holds a complete value at all times.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The single flight: joins the fetch in flight or starts one.
    fn join_or_start(&self, reason: RefreshReason) -> Flight {
        let mut state = self.lock_state();
        match state.flight.clone() {
            Some(flight) => flight,
            None => self.start_flight(&mut state, reason),
        }
    }

    /// Starts a fetch in its own task, so it completes (and stores its token) even if
    /// every waiter goes away.
    fn start_flight(&self, state: &mut CredentialState, reason: RefreshReason) -> Flight {
        let this = self.clone();
        // A child of the span that asked (the request whose 401 caused it), if any.
        let span = trace::refresh_span(self.name(), reason.as_str());
        let fetch = async move { this.run_flight(reason).await }.instrument(span);
        let task = match self.inner.runtime.get() {
            Some(runtime) => runtime.spawn(fetch),
            None => tokio::spawn(fetch),
        };
        let flight = async move {
            task.await
                .unwrap_or(Err(RefreshError::Auth(AuthError::Interrupted)))
        }
        .boxed()
        .shared();
        state.flight = Some(flight.clone());
        flight
    }

    /// One flight: obtain a token, store it, record the outcome, clear the slot.
    async fn run_flight(&self, reason: RefreshReason) -> FlightResult {
        let started = self.inner.clock.now();
        let outcome = self.obtain(reason).await;
        let took = self.inner.clock.now().saturating_duration_since(started);
        let (result, traced) = match outcome {
            Ok(Obtained { token, origin }) => {
                if let Some(origin) = origin {
                    self.inner.slot.store(Arc::clone(&token));
                    self.lock_state().health.succeeded(self.inner.clock.wall());
                    self.record_stored(&token, origin, reason, took);
                }
                (Ok(token), origin.map_or("kept", FetchedFrom::as_str))
            }
            Err(RefreshError::Auth(error)) => {
                self.record_failure(&error, reason, took);
                (Err(RefreshError::Auth(error)), "error")
            }
            Err(RefreshError::Suppressed) => (Err(RefreshError::Suppressed), "suppressed"),
        };
        if trace::enabled() {
            trace::record_refresh(&tracing::Span::current(), traced);
        }
        self.lock_state().flight = None;
        self.inner.changed.notify_one();
        result
    }
}

fn lease_of(token: &Token, format: FormatId) -> Lease {
    Lease {
        header: token.header(format).clone(),
        generation: token.generation,
    }
}

mod fleet;
mod refresh;
#[cfg(test)]
mod tests;
