//! Where tokens live: `memory` (this process only) or `redis` (the fleet), behind one
//! [`Store`] handle over a small [`Backend`] trait of key-value operations.
//!
//! Everything that is the same for every backend lives here: the entry's key names
//! (`<prefix>:{<credential>}:token` and `:lock`, the braces a Redis Cluster hash tag),
//! the timeout on every operation, and the metrics of every operation. The entry's
//! sealed encoding is in `entry.rs`, the store's health (up, degraded or unreachable)
//! in `health.rs`, the refresh lock in `lock.rs`, the operations a backend offers in
//! `backend.rs`. A backend only moves bytes.
//!
//! Must not: log or count a token, a key or a lock value.

mod answers;
mod backend;
mod entry;
mod files;
mod health;
mod lock;
mod memory;
mod redis;
mod seal;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant, SystemTime};

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::{StoreConfig, defaults};
use crate::task::BackgroundTask;
use crate::telemetry::{self, trace};
pub use answers::{AnswerClaim, SealedAnswer};
pub use backend::{Backend, BackendError};
pub use entry::{Entry, StoredToken, generation_of};
use files::StoreFiles;
use health::{Change, StoreHealth};
pub use health::{Failure, StoreState};
pub use lock::LockLease;
pub use memory::MemoryBackend;
pub use redis::{RedisBackend, RedisSettings};
pub use seal::Sealer;

/// How often a shared store is pinged, so that an outage (and its end) is noticed
/// while no token operation needs the store.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// How often a replica waiting for another one's login looks at the entry again.
pub const WAIT_POLL: Duration = Duration::from_millis(50);

/// The store could not be used just now (unreachable, too slow, an error): the
/// caller carries on alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token store is unreachable")]
pub struct StoreDown;

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
            prefix: defaults::DEFAULT_STORE_PREFIX.to_owned(),
            timeout: defaults::DEFAULT_STORE_TIMEOUT,
            lock_ttl: defaults::DEFAULT_LOCK_TTL,
        }
    }
}

