//! Where tokens live: `memory` (this process only) or `redis` (the fleet), behind one
//! [`Store`] handle over a small [`Backend`] trait of key-value operations.
//!
//! Everything that is the same for every backend lives here: the entry's key names
//! (`<prefix>:{<credential>}:token` and `:lock`, the braces a Redis Cluster hash tag),
//! its sealed encoding, the timeout on every operation, the store's health (one log
//! line when an outage starts and one when it ends, `ipproxy_store_up`), and the
//! metrics of every operation. A backend only moves bytes.
//!
//! An entry's value is `v1:<generation>:<base64url(nonce ‖ AES-256-GCM ciphertext)>`:
//! the generation is in the clear so that the compare-and-set can run inside the
//! store (a Lua script in Redis); it is also bound into the ciphertext, with the
//! credential name, so neither can be changed without the entry becoming unreadable.
//!
//! Must not: log or count a token, a key or a lock value.

mod answers;
mod memory;
mod redis;
mod seal;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::sync::watch;

use super::schedule::RefreshReason;
use crate::config::{RedisStoreConfig, SecretSource, StoreConfig};
use crate::task::BackgroundTask;
use crate::telemetry::{self, trace};
pub use answers::{AnswerClaim, SealedAnswer};
pub use memory::MemoryBackend;
pub use redis::{RedisBackend, RedisSettings};
pub use seal::Sealer;

/// A Redis backend for `redis` at `url` (the configured one, or a re-read
/// `url_file`).
pub fn redis_backend(
    redis: &RedisStoreConfig,
    url: SecretString,
) -> Result<Box<dyn Backend>, StoreConfigError> {
    let backend = RedisBackend::connect_lazily(&RedisSettings {
        url,
        ca_file: redis.ca_file.clone(),
        timeout: redis.timeout,
    })
    .map_err(|error| StoreConfigError::Url(error.0))?;
    Ok(Box::new(backend))
}

/// The keys of a store key file.
pub fn read_sealer(path: &std::path::Path) -> Result<Sealer, StoreConfigError> {
    let text = crate::secret::read_text(path, crate::secret::MAX_SECRET_FILE)
        .map_err(|error| StoreConfigError::KeyFile(error.to_string()))?;
    Sealer::from_key_lines(&text)
        .map_err(|error| StoreConfigError::KeyFile(format!("{}: {error}", path.display())))
}

/// How often a shared store is pinged, so that an outage (and its end) is noticed
/// while no token operation needs the store.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// How often a replica waiting for another one's login looks at the entry again.
pub const WAIT_POLL: Duration = Duration::from_millis(50);

/// The raw operations a store backend offers; their meaning is Redis's.
pub trait Backend: Send + Sync + fmt::Debug {
    /// `GET key`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>>;
    /// `SET key value NX PX ttl`: true when it was set.
    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;
    /// Sets `key` to `value` with `ttl` when the generation of its current value is
    /// `expected` (a missing or unreadable value counts as generation 0).
    fn set_if_generation<'a>(
        &'a self,
        key: &'a str,
        expected: u64,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;
    /// Deletes `key` when its value is `value`.
    fn delete_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, BackendError>>;
    /// Sets the TTL of `key` when its value is `value`.
    fn expire_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;
    /// A round trip (`PING`).
    fn ping(&self) -> BoxFuture<'_, Result<(), BackendError>>;
    /// Replaces the value of `key` with `value` and `ttl` when it is `expected`
    /// (idempotency: a claim's marker becomes its answer only for its holder). A
    /// backend without it refuses, as if it were down.
    fn set_if_equal<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        let _ = (key, expected, value, ttl);
        Box::pin(async { Err(BackendError("set_if_equal is not supported".into())) })
    }
}

/// A backend shared by several stores (replicas in one process, in tests).
impl<B: Backend + ?Sized> Backend for Arc<B> {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>> {
        (**self).get(key)
    }
    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        (**self).set_if_absent(key, value, ttl)
    }
    fn set_if_generation<'a>(
        &'a self,
        key: &'a str,
        expected: u64,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        (**self).set_if_generation(key, expected, value, ttl)
    }
    fn delete_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        (**self).delete_if_equal(key, value)
    }
    fn expire_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        (**self).expire_if_equal(key, value, ttl)
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        (**self).ping()
    }
    fn set_if_equal<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        (**self).set_if_equal(key, expected, value, ttl)
    }
}

