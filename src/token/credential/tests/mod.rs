//! The credential's lifecycle in paused time: single flight, the generation compare,
//! the gates (backoff, reauth interval, static, rejection), the schedule, and the
//! fleet protocol with several credentials sharing one store as replicas do.
//!
//! This file holds the fakes and the set-up every group of tests shares; the groups
//! are the files beside it.

mod counts;
mod fleet;
mod flight;
mod outage;
mod reload;
mod timing;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, join_all};
use secrecy::{ExposeSecret, SecretString};

use super::refresh::RESYNC_CONFIRM;
use super::*;
use crate::secret::SecretFileError;
use crate::token::clock::testing::{FollowingClock, SeededRandom};
use crate::token::store::testing::{Down, RefusingWrites, down_store};
use crate::token::store::{
    Backend, BackendError, MemoryBackend, Sealer, StoreSettings, StoreState, StoredToken, WAIT_POLL,
};

const FORMAT: FormatId = FormatId(0);
/// Token lifetime the fake source issues.
const LIFETIME: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(5);

fn start_wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A token source that counts its fetches and can be told to fail or to take time.
#[derive(Debug, Default)]
struct Fake {
    fetches: AtomicU64,
    failure: Mutex<Option<AuthError>>,
    delay: Mutex<Duration>,
    kind: SourceKind,
    clock: Mutex<Option<FollowingClock>>,
    /// Issue tokens that are not JWTs (their lifetime is `token_ttl`).
    opaque: bool,
    /// What the next `reread` says: the secret file changed.
    changed: AtomicBool,
    /// Sets this source's tokens apart from another replica's (IntelePeer never
    /// issues one token twice).
    issuer: u64,
}

impl Fake {
    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    fn fail_with(&self, failure: Option<AuthError>) {
        *self.failure.lock().expect("lock") = failure;
    }

    fn take(&self, delay: Duration) {
        *self.delay.lock().expect("lock") = delay;
    }
}

/// A JWT-shaped token issued now by `issuer`, valid for [`LIFETIME`].
fn jwt(issued: u64, issuer: u64, id: u64) -> String {
    let payload = format!(
        r#"{{"crt":{issued},"exp":{},"iss":{issuer},"jti":{id}}}"#,
        issued + LIFETIME.as_secs()
    );
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

#[derive(Debug)]
struct Handle(Arc<Fake>);

impl TokenSource for Handle {
    fn kind(&self) -> SourceKind {
        self.0.kind
    }

    fn fetch(&self) -> BoxFuture<'_, Result<SecretString, AuthError>> {
        async move {
            let id = self.0.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            let delay = *self.0.delay.lock().expect("lock");
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(failure) = self.0.failure.lock().expect("lock").clone() {
                return Err(failure);
            }
            if self.0.kind == SourceKind::Static || self.0.opaque {
                return Ok(SecretString::from(format!("opaque-{}-{id}", self.0.issuer)));
            }
            let clock = self.0.clock.lock().expect("lock").expect("a clock");
            let issued = clock
                .wall()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("after the epoch")
                .as_secs();
            Ok(SecretString::from(jwt(issued, self.0.issuer, id)))
        }
        .boxed()
    }

    fn reread(&self) -> Result<bool, SecretFileError> {
        Ok(self.0.changed.swap(false, Ordering::SeqCst))
    }
}

fn settings() -> Settings {
    Settings {
        token_ttl: LIFETIME,
        refresh_before: Duration::from_secs(600),
        min_reauth_interval: Duration::from_secs(30),
        request_timeout: WAIT,
    }
}

/// A store over a backend that several credentials ("replicas") share, as a Redis
/// would be.
fn shared_store(backend: impl Backend + 'static) -> Store {
    Store::new(
        "memory",
        true,
        Box::new(backend),
        Sealer::from_key_lines(&"ab".repeat(32)).expect("a key"),
        StoreSettings {
            lock_ttl: Duration::from_secs(2),
            ..StoreSettings::default()
        },
    )
}

struct Replica {
    credential: Credential,
    source: Arc<Fake>,
}

fn replica(store: Store, seed: u64) -> Replica {
    replica_with(store, seed, settings(), false)
}

fn replica_with(store: Store, seed: u64, settings: Settings, opaque: bool) -> Replica {
    let clock = FollowingClock::starting_at(start_wall());
    let source = Arc::new(Fake {
        kind: SourceKind::Session,
        clock: Mutex::new(Some(clock)),
        opaque,
        issuer: seed,
        ..Fake::default()
    });
    let credential = Credential::new(CredentialParts {
        name: "default".to_owned(),
        settings,
        formats: vec![HeaderFormat::default()],
        source: Box::new(Handle(Arc::clone(&source))),
        store,
        clock: Arc::new(clock),
        random: Arc::new(SeededRandom::new(seed)),
    });
    Replica { credential, source }
}

/// Two replicas sharing one (in-process) store.
fn pair() -> (Replica, Replica) {
    let backend = Arc::new(MemoryBackend::default());
    (
        replica(shared_store(Arc::clone(&backend)), 1),
        replica(shared_store(backend), 2),
    )
}

fn alone() -> Replica {
    replica(Store::memory(), 7)
}

async fn first_token(credential: &Credential) -> Lease {
    credential
        .join_or_start(RefreshReason::Startup)
        .await
        .expect("the first login");
    credential.current(FORMAT).expect("a usable token")
}

impl Replica {
    /// What a 401 on `lease` gets: the lease to retry with, or `None` (the 401 goes
    /// back to the client).
    async fn after_401(&self, lease: &Lease) -> Option<Lease> {
        self.credential
            .lease_after_rejection(FORMAT, lease.generation, WAIT)
            .await
    }

    /// The token in the slot, which the test knows is there.
    fn current(&self) -> Lease {
        self.credential.current(FORMAT).expect("a token")
    }
}

/// Two replicas holding their first tokens; A's 401 logs in, and B adopts that token
/// on its own 401. Returns B's adopted lease.
async fn a_logs_in_on_a_401_and_b_adopts(a: &Replica, b: &Replica) -> Lease {
    let a_first = first_token(&a.credential).await;
    first_token(&b.credential).await;
    a.after_401(&a_first).await.expect("A's 401 login");
    b.after_401(&b.current()).await.expect("adopted")
}

/// A static credential (a token from a file) named `cpaas`.
fn static_credential(store: Store) -> (Credential, Arc<Fake>) {
    let source = Arc::new(Fake {
        kind: SourceKind::Static,
        ..Fake::default()
    });
    let credential = Credential::new(CredentialParts {
        name: "cpaas".to_owned(),
        settings: settings(),
        formats: vec![HeaderFormat::default()],
        source: Box::new(Handle(Arc::clone(&source))),
        store,
        clock: Arc::new(FollowingClock::starting_at(start_wall())),
        random: Arc::new(SeededRandom::new(1)),
    });
    (credential, source)
}

/// The refresh-ahead instant of the current token.
fn refresh_at(credential: &Credential) -> tokio::time::Instant {
    credential
        .inner
        .slot
        .with(|token| token.and_then(|token| token.times))
        .expect("session times")
        .refresh_at
}