/// What `/readyz` shows of a shared store: `up` while it answers, `degraded` while
/// it answers but refuses writes.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    pub kind: &'static str,
    pub up: bool,
    pub degraded: bool,
    pub last_error: Option<String>,
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
    health: Mutex<StoreHealth>,
    /// The key the health probe writes to while the store is degraded, to see when
    /// it accepts writes again (`SET NX PX`, so it lives a second).
    probe_key: String,
    /// Counts recoveries from an outage; credentials converge when it moves.
    recovered: watch::Sender<u64>,
    /// The key file and URL a Redis store re-reads on SIGHUP.
    files: Option<StoreFiles>,
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
        let (files, sealer, backend) = StoreFiles::open(redis)?;
        telemetry::store_state(true, false);
        let settings = StoreSettings {
            prefix: redis.prefix.clone(),
            timeout: redis.timeout,
            lock_ttl: redis.lock_ttl,
        };
        Ok(Self::build(
            "redis",
            true,
            backend,
            sealer,
            settings,
            Some(files),
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
        Self::build(kind, shared, backend, sealer, settings, None)
    }

    fn build(
        kind: &'static str,
        shared: bool,
        backend: Box<dyn Backend>,
        sealer: Sealer,
        settings: StoreSettings,
        files: Option<StoreFiles>,
    ) -> Self {
        Self(Arc::new(Inner {
            kind,
            shared,
            backend: ArcSwap::from_pointee(backend),
            sealer: ArcSwap::from_pointee(sealer),
            probe_key: format!(
                "{}:probe:{}",
                settings.prefix,
                hex::encode(rand::random::<[u8; 8]>())
            ),
            settings,
            health: Mutex::new(StoreHealth::new(kind, shared)),
            recovered: watch::Sender::new(0),
            files,
        }))
    }

    pub fn kind(&self) -> &'static str {
        self.0.kind
    }

    pub fn is_shared(&self) -> bool {
        self.0.shared
    }

    /// Whether the store answers (it may still refuse writes: [`Store::state`]).
    pub fn is_up(&self) -> bool {
        self.state() != StoreState::Unreachable
    }

    pub fn state(&self) -> StoreState {
        self.lock_health().state()
    }

    /// Whether a write would be sent now: the store is up, or degraded with a write
    /// probe due. While it is not, writes fail at once without a command.
    pub fn accepts_writes(&self) -> bool {
        self.lock_health()
            .write_allowed(tokio::time::Instant::now())
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
            up: health.state() != StoreState::Unreachable,
            degraded: health.state() == StoreState::Degraded,
            last_error: health.last_error.clone(),
        })
    }

    /// Changes (a new count) each time the store comes back after an outage.
    pub fn recoveries(&self) -> watch::Receiver<u64> {
        self.0.recovered.subscribe()
    }

    /// SIGHUP: re-reads the key file (new keys, or the old ones kept when it cannot be
    /// read) and the `url_file` (reconnects when it changed); returns the files read,
    /// none for the memory store.
    pub fn reload(&self) -> Vec<std::path::PathBuf> {
        let Some(files) = &self.0.files else {
            return Vec::new();
        };
        let reloaded = files.reload();
        if let Some(sealer) = reloaded.sealer {
            self.replace_keys(sealer);
        }
        if let Some(backend) = reloaded.backend {
            self.replace_backend(backend);
        }
        reloaded.read
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

    /// Pings a shared store every `PROBE_INTERVAL` (2 s) so its health stays current,
    /// and while it is degraded tries a write when one is due (spaced by backoff), to
    /// see it accept writes again; `None` for a store only this process uses.
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
                let degraded_probe_due = store
                    .lock_health()
                    .write_probe_due(tokio::time::Instant::now());
                if degraded_probe_due {
                    let key = &store.0.probe_key;
                    let write = backend.set_if_absent(key, b"1", Duration::from_secs(1));
                    let _ = store.run_write("probe_write", write).await;
                } else {
                    let _ = store.run("ping", backend.ping()).await;
                }
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
            .run_write(
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

    fn seal(&self, credential: &str, stored: &StoredToken) -> Vec<u8> {
        entry::seal(&self.0.sealer.load(), credential, stored)
    }

    fn open(&self, credential: &str, generation: u64, value: &[u8]) -> Option<StoredToken> {
        entry::open(&self.0.sealer.load(), credential, generation, value)
    }

    /// Runs one writing operation, or fails at once while the store is degraded and
    /// no write probe is due: a store that refuses writes is not asked again and again.
    async fn run_write<T>(
        &self,
        op: &'static str,
        operation: BoxFuture<'_, Result<T, BackendError>>,
    ) -> Result<T, StoreDown> {
        // An unreachable store is still tried, as a read would be: its answer ends
        // the outage.
        let held_back = {
            let health = self.lock_health();
            health.state() == StoreState::Degraded
                && !health.write_probe_due(tokio::time::Instant::now())
        };
        if held_back {
            return Err(StoreDown);
        }
        self.run_op(op, true, operation).await
    }

    /// Runs one reading operation.
    async fn run<T>(
        &self,
        op: &'static str,
        operation: BoxFuture<'_, Result<T, BackendError>>,
    ) -> Result<T, StoreDown> {
        self.run_op(op, false, operation).await
    }

    /// Runs one backend operation within the timeout, recording its metrics, its
    /// span and the store's health. A store only this process uses gets no span (its
    /// operations take nanoseconds), nor do the health probe's `ping` and
    /// `probe_write` (every few seconds outside any request; `ipproxy_store_up` and
    /// `ipproxy_store_degraded` tell their story).
    async fn run_op<T>(
        &self,
        op: &'static str,
        write: bool,
        operation: BoxFuture<'_, Result<T, BackendError>>,
    ) -> Result<T, StoreDown> {
        let span = if self.0.shared && op != "ping" && op != "probe_write" {
            trace::store_span(self.0.kind, op)
        } else {
            tracing::Span::none()
        };
        let started = StdInstant::now();
        let outcome = tokio::time::timeout(self.0.settings.timeout, operation).await;
        let took = started.elapsed();
        let (result, failure) = match outcome {
            Ok(Ok(value)) => (Ok(value), None),
            Ok(Err(error)) => {
                let label = match error.failure {
                    Failure::Unreachable => "error",
                    Failure::Refused => "refused",
                };
                (Err(StoreDown), Some((label, error.failure, error.message)))
            }
            Err(_elapsed) => (
                Err(StoreDown),
                Some((
                    "timeout",
                    Failure::Unreachable,
                    format!("no answer within {:?}", self.0.settings.timeout),
                )),
            ),
        };
        if self.0.shared {
            let label = failure.as_ref().map_or("ok", |(label, _, _)| label);
            telemetry::store_operation(op, label, took);
            trace::record_store(&span, label);
        }
        let failure = failure.map(|(_, failure, why)| (failure, why));
        let change = self.lock_health().note(
            write,
            failure,
            tokio::time::Instant::now(),
            rand::random::<f64>(),
        );
        if change == Change::Recovered {
            self.0.recovered.send_modify(|count| *count += 1);
        }
        result
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, StoreHealth> {
        self.0
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod contract;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