/// A backend could not do what was asked. The text names no secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// The generation in the clear prefix of an entry's value; 0 when it has none.
pub fn generation_of(value: &[u8]) -> u64 {
    let Some(rest) = value.strip_prefix(b"v1:") else {
        return 0;
    };
    let digits = rest.iter().take_while(|byte| byte.is_ascii_digit()).count();
    if rest.get(digits) != Some(&b':') {
        return 0;
    }
    std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

/// A token as the fleet shares it.
#[derive(Clone)]
pub struct StoredToken {
    /// The fleet's generation: one more than the entry it replaced.
    pub generation: u64,
    pub token: SecretString,
    pub expires_at: SystemTime,
    /// When the login that obtained it started.
    pub obtained_at: SystemTime,
    /// Why it was obtained (a 401-caused login closes the fleet's reauth interval).
    pub reason: RefreshReason,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("StoredToken")
            .field("generation", &self.generation)
            .field("token", &"***")
            .field("expires_at", &self.expires_at)
            .field("obtained_at", &self.obtained_at)
            .field("reason", &self.reason)
            .finish()
    }
}

/// The sealed JSON inside an entry.
#[derive(serde::Serialize, serde::Deserialize)]
struct EntryBody {
    token: String,
    expires_at_ms: u64,
    obtained_at_ms: u64,
    reason: String,
}

/// What a read found.
#[derive(Debug, Clone)]
pub enum Entry {
    Absent,
    Present(StoredToken),
    /// There, but it does not open (another key, tampering, garbage): never used,
    /// replaced by the next login's entry.
    Unreadable {
        generation: u64,
    },
}

impl Entry {
    /// The generation a compare-and-set must expect to replace this entry.
    pub fn generation(&self) -> u64 {
        match self {
            Self::Absent => 0,
            Self::Present(stored) => stored.generation,
            Self::Unreadable { generation } => *generation,
        }
    }

    pub fn token(&self) -> Option<&StoredToken> {
        match self {
            Self::Present(stored) => Some(stored),
            _ => None,
        }
    }
}

/// The store could not be used just now (unreachable, too slow, an error): the
/// caller carries on alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token store is unreachable")]
pub struct StoreDown;

/// A held refresh lock: its random value, which only its holder knows.
#[derive(Clone)]
pub struct LockLease([u8; 16]);

impl fmt::Debug for LockLease {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("LockLease(***)")
    }
}

impl LockLease {
    fn value(&self) -> String {
        hex::encode(self.0)
    }
}

/// Timing and naming of a store.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Key prefix, e.g. `ipproxy`.
    pub prefix: String,
    /// Per operation; slower counts as unreachable.
    pub timeout: Duration,
    /// The refresh lock's lease, renewed every third of it while a login runs.
    pub lock_ttl: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            prefix: "ipproxy".to_owned(),
            timeout: Duration::from_millis(500),
            lock_ttl: Duration::from_secs(10),
        }
    }
}

/// What `/readyz` shows of a shared store.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    pub kind: &'static str,
    pub up: bool,
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Health {
    up: bool,
    last_error: Option<String>,
}

/// Where the tokens live. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    kind: &'static str,
    /// Other processes see it: `/readyz` and the metrics show it.
    shared: bool,
    /// Replaced whole when `url_file` changes (SIGHUP).
    backend: ArcSwap<Box<dyn Backend>>,
    sealer: ArcSwap<Sealer>,
    settings: StoreSettings,
    health: Mutex<Health>,
    /// Counts recoveries from an outage; credentials converge when it moves.
    recovered: watch::Sender<u64>,
}

/// The configured store cannot be used. Names the key, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreConfigError {
    #[error("store.key_file {0}")]
    KeyFile(String),
    #[error("store.url_file {0}")]
    UrlFile(String),
    #[error("store.url: {0}")]
    Url(String),
}

impl Store {
    /// The store `[store]` describes. Reads `key_file` (and `url_file`) now.
    pub fn from_config(config: &StoreConfig) -> Result<Self, StoreConfigError> {
        let StoreConfig::Redis(redis) = config else {
            return Ok(Self::memory());
        };
        let sealer = read_sealer(&redis.key_file)?;
        let url = match &redis.url {
            SecretSource::Inline(url) => url.clone(),
            SecretSource::File(path) => crate::secret::read_secret(path)
                .map_err(|error| StoreConfigError::UrlFile(error.to_string()))?,
        };
        let backend = redis_backend(redis, url)?;
        telemetry::store_up(true);
        Ok(Self::new(
            "redis",
            true,
            backend,
            sealer,
            StoreSettings {
                prefix: redis.prefix.clone(),
                timeout: redis.timeout,
                lock_ttl: redis.lock_ttl,
            },
        ))
    }

    /// The default: tokens live in this process only.
    pub fn memory() -> Self {
        Self::new(
            "memory",
            false,
            Box::new(MemoryBackend::default()),
            Sealer::ephemeral(),
            StoreSettings::default(),
        )
    }

