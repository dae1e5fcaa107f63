//! One credential: its token slot, the single flight that replaces the token, the
//! gates in front of it (backoff, the reauth interval), the fleet protocol over the
//! token store, and the thin loop that keeps the token fresh.
//!
//! Readers take one lock-free `ArcSwap` load. Writers (the refresh loop, a 401, the
//! admin `/refresh`, `SIGHUP`, a changed token file) all go through the single flight,
//! so at most one fetch per credential is in flight in this process and everyone who
//! needs a fresh token awaits that one result. With a shared store, the flight first
//! reads the fleet's entry (adopting a newer token instead of logging in) and takes
//! the fleet's lock before a login, so the whole fleet makes one login per refresh.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::clock::{Clock, Random};
use super::readiness::{CredentialStatus, Health};
use super::schedule::{self, RefreshReason, TokenTimes};
use super::slot::{FormatId, Minted, Origin, Slot, Token, TokenGeneration};
use super::source::{AuthError, TokenSource};
use super::store::{Entry, LockLease, Store, StoredToken, WAIT_POLL};
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
pub struct Parts {
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
    state: Mutex<State>,
    /// Wakes the refresh loop when a token was stored out of band.
    changed: Notify,
    /// The runtime flights run on (the one that started the credential), so that a
    /// fetch outlives the request or worker that asked for it.
    home: OnceLock<Handle>,
}

#[derive(Debug, Default)]
struct State {
    flight: Option<Flight>,
    health: Health,
    /// No 401-caused login before this instant: this process made one, or the fleet's
    /// entry says another replica did, less than `min_reauth_interval` ago.
    reauth_closed_until: Option<Instant>,
    /// Fingerprints of the last tokens IntelePeer rejected here: never adopted from the
    /// store again (after an outage the fleet's entry may hold one of them).
    rejected: RejectedTokens,
}

/// How many rejected tokens a credential remembers: more than an outage produces.
const REMEMBERED_REJECTIONS: usize = 8;

/// The fingerprints of the last [`REMEMBERED_REJECTIONS`] tokens rejected with a 401.
#[derive(Debug, Default)]
struct RejectedTokens {
    fingerprints: std::collections::VecDeque<[u8; 8]>,
}

impl RejectedTokens {
    fn remember(&mut self, fingerprint: [u8; 8]) {
        if self.contains(&fingerprint) {
            return;
        }
        if self.fingerprints.len() == REMEMBERED_REJECTIONS {
            self.fingerprints.pop_front();
        }
        self.fingerprints.push_back(fingerprint);
    }

    fn contains(&self, fingerprint: &[u8; 8]) -> bool {
        self.fingerprints.contains(fingerprint)
    }
}

/// A token obtained by a flight, and from where; `origin` is `None` when the flight
/// kept the current token (the fleet already agreed with it).
struct Obtained {
    token: Arc<Token>,
    origin: Option<Origin>,
}

