//! The IntelePeer simulator: an in-memory stand-in for IntelePeer's REST APIs, used by
//! the proxy's tests, the benchmark, `ipproxy demo`, `ipproxy sim`, and users who test
//! their own apps.
//!
//! It stands apart from the proxy: the proxy never imports it, and it knows nothing of
//! the proxy. What it offers:
//!
//! - the two auth endpoints (`POST /_rest/v4/authenticate` and
//!   `POST /_rest/v4/app/sms/authenticate/get_portal_auth_token`), which check the
//!   username and password and issue JWT-shaped tokens carrying `crt` and `exp`;
//! - a token check on every other path (`Authorization: Bearer <token>` or
//!   `Authorization: <token>`), answering `401 {"code":401,"error":"Unauthorized"}` for
//!   a missing, unknown, revoked or expired token;
//! - `POST /_rest/v4/app/sms/send`, `GET /_rest/v4/sim/ping`,
//!   `GET /_rest/v4/sim/bytes/{n}`, and an echo of anything else;
//! - switches for tests (auth failure modes, added latency, a gate that holds API
//!   responses, token TTL, revocation) and
//!   counters, both as methods on [`Simulator`] and under the control prefix `/__sim/`,
//!   which the real IntelePeer does not have and which needs no token.
//!
//! Tokens and the password never appear in a log line or a `Debug` output.

mod api;
mod auth;
mod control;
mod tokens;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use self::tokens::{Rejection, TokenShape, TokenStore};

/// Longest delay the simulator will inject (auth [`AuthMode::Slow`] or
/// [`Simulator::set_latency`]): a typo such as `{"ms": 9999999}` must not hang a test
/// run for hours.
const MAX_INJECTED_DELAY: Duration = Duration::from_secs(10 * 60);

/// How the simulator is set up at start. Everything but the credentials and the token
/// flavour can be changed later through [`Simulator`]'s switches.
#[derive(Clone)]
pub struct SimConfig {
    /// The only username the auth endpoints accept (default `demo`).
    pub username: String,
    /// Its password (default `demo-password`). A test double: a plain `String`, but
    /// never printed.
    pub password: String,
    /// Lifetime of tokens issued (default 24 h, as IntelePeer's). The JWT's `exp` is
    /// `crt` plus this, rounded up to whole seconds (at least one).
    pub token_ttl: Duration,
    /// When set, a new login revokes every older token of the same user (default
    /// `false`: tokens live side by side until they expire).
    pub invalidate_on_reauth: bool,
    /// When set, issue 40 random alphanumerics instead of JWTs, so that a client must
    /// fall back on its configured TTL (default `false`).
    pub opaque_tokens: bool,
    /// Long-standing tokens that are always accepted, even after
    /// [`Simulator::revoke_all`] (the CPaaS-style static credential).
    pub static_tokens: Vec<String>,
    /// The account's numbers: when not empty, `POST /_rest/v4/app/sms/send` answers
    /// 401 to a valid token whose request's `from` is not one of them, as IntelePeer
    /// does (default: empty, every `from` is accepted).
    pub numbers: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            username: "demo".to_owned(),
            password: "demo-password".to_owned(),
            token_ttl: Duration::from_secs(24 * 60 * 60),
            invalidate_on_reauth: false,
            opaque_tokens: false,
            static_tokens: Vec::new(),
            numbers: Vec::new(),
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("username", &self.username)
            .field("password", &"***")
            .field("token_ttl", &self.token_ttl)
            .field("invalidate_on_reauth", &self.invalidate_on_reauth)
            .field("opaque_tokens", &self.opaque_tokens)
            .field(
                "static_tokens",
                &format_args!("[{} × ***]", self.static_tokens.len()),
            )
            .field("numbers", &self.numbers)
            .finish()
    }
}

/// How the auth endpoints answer; switch it with [`Simulator::set_auth_mode`] or
/// `PUT /__sim/auth-mode` (body `"down"`, `{"slow": 1500}`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Normal operation: check the credentials, issue a token.
    Ok,
    /// `503 {"error":"service unavailable"}` with `Retry-After: 1`.
    Down,
    /// `500 {"error":"internal server error"}`.
    Error,
    /// `200` with a body that is not JSON (an HTML maintenance page).
    Garbage,
    /// `200 {"token":""}`.
    EmptyToken,
    /// `429 {"error":"too many requests"}` with `Retry-After: 2`.
    RateLimited,
    /// `429` with `Retry-After` of this many seconds.
    RateLimitedFor(u64),
    /// `401 {"code":401,"error":"Unauthorized"}`, even for the right credentials.
    Reject,
    /// Wait this many milliseconds (at most ten minutes), then answer normally.
    Slow(u64),
}