    /// A store over `backend`; `shared` when other processes use it too.
    pub fn new(
        kind: &'static str,
        shared: bool,
        backend: Box<dyn Backend>,
        sealer: Sealer,
        settings: StoreSettings,
    ) -> Self {
        Self(Arc::new(Inner {
            kind,
            shared,
            backend: ArcSwap::from_pointee(backend),
            sealer: ArcSwap::from_pointee(sealer),
            settings,
            health: Mutex::new(Health {
                up: true,
                last_error: None,
            }),
            recovered: watch::Sender::new(0),
        }))
    }

    pub fn kind(&self) -> &'static str {
        self.0.kind
    }

    pub fn is_shared(&self) -> bool {
        self.0.shared
    }

    /// Whether the last operation reached the store.
    pub fn is_up(&self) -> bool {
        self.lock_health().up
    }

    pub fn lock_ttl(&self) -> Duration {
        self.0.settings.lock_ttl
    }

    /// For `/readyz`: `None` for a store that only this process uses.
    pub fn status(&self) -> Option<StoreStatus> {
        if !self.0.shared {
            return None;
        }
        let health = self.lock_health();
        Some(StoreStatus {
            kind: self.0.kind,
            up: health.up,
            last_error: health.last_error.clone(),
        })
    }

    /// Changes (a new count) each time the store comes back after an outage.
    pub fn recoveries(&self) -> watch::Receiver<u64> {
        self.0.recovered.subscribe()
    }

    /// Replaces the connection (a changed `url_file`); operations already under way
    /// finish on the old one.
    pub fn replace_backend(&self, backend: Box<dyn Backend>) {
        self.0.backend.store(std::sync::Arc::new(backend));
    }

    /// Replaces the keys (a re-read `key_file`).
    pub fn replace_keys(&self, sealer: Sealer) {
        self.0.sealer.store(Arc::new(sealer));
    }

    /// Pings a shared store every `PROBE_INTERVAL` (2 s) so its health stays current;
    /// `None` for a store only this process uses.
    pub fn start_probe(&self) -> Option<BackgroundTask> {
        if !self.0.shared {
            return None;
        }
        let store = self.clone();
        Some(BackgroundTask::spawn(async move {
            let mut interval = tokio::time::interval(PROBE_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let backend = store.0.backend.load_full();
                let _ = store.run("ping", backend.ping()).await;
            }
        }))
    }

    /// Reads the entry of `credential`.
    pub async fn read(&self, credential: &str) -> Result<Entry, StoreDown> {
        let key = self.key(credential, "token");
        let backend = self.0.backend.load_full();
        let value = self.run("read", backend.get(&key)).await?;
        let Some(value) = value else {
            return Ok(Entry::Absent);
        };
        let generation = generation_of(&value);
        match self.open(credential, generation, &value) {
            Some(stored) => Ok(Entry::Present(stored)),
            None => {
                telemetry::store_operation("read", "unreadable", Duration::ZERO);
                tracing::error!(
                    credential,
                    generation,
                    "the shared token entry does not open (another key, tampering or garbage): \
                     not used; the next login replaces it"
                );
                Ok(Entry::Unreadable { generation })
            }
        }
    }

    /// Takes the refresh lock of `credential` when it is free.
    pub async fn try_lock(&self, credential: &str) -> Result<Option<LockLease>, StoreDown> {
        let key = self.key(credential, "lock");
        let lease = LockLease(rand::random());
        let value = lease.value();
        let backend = self.0.backend.load_full();
        let taken = self
            .run(
                "lock",
                backend.set_if_absent(&key, value.as_bytes(), self.0.settings.lock_ttl),
            )
            .await?;
        Ok(taken.then_some(lease))
    }

    /// Extends a held lock by another `lock_ttl`; false when it was lost.
    pub async fn renew(&self, credential: &str, lease: &LockLease) -> Result<bool, StoreDown> {
        let key = self.key(credential, "lock");
        let value = lease.value();
        let backend = self.0.backend.load_full();
        self.run(
            "renew",
            backend.expire_if_equal(&key, value.as_bytes(), self.0.settings.lock_ttl),
        )
        .await
    }

    /// Releases a held lock (only if it is still this holder's).
    pub async fn release(&self, credential: &str, lease: LockLease) {
        let key = self.key(credential, "lock");
        let value = lease.value();
        let backend = self.0.backend.load_full();
        let _ = self
            .run("release", backend.delete_if_equal(&key, value.as_bytes()))
            .await;
    }

    /// Writes `stored` when the entry's generation is still `expected`; false when
    /// another replica wrote first. The Redis TTL is the token's remaining life.
    pub async fn write(
        &self,
        credential: &str,
        stored: &StoredToken,
        expected: u64,
        now_wall: SystemTime,
    ) -> Result<bool, StoreDown> {
        let Ok(remaining) = stored.expires_at.duration_since(now_wall) else {
            return Ok(false);
        };
        let key = self.key(credential, "token");
        let value = self.seal(credential, stored);
        let ttl = remaining.max(Duration::from_millis(1));
        let backend = self.0.backend.load_full();
        let written = self
            .run(
                "write",
                backend.set_if_generation(&key, expected, &value, ttl),
            )
            .await?;
        if !written {
            telemetry::store_operation("write", "conflict", Duration::ZERO);
        }
        Ok(written)
    }

    fn key(&self, credential: &str, what: &str) -> String {
        format!("{}:{{{credential}}}:{what}", self.0.settings.prefix)
    }

    fn associated(credential: &str, generation: u64) -> Vec<u8> {
        format!("ipproxy-token-v1:{credential}:{generation}").into_bytes()
    }

    fn seal(&self, credential: &str, stored: &StoredToken) -> Vec<u8> {
        let body = EntryBody {
            token: stored.token.expose_secret().to_owned(),
            expires_at_ms: unix_ms(stored.expires_at),
            obtained_at_ms: unix_ms(stored.obtained_at),
            reason: stored.reason.as_str().to_owned(),
        };
        let plaintext = serde_json::to_vec(&body).expect("an entry body serializes");
        let sealed = self
            .0
            .sealer
            .load()
            .seal(&plaintext, &Self::associated(credential, stored.generation));
        let mut value = format!("v1:{}:", stored.generation).into_bytes();
        value.extend_from_slice(URL_SAFE_NO_PAD.encode(sealed).as_bytes());
        value
    }

    fn open(&self, credential: &str, generation: u64, value: &[u8]) -> Option<StoredToken> {
        if generation == 0 {
            return None;
        }
        let prefix = format!("v1:{generation}:");
        let encoded = value.strip_prefix(prefix.as_bytes())?;
        let sealed = URL_SAFE_NO_PAD.decode(encoded).ok()?;
        let plaintext = self
            .0
            .sealer
            .load()
            .open(&sealed, &Self::associated(credential, generation))
            .ok()?;
        let body: EntryBody = serde_json::from_slice(&plaintext).ok()?;
        Some(StoredToken {
            generation,
            token: SecretString::from(body.token),
            expires_at: from_unix_ms(body.expires_at_ms),
            obtained_at: from_unix_ms(body.obtained_at_ms),
            reason: RefreshReason::parse(&body.reason)?,
        })
    }

    /// Runs one backend operation within the timeout, recording its metrics, its
    /// span and the store's health. A store only this process uses gets no span (its
    /// operations take nanoseconds), nor does the health probe's `ping` (every few
    /// seconds outside any request; `ipproxy_store_up` tells its story).
    async fn run<T>(
        &self,
        op: &'static str,
        operation: BoxFuture<'_, Result<T, BackendError>>,
    ) -> Result<T, StoreDown> {
        let span = if self.0.shared && op != "ping" {
            trace::store_span(self.0.kind, op)
        } else {
            tracing::Span::none()
        };
        let started = StdInstant::now();
        let outcome = tokio::time::timeout(self.0.settings.timeout, operation).await;
        let took = started.elapsed();
        let (result, failure) = match outcome {
            Ok(Ok(value)) => (Ok(value), None),
            Ok(Err(error)) => (Err(StoreDown), Some(("error", error.0))),
            Err(_elapsed) => (
                Err(StoreDown),
                Some((
                    "timeout",
                    format!("no answer within {:?}", self.0.settings.timeout),
                )),
            ),
        };
        if self.0.shared {
            let label = failure.as_ref().map_or("ok", |(label, _)| label);
            telemetry::store_operation(op, label, took);
            trace::record_store(&span, label);
        }
        self.note_health(failure.map(|(_, why)| why));
        result
    }

    fn note_health(&self, failure: Option<String>) {
        let mut health = self.lock_health();
        match failure {
            Some(why) => {
                if health.up {
                    tracing::warn!(
                        store = self.0.kind,
                        cause = %why,
                        "token store unreachable: this replica carries on alone"
                    );
                    telemetry::store_up(false);
                }
                health.up = false;
                health.last_error = Some(why);
            }
            None if !health.up => {
                tracing::info!(
                    store = self.0.kind,
                    "token store reachable again: converging on the shared token"
                );
                telemetry::store_up(true);
                health.up = true;
                drop(health);
                self.0.recovered.send_modify(|count| *count += 1);
            }
            None => {}
        }
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.0
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod contract;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
