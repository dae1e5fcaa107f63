//! The credential's lifecycle in paused time: single flight, the generation compare,
//! the gates (backoff, reauth interval, static, rejection), the schedule, and the
//! fleet protocol with several credentials sharing one store as replicas do.

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
    Backend, MemoryBackend, Sealer, StoreSettings, StoreState, StoredToken, WAIT_POLL,
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
fn shared_store(backend: Arc<MemoryBackend>) -> Store {
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

// --- single flight, generations, gates ---

#[tokio::test(start_paused = true)]
async fn requests_before_the_first_token_wait_for_that_one_fetch() {
    let one = alone();
    one.source.take(Duration::from_millis(300));
    let _task = one.credential.start();
    let leases = join_all((0..50).map(|_| one.credential.lease(FORMAT, WAIT))).await;
    assert!(leases.iter().all(Result::is_ok));
    assert_eq!(one.source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_401s_on_one_generation_cause_one_login() {
    let one = alone();
    let lease = first_token(&one.credential).await;
    let retries = join_all((0..20).map(|_| {
        one.credential
            .lease_after_rejection(FORMAT, lease.generation, WAIT)
    }))
    .await;
    assert!(retries.iter().all(|retry| {
        retry
            .as_ref()
            .is_some_and(|fresh| fresh.generation > lease.generation)
    }));
    assert_eq!(one.source.fetches(), 2, "startup + one 401-caused login");
}

#[tokio::test(start_paused = true)]
async fn a_401_on_an_older_generation_retries_with_the_current_token() {
    let one = alone();
    let old = first_token(&one.credential).await;
    let current = one.credential.force_refresh().await.expect("refresh");
    let retry = one
        .credential
        .lease_after_rejection(FORMAT, old.generation, WAIT)
        .await
        .expect("the current token");
    assert_eq!(retry.generation, current.generation);
    assert_eq!(
        one.source.fetches(),
        2,
        "no login for a 401 on an old token"
    );
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

#[tokio::test(start_paused = true)]
async fn a_static_credential_never_retries_a_401() {
    let (credential, source) = static_credential(Store::memory());
    let lease = first_token(&credential).await;
    assert_eq!(
        credential
            .lease_after_rejection(FORMAT, lease.generation, WAIT)
            .await
            .map(|lease| lease.generation),
        None
    );
    assert_eq!(source.fetches(), 1, "nothing fresher exists: no fetch");
    assert!(credential.status().ready);
}

#[tokio::test(start_paused = true)]
async fn a_failed_401_refresh_passes_the_401_and_unreadies_until_a_refresh_succeeds() {
    let one = alone();
    let lease = first_token(&one.credential).await;
    one.source.fail_with(Some(AuthError::BadCredentials));
    let retry = one
        .credential
        .lease_after_rejection(FORMAT, lease.generation, WAIT)
        .await;
    assert!(retry.is_none(), "the 401 goes back as it came");
    let status = one.credential.status();
    assert!(status.rejected && !status.ready, "{status:?}");
    assert!(
        one.credential.current(FORMAT).is_some(),
        "the token is unexpired"
    );

    one.source.fail_with(None);
    one.credential.force_refresh().await.expect("a refresh");
    let status = one.credential.status();
    assert!(!status.rejected && status.ready, "{status:?}");
}

#[tokio::test(start_paused = true)]
async fn a_401_during_backoff_causes_no_login() {
    let one = alone();
    let lease = first_token(&one.credential).await;
    one.source
        .fail_with(Some(AuthError::Unreachable("down".into())));
    // A failed refresh for another reason starts the backoff.
    assert!(one.credential.force_refresh().await.is_err());
    let before = one.source.fetches();
    let retry = one
        .credential
        .lease_after_rejection(FORMAT, lease.generation, WAIT)
        .await;
    assert!(retry.is_none());
    assert_eq!(one.source.fetches(), before, "backing off: no login");
}

#[tokio::test(start_paused = true)]
async fn a_hundred_content_401s_cause_one_login_per_reauth_interval() {
    let one = alone();
    first_token(&one.credential).await;
    let mut retried = 0;
    for _ in 0..100 {
        let current = one.credential.current(FORMAT).expect("a token");
        if one
            .credential
            .lease_after_rejection(FORMAT, current.generation, WAIT)
            .await
            .is_some()
        {
            retried += 1;
        }
    }
    assert_eq!(one.source.fetches(), 2, "startup + one 401-caused login");
    assert_eq!(retried, 1, "only the first 401 was retried");

    // Other reasons neither count nor wait for the interval.
    one.credential
        .force_refresh()
        .await
        .expect("manual refresh");
    assert_eq!(one.source.fetches(), 3);

    tokio::time::advance(settings().min_reauth_interval).await;
    let current = one.credential.current(FORMAT).expect("a token");
    assert!(
        one.credential
            .lease_after_rejection(FORMAT, current.generation, WAIT)
            .await
            .is_some(),
        "the interval has passed"
    );
    assert_eq!(one.source.fetches(), 4);

    // Well after the interval that login opened, a 401 logs in again.
    tokio::time::advance(settings().min_reauth_interval * 2).await;
    let current = one.credential.current(FORMAT).expect("a token");
    assert!(
        one.credential
            .lease_after_rejection(FORMAT, current.generation, WAIT)
            .await
            .is_some(),
        "long past the interval"
    );
    assert_eq!(one.source.fetches(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_401_while_a_401_login_is_in_flight_joins_it() {
    let one = alone();
    let lease = first_token(&one.credential).await;
    one.source.take(Duration::from_millis(500));
    let (first, second) = tokio::join!(
        one.credential
            .lease_after_rejection(FORMAT, lease.generation, WAIT),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            one.credential
                .lease_after_rejection(FORMAT, lease.generation, WAIT)
                .await
        }
    );
    assert_eq!(
        first.map(|lease| lease.generation),
        second.map(|lease| lease.generation)
    );
    assert_eq!(one.source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_refresh_ahead_comes_at_the_margin_minus_seeded_jitter() {
    let one = alone();
    let _task = one.credential.start();
    one.credential
        .lease(FORMAT, WAIT)
        .await
        .expect("first token");
    let refresh_at = one
        .credential
        .inner
        .slot
        .with(|token| token.and_then(|token| token.times))
        .expect("session times")
        .refresh_at;
    let now = tokio::time::Instant::now();
    let margin = Duration::from_secs(600);
    let earliest = now + LIFETIME - margin - margin / 10 - Duration::from_secs(1);
    assert!(refresh_at <= now + LIFETIME - margin && refresh_at >= earliest);
    tokio::time::sleep_until(refresh_at - Duration::from_millis(10)).await;
    assert_eq!(one.source.fetches(), 1, "not before its time");
    tokio::time::sleep_until(refresh_at + Duration::from_millis(10)).await;
    assert_eq!(one.source.fetches(), 2, "refreshed at its time");
}

#[tokio::test(start_paused = true)]
async fn without_a_token_and_in_backoff_a_request_fails_at_once_with_retry_after() {
    let one = alone();
    one.source.fail_with(Some(AuthError::BadCredentials));
    let _task = one.credential.start();
    let failed = one.credential.lease(FORMAT, WAIT).await;
    let started = tokio::time::Instant::now();
    let unavailable = one
        .credential
        .lease(FORMAT, WAIT)
        .await
        .expect_err("no token, no fetch in flight");
    assert!(failed.is_err());
    assert_eq!(started.elapsed(), Duration::ZERO, "answered at once");
    assert!(unavailable.retry_after <= schedule::BACKOFF_BASE);
}

// --- the fleet ---

#[tokio::test(start_paused = true)]
async fn three_replicas_starting_together_make_one_login() {
    let backend = Arc::new(MemoryBackend::default());
    let replicas: Vec<Replica> = (0..3)
        .map(|seed| replica(shared_store(Arc::clone(&backend)), seed))
        .collect();
    for replica in &replicas {
        replica.source.take(Duration::from_millis(200));
    }
    let tokens = join_all(
        replicas
            .iter()
            .map(|replica| first_token(&replica.credential)),
    )
    .await;
    let logins: u64 = replicas
        .iter()
        .map(|replica| replica.source.fetches())
        .sum();
    assert_eq!(logins, 1, "one login for the fleet");
    let headers: Vec<_> = tokens.iter().map(|lease| lease.header.clone()).collect();
    assert!(
        headers.windows(2).all(|pair| pair[0] == pair[1]),
        "one token"
    );
}

#[tokio::test(start_paused = true)]
async fn a_401_adopts_the_fleets_newer_token_instead_of_logging_in() {
    let (a, b) = pair();
    first_token(&a.credential).await;
    let b_old = first_token(&b.credential).await;
    // A logs in again (an operator's /refresh); B's token is the older one now.
    let newer = a.credential.force_refresh().await.expect("refresh");
    let retry = b
        .credential
        .lease_after_rejection(FORMAT, b_old.generation, WAIT)
        .await
        .expect("a newer token");
    assert_eq!(retry.header, newer.header(FORMAT).clone());
    assert_eq!(b.source.fetches(), 0, "B never logged in");
}

#[tokio::test(start_paused = true)]
async fn a_401_caused_login_in_the_fleet_closes_the_interval_for_every_replica() {
    let (a, b) = pair();
    let a_first = first_token(&a.credential).await;
    first_token(&b.credential).await;
    a.credential
        .lease_after_rejection(FORMAT, a_first.generation, WAIT)
        .await
        .expect("A's 401 login");
    // B adopts A's token on its own 401, then a content-401 on it is not a login.
    let b_current = b.credential.current(FORMAT).expect("token");
    let adopted = b
        .credential
        .lease_after_rejection(FORMAT, b_current.generation, WAIT)
        .await
        .expect("adopted");
    let again = b
        .credential
        .lease_after_rejection(FORMAT, adopted.generation, WAIT)
        .await;
    assert!(again.is_none(), "suppressed fleet-wide");
    let logins = a.source.fetches() + b.source.fetches();
    assert_eq!(logins, 2, "the first login and one 401-caused login");
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_died_holding_the_lock_delays_the_others_by_at_most_lock_ttl() {
    let backend = Arc::new(MemoryBackend::default());
    let store = shared_store(Arc::clone(&backend));
    // The dead replica's lock: taken and never released or renewed.
    let _dead = store
        .try_lock("default")
        .await
        .expect("store up")
        .expect("free");
    let other = replica(store.clone(), 3);
    let started = tokio::time::Instant::now();
    first_token(&other.credential).await;
    let waited = started.elapsed();
    assert!(waited <= store.lock_ttl() + WAIT_POLL, "waited {waited:?}");
    assert!(
        waited >= store.lock_ttl() - WAIT_POLL,
        "waited for the lease: {waited:?}"
    );
    assert_eq!(other.source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_entry_that_does_not_open_is_never_used_and_is_replaced() {
    let backend = Arc::new(MemoryBackend::default());
    backend
        .set_if_absent(
            "ipproxy:{default}:token",
            b"v1:9:garbage",
            Duration::from_secs(60),
        )
        .await
        .expect("memory");
    let one = replica(shared_store(Arc::clone(&backend)), 1);
    first_token(&one.credential).await;
    assert_eq!(one.source.fetches(), 1, "logged in instead");
    let entry = shared_store(backend).read("default").await.expect("up");
    assert_eq!(entry.generation(), 10, "replaced by the login's entry");
    assert!(entry.token().is_some());
}

#[tokio::test(start_paused = true)]
async fn with_the_store_down_a_replica_logs_in_alone_and_shows_it() {
    let store = down_store();
    let one = replica(store.clone(), 1);
    first_token(&one.credential).await;
    assert_eq!(one.source.fetches(), 1);
    let status = store.status().expect("a shared store shows its state");
    assert!(!status.up);
    assert_eq!(status.last_error.as_deref(), Some("connection refused"));
    assert!(
        one.credential.status().ready,
        "the store alone never unreadies"
    );
}

#[tokio::test(start_paused = true)]
async fn a_401_answered_by_adopting_does_not_close_the_reauth_interval() {
    let (a, b) = pair();
    first_token(&a.credential).await;
    first_token(&b.credential).await;
    for _ in 0..3 {
        // Another replica logs in (its refresh ahead); B's token is now the old one.
        a.credential.force_refresh().await.expect("refresh");
        let b_old = b.credential.current(FORMAT).expect("token");
        assert!(
            b.credential
                .lease_after_rejection(FORMAT, b_old.generation, WAIT)
                .await
                .is_some(),
            "every such 401 is retried with the fleet's token"
        );
    }
    assert_eq!(b.source.fetches(), 0);
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

#[tokio::test(start_paused = true)]
async fn a_jwt_exp_sets_the_lifetime_whatever_token_ttl_says() {
    let short_ttl = Settings {
        token_ttl: Duration::from_secs(2),
        ..settings()
    };
    let one = replica_with(Store::memory(), 5, short_ttl, false);
    let started = tokio::time::Instant::now();
    first_token(&one.credential).await;
    // The JWT lives an hour: refresh 10 min (minus jitter) before its end, not at 1 s.
    let ahead = refresh_at(&one.credential) - started;
    let margin = Duration::from_secs(600);
    assert!(
        ahead <= LIFETIME - margin && ahead >= LIFETIME - margin - margin / 10,
        "{ahead:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_opaque_token_lives_token_ttl_and_refreshes_at_half_of_a_short_one() {
    let two_seconds = Settings {
        token_ttl: Duration::from_secs(2),
        ..settings()
    };
    let one = replica_with(Store::memory(), 5, two_seconds, true);
    let _task = one.credential.start();
    let started = tokio::time::Instant::now();
    one.credential
        .lease(FORMAT, WAIT)
        .await
        .expect("first token");
    let ahead = refresh_at(&one.credential) - started;
    // margin = min(refresh_before, 2 s / 2) = 1 s, minus up to 10 % of it.
    assert!(
        ahead <= Duration::from_secs(1) && ahead >= Duration::from_millis(900),
        "{ahead:?}"
    );
    tokio::time::sleep(Duration::from_millis(1010)).await;
    assert_eq!(one.source.fetches(), 2, "refreshed at half-life");
}

#[tokio::test(start_paused = true)]
async fn failed_logins_are_retried_on_the_seeded_backoff_schedule() {
    const SEED: u64 = 42;
    let one = replica(Store::memory(), SEED);
    one.source.fail_with(Some(AuthError::BadCredentials));
    let _task = one.credential.start();
    let window = Duration::from_secs(60);
    // The same draws the credential makes: one per failure, for its backoff.
    let draws = SeededRandom::new(SEED);
    let mut at = Duration::ZERO;
    let mut expected = 0;
    let mut failures = 0;
    while at < window {
        expected += 1;
        failures += 1;
        at += schedule::backoff(failures, None, draws.unit());
    }
    tokio::time::sleep(window - Duration::from_millis(1)).await;
    assert_eq!(one.source.fetches(), expected, "attempts in {window:?}");
    let status = one.credential.status();
    assert_eq!(u64::from(status.consecutive_failures), expected);
    assert!(!status.ready);
}

#[tokio::test(start_paused = true)]
async fn a_closed_reauth_interval_still_adopts_the_fleets_newer_token() {
    let (a, b) = pair();
    let b_first = first_token(&b.credential).await;
    first_token(&a.credential).await;
    // B's 401-caused login closes B's interval.
    b.credential
        .lease_after_rejection(FORMAT, b_first.generation, WAIT)
        .await
        .expect("B's 401 login");
    let logins = b.source.fetches();
    // A logs in again; B's next 401 must adopt A's token, not pass through.
    let newer = a.credential.force_refresh().await.expect("refresh");
    let b_current = b.credential.current(FORMAT).expect("token");
    let retry = b
        .credential
        .lease_after_rejection(FORMAT, b_current.generation, WAIT)
        .await
        .expect("adopted within B's closed interval");
    assert_eq!(retry.header, newer.header(FORMAT).clone());
    // And a content-401 on that token is still suppressed: no login.
    assert!(
        b.credential
            .lease_after_rejection(FORMAT, retry.generation, WAIT)
            .await
            .is_none()
    );
    assert_eq!(b.source.fetches(), logins);
}

// --- reloads (SIGHUP) ---

#[tokio::test(start_paused = true)]
async fn a_reload_logs_in_when_no_token_is_usable_or_the_password_changed() {
    let one = alone();
    assert!(one.credential.reload(), "no token yet: a login");
    one.credential
        .join_or_start(RefreshReason::Reload)
        .await
        .expect("the reload's login");
    assert_eq!(one.source.fetches(), 1, "joined the reload's login");

    assert!(
        !one.credential.reload(),
        "a usable token, the same password"
    );
    one.source.changed.store(true, Ordering::SeqCst);
    assert!(one.credential.reload(), "a changed password");
    one.credential
        .join_or_start(RefreshReason::Reload)
        .await
        .expect("the reload's login");
    assert_eq!(one.source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_static_credential_reloads_only_a_changed_token_file() {
    let (credential, source) = static_credential(Store::memory());
    assert!(!credential.reload(), "no token yet, the file unchanged");
    assert_eq!(source.fetches(), 0);
    source.changed.store(true, Ordering::SeqCst);
    assert!(credential.reload(), "the file changed");
    credential
        .join_or_start(RefreshReason::FileChanged)
        .await
        .expect("stored");
    assert_eq!(source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_static_token_never_goes_to_the_shared_store() {
    let backend = Arc::new(MemoryBackend::default());
    let (credential, source) = static_credential(shared_store(Arc::clone(&backend)));
    first_token(&credential).await;
    assert_eq!(source.fetches(), 1);
    let entry = backend.get("ipproxy:{cpaas}:token").await.expect("memory");
    assert_eq!(entry, None, "every replica reads the file itself");
}

#[tokio::test(start_paused = true)]
async fn a_static_credential_never_asks_the_shared_store() {
    // A store that fails every operation, not yet known to: one asked would show.
    let store = down_store();
    let (credential, source) = static_credential(store.clone());
    first_token(&credential).await;
    credential.force_refresh().await.expect("re-read");
    assert_eq!(source.fetches(), 2);
    assert!(store.is_up(), "no operation reached the store");
}

// --- what the lifecycle counts ---

#[tokio::test(start_paused = true)]
async fn logins_adoptions_failures_and_suppressed_401s_are_counted() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    // Spawned flights run on this (current-thread) runtime's thread: they record here.
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let (a, b) = pair();
    let a_first = first_token(&a.credential).await;
    first_token(&b.credential).await;
    a.credential
        .lease_after_rejection(FORMAT, a_first.generation, WAIT)
        .await
        .expect("A's 401 login");
    // B adopts A's token on its own 401; a content-401 on that one is suppressed.
    let b_current = b.credential.current(FORMAT).expect("token");
    let adopted = b
        .credential
        .lease_after_rejection(FORMAT, b_current.generation, WAIT)
        .await
        .expect("adopted");
    assert!(
        b.credential
            .lease_after_rejection(FORMAT, adopted.generation, WAIT)
            .await
            .is_none()
    );
    a.source.fail_with(Some(AuthError::BadCredentials));
    assert!(a.credential.force_refresh().await.is_err());

    let text = metrics.render();
    let refreshes = |labels: &str| format!("ipproxy_token_refreshes_total{{{labels}}} ");
    for (labels, count) in [
        (
            r#"credential="default",reason="startup",result="ok",source="login""#,
            1,
        ),
        (
            r#"credential="default",reason="startup",result="ok",source="store""#,
            1,
        ),
        (
            r#"credential="default",reason="401",result="ok",source="login""#,
            1,
        ),
        (
            r#"credential="default",reason="401",result="ok",source="store""#,
            1,
        ),
        (
            r#"credential="default",reason="manual",result="error",source="login""#,
            1,
        ),
    ] {
        let line = format!("{}{count}", refreshes(labels));
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    let suppressed = r#"ipproxy_reauth_suppressed_total{credential="default"} 1"#;
    assert!(
        text.lines().any(|l| l == suppressed),
        "{suppressed} in:\n{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_the_store_down_a_content_401_is_still_suppressed_by_the_interval() {
    let store = down_store();
    let one = replica(store, 1);
    let first = first_token(&one.credential).await;
    let fresh = one
        .credential
        .lease_after_rejection(FORMAT, first.generation, WAIT)
        .await
        .expect("the first 401 logs in");
    assert!(
        one.credential
            .lease_after_rejection(FORMAT, fresh.generation, WAIT)
            .await
            .is_none(),
        "a 401 on the fresh token within the interval"
    );
    assert_eq!(one.source.fetches(), 2, "startup + one 401-caused login");
}

#[tokio::test(start_paused = true)]
async fn a_replica_stuck_holding_the_lock_is_waited_for_lock_ttl_plus_request_timeout() {
    let store = shared_store(Arc::new(MemoryBackend::default()));
    let stuck = store
        .try_lock("default")
        .await
        .expect("store up")
        .expect("free");
    // Alive but stuck: it keeps renewing its lock and never writes an entry.
    let renewing = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(store.lock_ttl() / 3).await;
                assert!(store.renew("default", &stuck).await.expect("store up"));
            }
        })
    };
    let other = replica(store.clone(), 3);
    let started = tokio::time::Instant::now();
    first_token(&other.credential).await;
    // Polled every WAIT_POLL: the first look past the deadline logs in alone.
    assert_eq!(started.elapsed(), store.lock_ttl() + WAIT);
    assert_eq!(other.source.fetches(), 1);
    renewing.abort();
}

#[tokio::test(start_paused = true)]
async fn a_login_longer_than_lock_ttl_keeps_its_lock_and_the_fleet_waits_for_it() {
    let (a, b) = pair();
    // Longer than lock_ttl (2 s), shorter than what a waiter waits (lock_ttl + 5 s).
    a.source.take(Duration::from_secs(5));
    let (a_token, b_token) = tokio::join!(first_token(&a.credential), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        first_token(&b.credential).await
    });
    assert_eq!(
        a.source.fetches() + b.source.fetches(),
        1,
        "the lock was renewed"
    );
    assert_eq!(a_token.header, b_token.header);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_ahead_logs_in_rather_than_adopt_a_token_itself_due_but_a_401_adopts_it() {
    // Past every refresh instant (an hour's token, 10 min margin minus jitter), not
    // yet expired.
    let due = LIFETIME - Duration::from_secs(590);
    let (a, b) = pair();
    first_token(&a.credential).await;
    first_token(&b.credential).await;
    a.credential.force_refresh().await.expect("a newer entry");
    tokio::time::advance(due).await;
    b.credential
        .join_or_start(RefreshReason::Ahead)
        .await
        .expect("refreshed");
    assert_eq!(b.source.fetches(), 1, "the fleet's newer token is due too");

    let (a, b) = pair();
    first_token(&a.credential).await;
    let b_old = first_token(&b.credential).await;
    a.credential.force_refresh().await.expect("a newer entry");
    tokio::time::advance(due).await;
    b.credential
        .lease_after_rejection(FORMAT, b_old.generation, WAIT)
        .await
        .expect("the newer token, due or not");
    assert_eq!(b.source.fetches(), 0, "a 401 adopts what the fleet has");
}

#[tokio::test(start_paused = true)]
async fn logins_with_the_store_down_still_count_the_fleet_generation_up() {
    let store = down_store();
    let one = replica(store, 1);
    let fleet_generation = |credential: &Credential| {
        credential
            .inner
            .slot
            .with(|token| token.map(|token| token.fleet_generation))
    };
    first_token(&one.credential).await;
    assert_eq!(fleet_generation(&one.credential), Some(1));
    one.credential.force_refresh().await.expect("refresh");
    assert_eq!(fleet_generation(&one.credential), Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_401_logs_in_again_from_the_instant_the_backoff_ends() {
    let one = alone();
    let started = tokio::time::Instant::now();
    let lease = first_token(&one.credential).await;
    assert_eq!(one.credential.status().last_refresh, Some(start_wall()));
    one.source
        .fail_with(Some(AuthError::Unreachable("down".into())));
    assert!(one.credential.force_refresh().await.is_err());
    one.source.fail_with(None);
    let retry_at = one
        .credential
        .lock_state()
        .health
        .retry_at
        .expect("backing off");
    // Exactly there (a timer would wake up to a millisecond late).
    tokio::time::advance(retry_at - tokio::time::Instant::now()).await;
    assert!(
        one.credential
            .lease_after_rejection(FORMAT, lease.generation, WAIT)
            .await
            .is_some(),
        "the backoff is over at its deadline"
    );
    assert_eq!(one.source.fetches(), 3);
    let deadline = start_wall() + (retry_at - started);
    assert_eq!(one.credential.status().last_refresh, Some(deadline));
}

#[tokio::test(start_paused = true)]
async fn after_an_outage_the_replicas_converge_on_one_token_without_a_login() {
    let backend = Arc::new(MemoryBackend::default());
    let stores = [
        shared_store(Arc::clone(&backend)),
        shared_store(Arc::clone(&backend)),
    ];
    let a = replica(stores[0].clone(), 1);
    let b = replica(stores[1].clone(), 2);
    // Down from the start: each replica logs in alone.
    for store in &stores {
        store.replace_backend(Box::new(Down));
    }
    let a_own = first_token(&a.credential).await;
    // A second later: another token.
    tokio::time::advance(Duration::from_secs(1)).await;
    let b_own = first_token(&b.credential).await;
    assert_ne!(a_own.header, b_own.header);
    // Back, and empty (a restarted Redis); each replica sees it answer again.
    for store in &stores {
        store.replace_backend(Box::new(Arc::clone(&backend)));
        store.read("default").await.expect("back");
    }
    let a_before = a.credential.inner.slot.load().expect("A's token");
    for replica in [&a, &b] {
        replica
            .credential
            .join_or_start(RefreshReason::Resync)
            .await
            .expect("converged");
    }
    // A published its token (at its own generation 1); B's was obtained a second
    // later, so it is the newer one: B replaced the entry with it and kept it.
    let entry = stores[0].read("default").await.expect("up");
    assert_eq!(entry.generation(), 2);
    let a_after = a.credential.inner.slot.load().expect("A's token");
    assert!(
        Arc::ptr_eq(&a_before, &a_after),
        "A kept its own token so far"
    );
    let b_current = b.credential.current(FORMAT).expect("B's token");
    assert_eq!(
        b_current.header, b_own.header,
        "B never went back to A's older token"
    );
    // The second look after the recovery: A adopts B's newer token.
    a.credential
        .join_or_start(RefreshReason::Resync)
        .await
        .expect("converged");
    let a_current = a.credential.current(FORMAT).expect("A's token");
    assert_eq!(a_current.header, b_own.header, "one token for the fleet");
    assert_eq!(
        a.source.fetches() + b.source.fetches(),
        2,
        "no login to converge"
    );
}

#[tokio::test(start_paused = true)]
async fn after_an_outage_a_replica_keeps_the_token_it_obtained_alone_over_the_older_entry() {
    // The sequence of a real incident: a 401-caused login writes generation 2, the
    // store stops answering, an operator's refresh logs in alone (token 3, and
    // IntelePeer revokes token 2), the store answers again.
    let backend = Arc::new(MemoryBackend::default());
    let store = shared_store(Arc::clone(&backend));
    let one = replica(store.clone(), 1);
    let _task = one.credential.start();
    let first = first_token(&one.credential).await;
    let second = one
        .credential
        .lease_after_rejection(FORMAT, first.generation, WAIT)
        .await
        .expect("the 401-caused login");
    assert_eq!(store.read("default").await.expect("up").generation(), 2);
    store.replace_backend(Box::new(Down));
    let alone = one
        .credential
        .force_refresh()
        .await
        .expect("logged in alone");
    assert!(!store.is_up());
    assert_eq!(one.source.fetches(), 3);
    store.replace_backend(Box::new(Arc::clone(&backend)));
    // The health probe is not running here: the next operation finds it back, and
    // the refresh loop converges.
    store.read("default").await.expect("back");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let entry = store.read("default").await.expect("up");
    let stored = entry.token().expect("published");
    assert_eq!(
        stored.token.expose_secret(),
        alone.secret.expose_secret(),
        "the entry now holds the newest token"
    );
    assert!(entry.generation() > 2);
    let current = one.credential.current(FORMAT).expect("a token");
    assert_eq!(current.header, alone.header(FORMAT).clone(), "kept its own");
    assert_ne!(
        current.header, second.header,
        "never back to the revoked token"
    );
    // And the second look after the recovery changes nothing.
    tokio::time::sleep(RESYNC_CONFIRM * 2 + Duration::from_secs(1)).await;
    let current = one.credential.current(FORMAT).expect("a token");
    assert_eq!(current.header, alone.header(FORMAT).clone());
    assert_eq!(one.source.fetches(), 3, "no login to converge");
}

#[tokio::test(start_paused = true)]
async fn a_token_rejected_here_is_never_adopted_from_the_store() {
    let backend = Arc::new(MemoryBackend::default());
    let store = shared_store(Arc::clone(&backend));
    let one = replica(store.clone(), 1);
    let first = first_token(&one.credential).await;
    let rejected_token = one.credential.inner.slot.load().expect("token");
    // The store goes away; a 401 on the first token: a login alone.
    store.replace_backend(Box::new(Down));
    let fresh = one
        .credential
        .lease_after_rejection(FORMAT, first.generation, WAIT)
        .await
        .expect("the 401-caused login alone");
    // Back, with an entry that holds the rejected token at a higher generation (a
    // replica that never saw the 401 wrote it during the outage).
    store.replace_backend(Box::new(Arc::clone(&backend)));
    let planted = StoredToken {
        generation: 9,
        token: rejected_token.secret.clone(),
        expires_at: rejected_token.expires_at().expect("a session token"),
        obtained_at: start_wall() + Duration::from_secs(60),
        reason: RefreshReason::Ahead,
    };
    let seen = store.read("default").await.expect("up").generation();
    assert!(
        store
            .write("default", &planted, seen, start_wall())
            .await
            .expect("up")
    );
    one.credential
        .join_or_start(RefreshReason::Resync)
        .await
        .expect("converged");
    let current = one.credential.current(FORMAT).expect("a token");
    assert_eq!(
        current.header, fresh.header,
        "the rejected token was not adopted"
    );
    let entry = store.read("default").await.expect("up");
    assert_eq!(
        entry.token().expect("published").token.expose_secret(),
        one.credential
            .inner
            .slot
            .load()
            .expect("token")
            .secret
            .expose_secret(),
        "ours replaced it"
    );
    assert_eq!(entry.generation(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_refuses_writes_is_degraded_without_a_loop() {
    let backend = Arc::new(RefusingWrites::default());
    let store = Store::new(
        "redis",
        true,
        Box::new(Arc::clone(&backend)),
        Sealer::ephemeral(),
        StoreSettings::default(),
    );
    let _probe = store.start_probe();
    let one = replica(store.clone(), 1);
    let _task = one.credential.start();
    first_token(&one.credential).await;
    assert_eq!(store.state(), StoreState::Degraded, "its lock was refused");
    one.credential.force_refresh().await.expect("a login alone");
    let before = backend.operations();
    let window = Duration::from_secs(120);
    tokio::time::sleep(window).await;
    let operations = backend.operations() - before;
    // The probe's ping every 2 s and its write probes (2, 4, 8, … up to 60 s apart),
    // nothing more: no resync loop.
    assert!(operations <= 70, "{operations} operations in {window:?}");
    assert_eq!(store.state(), StoreState::Degraded);
    assert_eq!(one.source.fetches(), 2, "no login beyond the two asked for");
    // Writes are accepted again: the next write probe ends it, and the replica
    // publishes its token.
    backend.accept_writes();
    // At most 60 s to the next write probe, plus the probe's 2 s tick.
    tokio::time::sleep(Duration::from_secs(63)).await;
    assert_eq!(store.state(), StoreState::Up);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        store.read("default").await.expect("up").token().is_some(),
        "the replica's token was published"
    );
    assert_eq!(one.source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_401_as_the_store_goes_down_keeps_this_replicas_reauth_interval() {
    let store = shared_store(Arc::new(MemoryBackend::default()));
    let one = replica(store.clone(), 1);
    let first = first_token(&one.credential).await;
    let relogged = one
        .credential
        .lease_after_rejection(FORMAT, first.generation, WAIT)
        .await
        .expect("the 401's login");
    // The store fails from here on; nothing has noticed yet, so it still shows as up
    // and the next refresh meets the failure on its first read.
    store.replace_backend(Box::new(Down));
    assert!(store.is_up());
    assert!(
        one.credential
            .lease_after_rejection(FORMAT, relogged.generation, WAIT)
            .await
            .is_none(),
        "a 401 within the interval is no login"
    );
    assert_eq!(one.source.fetches(), 2);
    assert!(!store.is_up());
}

#[tokio::test(start_paused = true)]
async fn the_fleets_reauth_interval_holds_through_a_store_outage() {
    let backend = Arc::new(MemoryBackend::default());
    let b_store = shared_store(Arc::clone(&backend));
    let a = replica(shared_store(backend), 1);
    let b = replica(b_store.clone(), 2);
    let a_first = first_token(&a.credential).await;
    first_token(&b.credential).await;
    a.credential
        .lease_after_rejection(FORMAT, a_first.generation, WAIT)
        .await
        .expect("A's 401 login");
    let b_current = b.credential.current(FORMAT).expect("token");
    let adopted = b
        .credential
        .lease_after_rejection(FORMAT, b_current.generation, WAIT)
        .await
        .expect("adopted");
    // B learns the fleet's interval from the entry.
    assert!(
        b.credential
            .lease_after_rejection(FORMAT, adopted.generation, WAIT)
            .await
            .is_none()
    );
    // The store goes down and B notices; a content-401 within the interval is still
    // no login.
    b_store.replace_backend(Box::new(Down));
    assert!(b_store.read("default").await.is_err());
    assert!(
        b.credential
            .lease_after_rejection(FORMAT, adopted.generation, WAIT)
            .await
            .is_none()
    );
    assert_eq!(b.source.fetches(), 0);
}