/// What the simulator has seen since start or the last reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Every request to an auth endpoint, whatever the outcome.
    pub auth_calls: u64,
    /// Successful logins.
    pub tokens_issued: u64,
    /// Every request to a token-checked path.
    pub api_calls: u64,
    /// 401s answered on token-checked paths (the sum of the four below).
    pub unauthorized: u64,
    /// No `Authorization` header, or an empty one.
    pub missing_token: u64,
    /// A token the simulator never issued (or forgot, a minute after it expired).
    pub unknown_token: u64,
    /// A token revoked by [`Simulator::revoke_all`] or by a newer login.
    pub revoked_token: u64,
    /// A token presented after its expiry: the proxy must never cause this.
    pub expired_token: u64,
    /// 401s answered to a valid token for what the request asked (an SMS from a number
    /// the account does not own); not counted in `unauthorized`.
    pub rejected_content: u64,
}

/// A cheap, cloneable handle on one simulated IntelePeer. Its `Debug` output shows
/// neither tokens nor the password.
#[derive(Clone)]
pub struct Simulator {
    state: Arc<State>,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("username", &self.state.username)
            .field("auth_mode", &self.state.auth_mode())
            .field("token_ttl", &self.state.token_ttl())
            .field("latency", &self.state.latency())
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// A simulator in [`AuthMode::Ok`], with no added latency and no token issued yet.
    pub fn new(config: SimConfig) -> Self {
        let SimConfig {
            username,
            password,
            token_ttl,
            invalidate_on_reauth,
            opaque_tokens,
            static_tokens,
            numbers,
        } = config;
        Self {
            state: Arc::new(State {
                username,
                password: RwLock::new(password),
                numbers: RwLock::new(numbers),
                invalidate_on_reauth,
                token_shape: if opaque_tokens {
                    TokenShape::Opaque
                } else {
                    TokenShape::Jwt
                },
                static_tokens: static_tokens.into_iter().collect(),
                token_ttl_nanos: AtomicU64::new(duration_to_nanos(token_ttl)),
                latency_nanos: AtomicU64::new(0),
                held: tokio::sync::watch::Sender::new(false),
                auth_mode: Mutex::new(AuthMode::Ok),
                tokens: RwLock::new(TokenStore::default()),
                counters: CounterCells::default(),
            }),
        }
    }

    /// The simulator as an axum router: the control paths under `/__sim/`, everything
    /// else through the auth endpoints or the token check.
    pub fn router(&self) -> Router {
        Router::new()
            .nest("/__sim", control::router())
            .fallback(api::dispatch)
            .with_state(self.clone())
    }

    /// Serve on a bound listener (HTTP/1.1 and h2c) until `shutdown` resolves; then stop
    /// accepting and let in-flight requests finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// How the auth endpoints answer from now on.
    pub fn set_auth_mode(&self, mode: AuthMode) {
        *self
            .state
            .auth_mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = mode;
    }

    /// Delay added to every response on a token-checked path, after the token check
    /// (auth and control paths are not delayed). At most ten minutes is applied.
    pub fn set_latency(&self, latency: Duration) {
        self.state
            .latency_nanos
            .store(duration_to_nanos(latency), Ordering::Relaxed);
    }

    /// While `true`, every response on a token-checked path waits (after the token
    /// check and the latency) until this is set back to `false`, at most ten minutes:
    /// a gate for tests that must observe requests in flight for as long as they need,
    /// whatever the machine's load. Requests already waiting are released at once.
    pub fn hold_api(&self, held: bool) {
        self.state.held.send_replace(held);
    }

    /// Lifetime of tokens issued from now on; tokens already issued keep theirs.
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.state
            .token_ttl_nanos
            .store(duration_to_nanos(ttl), Ordering::Relaxed);
    }

    /// The password the auth endpoints accept from now on (a rotated password).
    pub fn set_password(&self, password: &str) {
        *self
            .state
            .password
            .write()
            .unwrap_or_else(PoisonError::into_inner) = password.to_owned();
    }

    /// The account's numbers from now on (empty: any `from` is accepted).
    pub fn set_numbers(&self, numbers: Vec<String>) {
        *self
            .state
            .numbers
            .write()
            .unwrap_or_else(PoisonError::into_inner) = numbers;
    }

    /// Revoke every token issued so far (static tokens stay valid).
    pub fn revoke_all(&self) {
        self.state.write_tokens().revoke_all();
    }

    /// Every token issued and still remembered, oldest first: for tests that scan
    /// what the proxy wrote or printed for a token.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.read_tokens().tokens()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.state.counters.snapshot()
    }

    /// Set every counter back to zero.
    pub fn reset_counters(&self) {
        self.state.counters.reset();
    }
}

/// Everything a [`Simulator`] handle shares.
struct State {
    username: String,
    password: RwLock<String>,
    /// The account's numbers (empty: any `from`).
    numbers: RwLock<Vec<String>>,
    invalidate_on_reauth: bool,
    token_shape: TokenShape,
    static_tokens: HashSet<String>,
    /// Atomics rather than a lock: read on every request.
    token_ttl_nanos: AtomicU64,
    latency_nanos: AtomicU64,
    /// The [`Simulator::hold_api`] gate.
    held: tokio::sync::watch::Sender<bool>,
    /// Read only by the auth endpoints, so a mutex is plenty.
    auth_mode: Mutex<AuthMode>,
    /// Never held across an await; a read lock on every API request.
    tokens: RwLock<TokenStore>,
    counters: CounterCells,
}