impl Credential {
    pub fn new(parts: Parts) -> Self {
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
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                home: OnceLock::new(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn is_static(&self) -> bool {
        self.inner.source.kind() == "static"
    }

    /// Starts the first fetch now (so requests that arrive before it wait for this very
    /// fetch) and, for a session credential, the loop that keeps the token fresh.
    pub fn start(&self) -> BackgroundTask {
        let _ = self.inner.home.set(Handle::current());
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
                self.inner.source.kind(),
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

    fn lock_state(&self) -> MutexGuard<'_, State> {
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
    fn start_flight(&self, state: &mut State, reason: RefreshReason) -> Flight {
        let this = self.clone();
        // A child of the span that asked (the request whose 401 caused it), if any.
        let span = trace::refresh_span(self.name(), reason.as_str());
        let fetch = async move { this.run_flight(reason).await }.instrument(span);
        let task = match self.inner.home.get() {
            Some(home) => home.spawn(fetch),
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
                (Ok(token), origin.map_or("kept", Origin::as_str))
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

    fn record_stored(&self, token: &Token, origin: Origin, reason: RefreshReason, took: Duration) {
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

    fn record_failure(&self, error: &AuthError, reason: RefreshReason, took: Duration) {
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
        if matches!(error, AuthError::BadCredentials) {
            tracing::error!(
                credential = self.name(),
                reason = reason.as_str(),
                error = %error,
                kind = error.kind(),
                consecutive_failures = failures,
                retry_in_ms = delay.as_millis() as u64,
                still_valid,
                "login failed: IntelePeer rejected the username or password"
            );
        } else {
            tracing::warn!(
                credential = self.name(),
                reason = reason.as_str(),
                error = %error,
                kind = error.kind(),
                consecutive_failures = failures,
                retry_in_ms = delay.as_millis() as u64,
                still_valid,
                "token fetch failed"
            );
        }
    }

    /// Keeps a session token fresh: fetches when [`schedule::next_fetch`] says, wakes
    /// early when a token is stored out of band, and converges on the fleet's token
    /// when the shared store comes back after an outage.
    async fn refresh_loop(&self) {
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

    // --- obtaining a token ---

    /// The fleet protocol. Reads the shared entry first and adopts a newer token
    /// instead of logging in; otherwise takes the refresh lock and logs in; while
    /// another replica holds the lock, waits for its entry (bounded). Whenever the
    /// store is unreachable, logs in alone: the store never fails a request.
    async fn obtain(&self, reason: RefreshReason) -> Result<Obtained, RefreshError> {
        let store = &self.inner.store;
        if self.is_static() || !store.is_up() {
            return self.login_alone(reason).await;
        }
        let now = self.inner.clock.now();
        if reason == RefreshReason::Resync
            && let Some(own) = self.inner.slot.load().filter(|token| token.is_usable(now))
        {
            return Ok(self.converge(own).await);
        }
        let deadline =
            self.inner.clock.now() + store.lock_ttl() + self.inner.settings.request_timeout;
        // What counts as newer: for `/refresh`, newer than what was there when it was
        // asked for (someone else's login finishing meanwhile is as good as ours).
        let mut floor: Option<u64> = None;
        loop {
            let Ok(seen) = store.read(self.name()).await else {
                return self.login_alone(reason).await;
            };
            let floor = *floor.get_or_insert(if reason == RefreshReason::Manual {
                seen.generation()
            } else {
                0
            });
            if let Some(obtained) = self.adopt_if_newer(&seen, reason, floor) {
                return Ok(obtained);
            }
            if reason == RefreshReason::Rejected && self.reauth_closed(Some(&seen)) {
                return Err(RefreshError::Suppressed);
            }
            match store.try_lock(self.name()).await {
                Err(_) => return self.login_alone(reason).await,
                Ok(Some(lease)) => return self.login_holding(reason, lease, floor).await,
                Ok(None) => {}
            }
            // Another replica is logging in: look again shortly.
            if self.inner.clock.now() + WAIT_POLL > deadline {
                tracing::warn!(
                    credential = self.name(),
                    "another replica held the refresh lock too long: logging in alone"
                );
                return self.login_alone(reason).await;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Logs in holding the fleet's lock (renewed every third of its lease meanwhile),
    /// writes the entry if nobody else did, and releases the lock.
    async fn login_holding(
        &self,
        reason: RefreshReason,
        lease: LockLease,
        floor: u64,
    ) -> Result<Obtained, RefreshError> {
        let store = &self.inner.store;
        let renewing = {
            let store = store.clone();
            let name = self.inner.name.clone();
            let lease = lease.clone();
            let every = store.lock_ttl() / 3;
            BackgroundTask::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if !matches!(store.renew(&name, &lease).await, Ok(true)) {
                        break;
                    }
                }
            })
        };
        let result = async {
            // Someone may have written the entry just before we took the lock.
            let seen = store.read(self.name()).await.unwrap_or(Entry::Absent);
            if let Some(obtained) = self.adopt_if_newer(&seen, reason, floor) {
                return Ok(obtained);
            }
            if reason == RefreshReason::Rejected && self.reauth_closed(Some(&seen)) {
                return Err(RefreshError::Suppressed);
            }
            let generation = seen.generation().max(self.fleet_generation()) + 1;
            let (obtained, stored) = self.login(reason, generation).await?;

            if let Some(stored) = stored {
                let written = store
                    .write(
                        self.name(),
                        &stored,
                        seen.generation(),
                        self.inner.clock.wall(),
                    )
                    .await;
                if written == Ok(false) {
                    tracing::warn!(
                        credential = self.name(),
                        "the shared entry changed during this login (the lock was lost): \
                         keeping this token locally"
                    );
                }
            }
            Ok(obtained)
        }
        .await;
        drop(renewing);
        store.release(self.name(), lease).await;
        result
    }

    /// Logs in without the store: it is unreachable, or the credential is static. A
    /// 401-caused login still keeps this process's reauth interval (the fleet's cannot
    /// be read).
    async fn login_alone(&self, reason: RefreshReason) -> Result<Obtained, RefreshError> {
        if reason == RefreshReason::Rejected && self.reauth_closed(None) {
            return Err(RefreshError::Suppressed);
        }
        let generation = self.fleet_generation() + 1;
        self.login(reason, generation)
            .await
            .map(|(obtained, _)| obtained)
    }

    /// The store came back after an outage: adopt the fleet's token if it is newer
    /// than ours (fleet generation, then the time it was obtained), usable and not one
    /// rejected here; otherwise publish ours (compare-and-set), so every replica ends
    /// up with the newest token without a login. Never goes back to an older token: a
    /// replica that logged in alone during the outage holds a newer token than the
    /// entry written before it, and with an IntelePeer that revokes older tokens on a
    /// new login the entry's is dead.
    async fn converge(&self, own: Arc<Token>) -> Obtained {
        let store = &self.inner.store;
        let kept = |token: Arc<Token>| Obtained {
            token,
            origin: None,
        };
        let Ok(seen) = store.read(self.name()).await else {
            return kept(own);
        };
        if let Some(stored) = seen.token()
            && super::slot::fingerprint(stored.token.expose_secret()) == own.fingerprint
        {
            return kept(own);
        }
        if let Some(stored) = seen.token()
            && is_newer(stored, &own)
            && let Some(obtained) = self.adopt(&seen)
        {
            return obtained;
        }
        let Some(expires_at) = own.expires_at() else {
            return kept(own);
        };
        if !store.accepts_writes() {
            return kept(own);
        }
        let stored = StoredToken {
            // Our own generation where it is ahead (the entry then says what our token
            // says), otherwise one past the entry's, so the compare-and-set replaces it.
            generation: own.fleet_generation.max(seen.generation() + 1),
            token: own.secret.clone(),
            expires_at,
            obtained_at: own.obtained_at,
            reason: own.reason,
        };
        let wall = self.inner.clock.wall();
        if store
            .write(self.name(), &stored, seen.generation(), wall)
            .await
            == Ok(true)
        {
            return kept(own);
        }
        // Another replica published first: take theirs if it is newer than ours.
        match store.read(self.name()).await {
            Ok(seen) => seen
                .token()
                .filter(|stored| is_newer(stored, &own))
                .and_then(|_| self.adopt(&seen))
                .unwrap_or_else(|| kept(own)),
            Err(_) => kept(own),
        }
    }

    /// The fleet generation of the current token (0 without one).
    fn fleet_generation(&self) -> u64 {
        self.inner
            .slot
            .with(|token| token.map_or(0, |token| token.fleet_generation))
    }

    /// Adopts the entry when it is newer than our token (and its generation above
    /// `floor`), usable, not one rejected here, and, for a refresh ahead, not itself
    /// due for refresh.
    fn adopt_if_newer(&self, seen: &Entry, reason: RefreshReason, floor: u64) -> Option<Obtained> {
        let stored = seen.token()?;
        if stored.generation <= floor {
            return None;
        }
        if let Some(own) = self.inner.slot.load()
            && !is_newer(stored, &own)
        {
            return None;
        }
        let obtained = self.adopt(seen)?;
        let due = obtained
            .token
            .times
            .is_some_and(|times| self.inner.clock.now() >= times.refresh_at);
        (reason != RefreshReason::Ahead || !due).then_some(obtained)
    }

    /// The entry's token as ours, if it is usable and not one rejected here.
    fn adopt(&self, seen: &Entry) -> Option<Obtained> {
        let stored = seen.token()?;
        let fingerprint = super::slot::fingerprint(stored.token.expose_secret());
        if self.lock_state().rejected.contains(&fingerprint) {
            tracing::warn!(
                credential = self.name(),
                fleet_generation = stored.generation,
                "the shared entry holds a token IntelePeer already rejected here: not adopted"
            );
            return None;
        }
        let lifetime = stored
            .expires_at
            .duration_since(stored.obtained_at)
            .unwrap_or_default();
        let times = schedule::token_times(
            stored.expires_at,
            lifetime,
            self.inner.clock.now(),
            self.inner.clock.wall(),
            self.inner.settings.refresh_before,
            self.inner.random.unit(),
        )?;
        let token = self
            .mint(
                stored.token.clone(),
                stored.generation,
                Some(times),
                stored.obtained_at,
                stored.reason,
            )
            .ok()?;
        Some(Obtained {
            token: Arc::new(token),
            origin: Some(Origin::Store),
        })
    }

    /// The reauth interval is closed: this process made a 401-caused login less than
    /// `min_reauth_interval` ago, or the fleet's entry (`seen`) says one did.
    fn reauth_closed(&self, seen: Option<&Entry>) -> bool {
        let now = self.inner.clock.now();
        let local = self
            .lock_state()
            .reauth_closed_until
            .is_some_and(|until| now < until);
        local || seen.is_some_and(|seen| self.fleet_reauth_closed(seen))
    }

    /// True (and remembered) when the entry says the fleet made a 401-caused login
    /// less than `min_reauth_interval` ago.
    fn fleet_reauth_closed(&self, seen: &Entry) -> bool {
        let Some(stored) = seen
            .token()
            .filter(|stored| stored.reason == RefreshReason::Rejected)
        else {
            return false;
        };
        let reopens = stored.obtained_at + self.inner.settings.min_reauth_interval;
        let Ok(left) = reopens.duration_since(self.inner.clock.wall()) else {
            return false;
        };
        let until = self.inner.clock.now() + left;
        let mut state = self.lock_state();
        state.reauth_closed_until =
            Some(state.reauth_closed_until.map_or(until, |at| at.max(until)));
        true
    }

    /// Fetches from the source and builds the token (and, for a session token, the
    /// entry to share).
    async fn login(
        &self,
        reason: RefreshReason,
        fleet_generation: u64,
    ) -> Result<(Obtained, Option<StoredToken>), RefreshError> {
        let started = self.inner.clock.now();
        if reason == RefreshReason::Rejected {
            // A 401-caused login closes the interval whether it succeeds or fails; a
            // 401 answered by adopting the fleet's newer token does not.
            self.lock_state().reauth_closed_until =
                Some(started + self.inner.settings.min_reauth_interval);
        }
        let started_wall = self.inner.clock.wall();
        let span = trace::login_span(self.name(), reason.as_str());
        let fetched = self.inner.source.fetch().instrument(span.clone()).await;
        trace::record_login(&span, fetched.as_ref().map(|_| ()).map_err(AuthError::kind));
        drop(span);
        let secret = fetched?;
        let times = if self.is_static() {
            None
        } else {
            Some(self.session_times(secret.expose_secret(), started, started_wall)?)
        };
        let token = self
            .mint(
                secret.clone(),
                fleet_generation,
                times,
                started_wall,
                reason,
            )
            .map_err(|_| AuthError::InvalidToken)?;
        let stored = times.map(|times| StoredToken {
            generation: fleet_generation,
            token: secret,
            expires_at: times.expires_at,
            obtained_at: started_wall,
            reason,
        });
        let obtained = Obtained {
            token: Arc::new(token),
            origin: Some(Origin::Login),
        };
        Ok((obtained, stored))
    }

    fn session_times(
        &self,
        secret: &str,
        started: Instant,
        started_wall: SystemTime,
    ) -> Result<TokenTimes, AuthError> {
        let fetched_unix = started_wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let lifetime =
            schedule::token_lifetime(secret, fetched_unix, self.inner.settings.token_ttl)
                .ok_or(AuthError::AlreadyExpired)?;
        schedule::token_times(
            started_wall + lifetime,
            lifetime,
            started,
            started_wall,
            self.inner.settings.refresh_before,
            self.inner.random.unit(),
        )
        .ok_or(AuthError::AlreadyExpired)
    }

    fn mint(
        &self,
        secret: SecretString,
        fleet_generation: u64,
        times: Option<TokenTimes>,
        obtained_at: SystemTime,
        reason: RefreshReason,
    ) -> Result<Token, super::slot::NotAHeaderValue> {
        Token::mint(Minted {
            secret,
            formats: &self.inner.formats,
            generation: self.inner.slot.next_generation(),
            fleet_generation,
            times,
            obtained_at,
            reason,
        })
    }
}

/// Whether the fleet's entry holds a newer token than `own`: a higher fleet
/// generation, or the same one obtained later (two replicas that logged in alone
/// during an outage). Our own token is never newer than itself.
fn is_newer(stored: &StoredToken, own: &Token) -> bool {
    if super::slot::fingerprint(stored.token.expose_secret()) == own.fingerprint {
        return false;
    }
    (stored.generation, stored.obtained_at) > (own.fleet_generation, own.obtained_at)
}

/// The shortest delay of the second look at the fleet's entry after a recovery (see
/// [`Credential::resync_confirm_delay`]).
const RESYNC_CONFIRM: Duration = Duration::from_secs(5);

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn lease_of(token: &Token, format: FormatId) -> Lease {
    Lease {
        header: token.header(format).clone(),
        generation: token.generation,
    }
}

#[cfg(test)]
mod tests;
