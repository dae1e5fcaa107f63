//! One credential: its current token in an `ArcSwap`, the single flight that replaces
//! it, and the background loop that keeps it fresh.
//!
//! Readers take one lock-free `ArcSwap` load. Writers (the refresh loop, a 401, the
//! admin `/refresh`) all go through [`Credential::join_or_start`], so at most one
//! fetch per credential is ever in flight and everyone who needs a fresh token awaits
//! that one result.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::runtime::Handle;
use tokio::sync::Notify;

use super::expiry;
use super::source::{AuthError, LoginTransport, SessionLogin, read_token_file};
use crate::config::{CredentialConfig, CredentialSource, HeaderFormat, StaticToken};
use crate::task::BackgroundTask;

/// How often a `token_file` is checked for a new token (DESIGN.md: within 5 s).
const TOKEN_FILE_POLL: Duration = Duration::from_secs(2);

/// Counts token replacements for one credential; a 401 on generation G only causes a
/// login when no token newer than G has been stored meanwhile.
pub type TokenGeneration = u64;

/// Why a token fetch happened (the `reason` label of logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshReason {
    Startup,
    Ahead,
    Expired,
    Rejected,
    Manual,
    FileChanged,
}

impl RefreshReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Ahead => "ahead",
            Self::Expired => "expired",
            Self::Rejected => "401",
            Self::Manual => "manual",
            Self::FileChanged => "file_changed",
        }
    }
}

/// A stored token. The secret itself is only kept inside the prebuilt header values.
#[derive(Debug)]
pub struct Token {
    pub generation: TokenGeneration,
    /// One header value per format used by this credential's routes, built once here,
    /// marked sensitive, cloned per request.
    headers: Box<[HeaderValue]>,
    /// `None` for static tokens: they never expire as far as the proxy knows.
    usable_until: Option<Instant>,
    expires_at: Option<SystemTime>,
    refresh_at: Option<Instant>,
}

impl Token {
    fn is_usable(&self, now: Instant) -> bool {
        self.usable_until.is_none_or(|until| now < until)
    }

    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
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

/// What `/readyz` shows of a credential. Never holds the token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CredentialStatus {
    pub name: String,
    pub kind: &'static str,
    pub ready: bool,
    /// The last forced refresh after a 401 failed: IntelePeer rejects the token.
    pub rejected: bool,
    pub generation: TokenGeneration,
    #[serde(with = "rfc3339_opt")]
    pub expires_at: Option<SystemTime>,
    #[serde(with = "rfc3339_opt")]
    pub last_refresh: Option<SystemTime>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
}

mod rfc3339_opt {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => {
                serializer.serialize_some(&humantime::format_rfc3339_seconds(*time).to_string())
            }
            None => serializer.serialize_none(),
        }
    }
}

type FlightResult = Result<Arc<Token>, AuthError>;
type Flight = Shared<BoxFuture<'static, FlightResult>>;

#[derive(Debug)]
enum Source {
    Session(SessionLogin),
    Static(StaticToken),
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    /// No login before this instant (backoff) unless forced by an operator.
    retry_at: Option<Instant>,
    last_error: Option<String>,
    last_refresh: Option<SystemTime>,
    rejected: bool,
}