/// Who called a token-checked path, as the echo reports it.
#[derive(Clone, Copy, Debug)]
struct Caller {
    scheme: AuthScheme,
    /// The token's `jti` (0 for a static token).
    token_id: u64,
}

/// How the caller wrote its `Authorization` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthScheme {
    /// `Authorization: Bearer <token>`
    Bearer,
    /// `Authorization: <token>`
    Bare,
}

impl AuthScheme {
    fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::Bare => "bare",
        }
    }
}

impl State {
    fn auth_mode(&self) -> AuthMode {
        *self
            .auth_mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }

    fn token_ttl(&self) -> Duration {
        Duration::from_nanos(self.token_ttl_nanos.load(Ordering::Relaxed))
    }

    // The lock guards plain data whose invariants hold between statements, so a panic
    // elsewhere while holding it cannot leave it half-updated: recover from poisoning.
    fn read_tokens(&self) -> std::sync::RwLockReadGuard<'_, TokenStore> {
        self.tokens.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_tokens(&self) -> std::sync::RwLockWriteGuard<'_, TokenStore> {
        self.tokens.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn credentials_match(&self, username: &str, password: &str) -> bool {
        username == self.username
            && password == *self.password.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the account may send from `from`.
    fn owns_number(&self, from: &str) -> bool {
        let numbers = self.numbers.read().unwrap_or_else(PoisonError::into_inner);
        numbers.is_empty() || numbers.iter().any(|number| number == from)
    }

    /// Issue a token for `subject` with the current TTL and count it.
    fn issue_token(&self, subject: &str) -> String {
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let token = self.write_tokens().issue(
            subject,
            self.token_ttl(),
            self.token_shape,
            self.invalidate_on_reauth,
            Instant::now(),
            unix_now,
        );
        self.counters.tokens_issued.fetch_add(1, Ordering::Relaxed);
        token
    }

    /// Check the `Authorization` header of a request to a token-checked path.
    fn check_authorization(&self, headers: &axum::http::HeaderMap) -> Result<Caller, Rejection> {
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(Rejection::Missing);
        };
        let Ok(value) = value.to_str() else {
            return Err(Rejection::Unknown);
        };
        let value = value.trim();
        if value.eq_ignore_ascii_case("bearer") {
            return Err(Rejection::Missing);
        }
        let (scheme, token) = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                (AuthScheme::Bearer, token.trim())
            }
            _ => (AuthScheme::Bare, value),
        };
        if token.is_empty() {
            return Err(Rejection::Missing);
        }
        if self.static_tokens.contains(token) {
            return Ok(Caller {
                scheme,
                token_id: 0,
            });
        }
        let token_id = self.read_tokens().check(token, Instant::now())?;
        Ok(Caller { scheme, token_id })
    }
}

/// The counters as atomics, so that concurrent requests never wait on each other.
#[derive(Default)]
struct CounterCells {
    auth_calls: AtomicU64,
    tokens_issued: AtomicU64,
    api_calls: AtomicU64,
    unauthorized: AtomicU64,
    missing_token: AtomicU64,
    unknown_token: AtomicU64,
    revoked_token: AtomicU64,
    expired_token: AtomicU64,
    rejected_content: AtomicU64,
}

impl CounterCells {
    fn count_rejection(&self, rejection: Rejection) {
        let cell = match rejection {
            Rejection::Missing => &self.missing_token,
            Rejection::Unknown => &self.unknown_token,
            Rejection::Revoked => &self.revoked_token,
            Rejection::Expired => &self.expired_token,
        };
        cell.fetch_add(1, Ordering::Relaxed);
        self.unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    fn cells(&self) -> [&AtomicU64; 9] {
        [
            &self.rejected_content,
            &self.auth_calls,
            &self.tokens_issued,
            &self.api_calls,
            &self.unauthorized,
            &self.missing_token,
            &self.unknown_token,
            &self.revoked_token,
            &self.expired_token,
        ]
    }

    fn snapshot(&self) -> Counters {
        let load = |cell: &AtomicU64| cell.load(Ordering::Relaxed);
        Counters {
            auth_calls: load(&self.auth_calls),
            tokens_issued: load(&self.tokens_issued),
            api_calls: load(&self.api_calls),
            unauthorized: load(&self.unauthorized),
            missing_token: load(&self.missing_token),
            unknown_token: load(&self.unknown_token),
            revoked_token: load(&self.revoked_token),
            expired_token: load(&self.expired_token),
            rejected_content: load(&self.rejected_content),
        }
    }

    fn reset(&self) {
        for cell in self.cells() {
            cell.store(0, Ordering::Relaxed);
        }
    }
}

/// `Duration` → nanoseconds, saturating (u64 nanoseconds last 584 years).
fn duration_to_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// IntelePeer's answer to bad credentials and rejected tokens alike.
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({"code": 401, "error": "Unauthorized"})),
    )
        .into_response()
}

/// A JSON error in IntelePeer's shape, for the simulator's other refusals.
fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"code": status.as_u16(), "error": message})),
    )
        .into_response()
}