struct Inner {
    name: String,
    source: Source,
    token_ttl: Duration,
    refresh_before: Duration,
    formats: Vec<HeaderFormat>,
    /// How logins reach the auth endpoint.
    transport: Arc<dyn LoginTransport>,
    current: ArcSwapOption<Token>,
    next_generation: AtomicU64,
    /// The fetch in flight, if any. Held only to look at or swap the slot.
    flight: Mutex<Option<Flight>>,
    health: Mutex<Health>,
    /// Wakes the refresh loop when a token is stored or a fetch fails out of band.
    changed: Notify,
    /// The runtime that [`Credential::start`] ran on: fetches are spawned there, not on
    /// whichever proxy worker happened to see a 401, so a fetch outlives the worker's
    /// runtime at shutdown and always clears its flight slot.
    home: OnceLock<Handle>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A credential: cheap to clone, shared by every route that uses it.
#[derive(Debug, Clone)]
pub struct Credential {
    inner: Arc<Inner>,
}

impl Credential {
    /// `formats` are the header formats of the routes using this credential; a
    /// [`Lease`] for format `i` carries the token rendered with `formats[i]`.
    pub fn new(
        config: &CredentialConfig,
        formats: Vec<HeaderFormat>,
        transport: Arc<dyn LoginTransport>,
        login_timeout: Duration,
    ) -> Self {
        let source = match &config.source {
            CredentialSource::Session {
                url,
                username,
                password,
            } => Source::Session(SessionLogin {
                url: url.clone(),
                username: username.clone(),
                password: password.clone(),
                timeout: login_timeout,
            }),
            CredentialSource::Static(token) => Source::Static(token.clone()),
        };
        Self {
            inner: Arc::new(Inner {
                name: config.name.clone(),
                source,
                token_ttl: config.token_ttl,
                refresh_before: config.refresh_before,
                formats,
                transport,
                current: ArcSwapOption::empty(),
                next_generation: AtomicU64::new(1),
                flight: Mutex::new(None),
                health: Mutex::new(Health::default()),
                changed: Notify::new(),
                home: OnceLock::new(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn is_static(&self) -> bool {
        matches!(self.inner.source, Source::Static(_))
    }

    /// Starts the first fetch now (so requests that arrive before it wait for this very
    /// fetch) and the background task that keeps the token fresh. Dropping the
    /// returned guard stops the task.
    pub fn start(&self) -> BackgroundTask {
        let _ = self.inner.home.set(Handle::current());
        let _first = self.join_or_start(RefreshReason::Startup);
        let this = self.clone();
        match &self.inner.source {
            Source::Session(_) => BackgroundTask::spawn(async move { this.refresh_loop().await }),
            Source::Static(StaticToken::File(_)) => {
                BackgroundTask::spawn(async move { this.watch_token_file().await })
            }
            Source::Static(StaticToken::Inline(_)) => BackgroundTask::spawn(async {}),
        }
    }

    /// The current token for format `format_index` when it is usable: one `ArcSwap`
    /// load, no lock, no allocation.
    pub fn current(&self, format_index: usize) -> Option<Lease> {
        let guard = self.inner.current.load();
        let token = guard.as_ref()?;
        token.is_usable(Instant::now()).then(|| Lease {
            header: token.headers[format_index].clone(),
            generation: token.generation,
        })
    }

    /// A usable token, waiting up to `wait` for a fetch in flight. Fails at once when
    /// there is no usable token and no fetch in flight (the credential is backing off).
    pub async fn lease(
        &self,
        format_index: usize,
        wait: Duration,
    ) -> Result<Lease, TokenUnavailable> {
        if let Some(lease) = self.current(format_index) {
            return Ok(lease);
        }
        let in_flight = self.lock_flight().clone();
        if let Some(flight) = in_flight
            && let Ok(Ok(token)) = tokio::time::timeout(wait, flight).await
        {
            return Ok(self.lease_from(&token, format_index));
        }
        // The flight may have finished between the checks above.
        self.current(format_index).ok_or_else(|| self.unavailable())
    }

    /// After the upstream rejected generation `rejected` with a 401: a newer token if
    /// one is stored, otherwise the result of one forced refresh (shared with every
    /// other request that saw the same 401). `None` means "return the 401 as it came":
    /// static credentials, a credential backing off, or a failed refresh.
    pub async fn lease_after_rejection(
        &self,
        format_index: usize,
        rejected: TokenGeneration,
        wait: Duration,
    ) -> Option<Lease> {
        if let Some(lease) = self.current(format_index)
            && lease.generation > rejected
        {
            return Some(lease);
        }
        if self.is_static() {
            return None;
        }
        let in_flight = self.lock_flight().clone();
        let flight = match in_flight {
            Some(flight) => flight,
            None if self.backing_off() => return None,
            None => self.join_or_start(RefreshReason::Rejected),
        };
        match tokio::time::timeout(wait, flight).await {
            Ok(Ok(token)) if token.generation > rejected => {
                Some(self.lease_from(&token, format_index))
            }
            _ => None,
        }
    }

    /// An operator's forced refresh (`POST /refresh`): ignores backoff, shares a
    /// fetch already in flight.
    pub async fn force_refresh(&self) -> Result<Arc<Token>, AuthError> {
        self.join_or_start(RefreshReason::Manual).await
    }

    /// For `/readyz`.
    pub fn status(&self) -> CredentialStatus {
        let token = self.inner.current.load_full();
        let health = self.lock_health();
        let now = Instant::now();
        CredentialStatus {
            name: self.inner.name.clone(),
            kind: if self.is_static() {
                "static"
            } else {
                "session"
            },
            ready: token.as_ref().is_some_and(|token| token.is_usable(now)) && !health.rejected,
            rejected: health.rejected,
            generation: token.as_ref().map_or(0, |token| token.generation),
            expires_at: token.as_ref().and_then(|token| token.expires_at),
            last_refresh: health.last_refresh,
            last_error: health.last_error.clone(),
            consecutive_failures: health.consecutive_failures,
        }
    }

    fn lease_from(&self, token: &Token, format_index: usize) -> Lease {
        Lease {
            header: token.headers[format_index].clone(),
            generation: token.generation,
        }
    }

    fn unavailable(&self) -> TokenUnavailable {
        let retry_at = self.lock_health().retry_at;
        let retry_after = retry_at
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(expiry::BACKOFF_BASE);
        TokenUnavailable {
            credential: self.inner.name.clone(),
            retry_after,
        }
    }

    fn backing_off(&self) -> bool {
        self.lock_health()
            .retry_at
            .is_some_and(|at| Instant::now() < at)
    }

    fn lock_flight(&self) -> MutexGuard<'_, Option<Flight>> {
        // A panic while holding this lock cannot leave the slot inconsistent: it only
        // ever holds a complete value.
        self.inner
            .flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_health(&self) -> MutexGuard<'_, Health> {
        self.inner
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The single flight: joins the fetch in flight or starts one. The fetch runs in
    /// its own task, so it completes (and stores its token) even if every waiter goes
    /// away.
    fn join_or_start(&self, reason: RefreshReason) -> Flight {
        let mut slot = self.lock_flight();
        if let Some(flight) = slot.as_ref() {
            return flight.clone();
        }
        let this = self.clone();
        let fetch = async move { this.fetch_and_store(reason).await };
        let task = match self.inner.home.get() {
            Some(home) => home.spawn(fetch),
            None => tokio::spawn(fetch),
        };
        let flight = async move { task.await.unwrap_or(Err(AuthError::Interrupted)) }
            .boxed()
            .shared();
        *slot = Some(flight.clone());
        flight
    }

    async fn fetch_and_store(&self, reason: RefreshReason) -> FlightResult {
        let started = Instant::now();
        let fetched_wall = SystemTime::now();
        let result = self
            .fetch()
            .await
            .and_then(|token| self.build_token(token.expose_secret(), started, fetched_wall));
        let elapsed = started.elapsed();
        let name = self.inner.name.as_str();
        let outcome = match result {
            Ok(token) => {
                let token = Arc::new(token);
                self.inner.current.store(Some(Arc::clone(&token)));
                let mut health = self.lock_health();
                *health = Health {
                    last_refresh: Some(fetched_wall),
                    ..Health::default()
                };
                drop(health);
                crate::telemetry::token_refreshed(name, reason.as_str(), &token, elapsed);
                tracing::info!(
                    credential = name,
                    generation = token.generation,
                    expires_at = %token.expires_at.map(humantime::format_rfc3339_seconds).map_or_else(|| "never".to_owned(), |t| t.to_string()),
                    reason = reason.as_str(),
                    duration_ms = elapsed.as_millis() as u64,
                    "token stored"
                );
                Ok(token)
            }
            Err(error) => {
                let mut health = self.lock_health();
                health.consecutive_failures = health.consecutive_failures.saturating_add(1);
                let delay = expiry::backoff(
                    health.consecutive_failures,
                    error.retry_after(),
                    rand::random(),
                );
                health.retry_at = Some(Instant::now() + delay);
                health.last_error = Some(error.to_string());
                if reason == RefreshReason::Rejected {
                    health.rejected = true;
                }
                let failures = health.consecutive_failures;
                drop(health);
                crate::telemetry::token_refresh_failed(name, reason.as_str(), elapsed);
                let still_valid = self.current(0).is_some();
                if matches!(error, AuthError::BadCredentials) {
                    tracing::error!(
                        credential = name,
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
                        credential = name,
                        reason = reason.as_str(),
                        error = %error,
                        kind = error.kind(),
                        consecutive_failures = failures,
                        retry_in_ms = delay.as_millis() as u64,
                        still_valid,
                        "token fetch failed"
                    );
                }
                Err(error)
            }
        };
        *self.lock_flight() = None;
        self.inner.changed.notify_one();
        outcome
    }

    async fn fetch(&self) -> Result<SecretString, AuthError> {
        match &self.inner.source {
            Source::Session(login) => login.fetch(self.inner.transport.as_ref()).await,
            Source::Static(StaticToken::Inline(token)) => Ok(token.clone()),
            Source::Static(StaticToken::File(path)) => read_token_file(path).await,
        }
    }

    fn build_token(
        &self,
        secret: &str,
        fetched: Instant,
        fetched_wall: SystemTime,
    ) -> Result<Token, AuthError> {
        let headers = self
            .inner
            .formats
            .iter()
            .map(|format| {
                let mut value = HeaderValue::try_from(format.render(secret))
                    .map_err(|_| AuthError::InvalidToken)?;
                value.set_sensitive(true);
                Ok(value)
            })
            .collect::<Result<Box<[HeaderValue]>, AuthError>>()?;
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        if self.is_static() {
            return Ok(Token {
                generation,
                headers,
                usable_until: None,
                expires_at: None,
                refresh_at: None,
            });
        }
        let fetched_unix = fetched_wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let lifetime = expiry::token_lifetime(secret, fetched_unix, self.inner.token_ttl)
            .ok_or(AuthError::AlreadyExpired)?;
        let refresh_in = expiry::refresh_delay(lifetime, self.inner.refresh_before, rand::random());
        Ok(Token {
            generation,
            headers,
            usable_until: Some(fetched + expiry::usable_for(lifetime)),
            expires_at: Some(fetched_wall + lifetime),
            refresh_at: Some(fetched + refresh_in),
        })
    }

    /// Keeps a session token fresh: fetches at `refresh_at`, and after a failure at the
    /// backoff deadline. Wakes early when a token is stored out of band.
    async fn refresh_loop(&self) {
        loop {
            let (due, reason) = self.next_fetch();
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {
                    let _ = self.join_or_start(reason).await;
                }
                () = self.inner.changed.notified() => {}
            }
        }
    }

    fn next_fetch(&self) -> (Instant, RefreshReason) {
        let now = Instant::now();
        let token = self.inner.current.load();
        let retry_at = self.lock_health().retry_at;
        let reason = match token.as_ref() {
            None => RefreshReason::Startup,
            Some(token) if !token.is_usable(now) => RefreshReason::Expired,
            Some(_) => RefreshReason::Ahead,
        };
        let due = match (retry_at, token.as_ref().and_then(|token| token.refresh_at)) {
            (Some(retry_at), _) => retry_at,
            (None, Some(refresh_at)) => refresh_at,
            (None, None) => now,
        };
        (due, reason)
    }

    /// Re-reads a static `token_file` and stores its token when the content changed.
    async fn watch_token_file(&self) {
        let Source::Static(StaticToken::File(path)) = &self.inner.source else {
            return;
        };
        let mut interval = tokio::time::interval(TOKEN_FILE_POLL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Ok(token) = read_token_file(path).await else {
                continue;
            };
            let rendered = self.inner.formats[0].render(token.expose_secret());
            let unchanged = self
                .inner
                .current
                .load()
                .as_ref()
                .is_some_and(|current| current.headers[0].as_bytes() == rendered.as_bytes());
            if !unchanged {
                let _ = self.join_or_start(RefreshReason::FileChanged).await;
            }
        }
    }
}
