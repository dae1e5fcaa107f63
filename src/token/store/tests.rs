//! The entry codec and the store's compare-and-set rules, over the in-process
//! backend (the same `Store` code runs over Redis; `tests/fleet.rs` covers that).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};

use super::testing::down_store;
use super::*;
use crate::token::schedule::RefreshReason;

const KEY_A: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY_B: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn store_over(backend: Arc<MemoryBackend>, keys: &str) -> Store {
    let sealer = Sealer::from_key_lines(keys).expect("test keys parse");
    Store::new(
        "memory",
        false,
        Box::new(backend),
        sealer,
        StoreSettings::default(),
    )
}

fn stored(generation: u64, token: &str, now: SystemTime) -> StoredToken {
    StoredToken {
        generation,
        token: SecretString::from(token.to_owned()),
        expires_at: now + Duration::from_secs(3600),
        obtained_at: now - Duration::from_millis(1500),
        reason: RefreshReason::Rejected,
    }
}

/// Wall-clock instants the codec keeps exactly: whole milliseconds.
fn now_ms() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(entry::unix_ms(SystemTime::now()))
}

fn raw(backend: &MemoryBackend, key: &str) -> Vec<u8> {
    futures_util::FutureExt::now_or_never(backend.get(key))
        .expect("the memory backend answers at once")
        .expect("the memory backend never fails")
        .expect("the entry is there")
}

/// Puts `value` under `key` behind the store's back, as another replica (or an
/// attacker with access to Redis) could.
async fn put(backend: &MemoryBackend, key: &str, expected: u64, value: &[u8]) {
    backend
        .set_if_generation(key, expected, value, Duration::from_secs(60))
        .await
        .expect("the in-process store answers");
}

#[test]
fn generation_of_reads_only_a_well_formed_prefix() {
    assert_eq!(generation_of(b"v1:12:c2VhbGVk"), 12);
    assert_eq!(generation_of(b"v1:7:"), 7);
    assert_eq!(generation_of(b"v1:12"), 0, "no colon after the digits");
    assert_eq!(generation_of(b"v1::abc"), 0, "no digits");
    assert_eq!(generation_of(b"v2:12:abc"), 0, "another format version");
    assert_eq!(generation_of(b"garbage"), 0);
    assert_eq!(
        generation_of(b"v1:99999999999999999999999:x"),
        0,
        "overflow"
    );
}

#[tokio::test]
async fn an_entry_round_trips_and_holds_no_token_in_the_clear() {
    let backend = Arc::new(MemoryBackend::default());
    let store = store_over(backend.clone(), KEY_A);
    let now = now_ms();
    assert!(matches!(store.read("main").await, Ok(Entry::Absent)));

    let written = stored(1, "tok-secret-value", now);
    assert_eq!(store.write("main", &written, 0, now).await, Ok(true));

    let value = raw(&backend, "ipproxy:{main}:token");
    assert!(
        value.starts_with(b"v1:1:"),
        "generation in the clear prefix"
    );
    let sealed = URL_SAFE_NO_PAD
        .decode(&value[b"v1:1:".len()..])
        .expect("the rest is base64");
    for clear in [&b"tok-secret-value"[..], b"expires_at_ms", b"\"reason\""] {
        let found = sealed.windows(clear.len()).any(|window| window == clear);
        assert!(
            !found,
            "sealed: no {:?} in the clear",
            String::from_utf8_lossy(clear)
        );
    }

    let Ok(Entry::Present(read)) = store.read("main").await else {
        panic!("the written entry reads back");
    };
    assert_eq!(read.generation, 1);
    assert_eq!(read.token.expose_secret(), "tok-secret-value");
    assert_eq!(read.expires_at, written.expires_at);
    assert_eq!(read.obtained_at, written.obtained_at);
    assert_eq!(read.reason, RefreshReason::Rejected);
}

#[tokio::test]
async fn a_write_replaces_only_the_generation_it_expects() {
    let backend = Arc::new(MemoryBackend::default());
    let store = store_over(backend, KEY_A);
    let now = now_ms();
    assert_eq!(
        store.write("main", &stored(1, "one", now), 0, now).await,
        Ok(true)
    );
    assert_eq!(
        store.write("main", &stored(2, "late", now), 0, now).await,
        Ok(false),
        "another replica wrote first"
    );
    assert_eq!(
        store.write("main", &stored(2, "two", now), 1, now).await,
        Ok(true)
    );
    let entry = store.read("main").await.expect("store up");
    assert_eq!(entry.generation(), 2);
    assert_eq!(entry.token().expect("present").token.expose_secret(), "two");
}

#[tokio::test]
async fn an_expired_token_is_never_written() {
    let backend = Arc::new(MemoryBackend::default());
    let store = store_over(backend, KEY_A);
    let now = now_ms();
    let mut expired = stored(1, "old", now);
    expired.expires_at = now - Duration::from_secs(1);
    assert_eq!(store.write("main", &expired, 0, now).await, Ok(false));
    assert!(matches!(store.read("main").await, Ok(Entry::Absent)));
}

#[tokio::test]
async fn an_entry_opens_only_for_its_credential_generation_and_keys() {
    let backend = Arc::new(MemoryBackend::default());
    let store = store_over(backend.clone(), KEY_A);
    let now = now_ms();
    store
        .write("main", &stored(3, "tok", now), 0, now)
        .await
        .expect("store up");
    let value = raw(&backend, "ipproxy:{main}:token");

    // Copied under another credential's key: the credential is bound in.
    put(&backend, "ipproxy:{other}:token", 0, &value).await;
    assert!(matches!(
        store.read("other").await,
        Ok(Entry::Unreadable { generation: 3 })
    ));

    // The clear generation changed: the generation is bound in.
    let mut bumped = b"v1:4:".to_vec();
    bumped.extend_from_slice(&value[b"v1:3:".len()..]);
    put(&backend, "ipproxy:{main}:token", 3, &bumped).await;
    assert!(matches!(
        store.read("main").await,
        Ok(Entry::Unreadable { generation: 4 })
    ));

    // Another key cannot open it; the old key as a second line can.
    put(&backend, "ipproxy:{main}:token", 4, &value).await;
    store.replace_keys(Sealer::from_key_lines(KEY_B).expect("test key"));
    assert!(matches!(
        store.read("main").await,
        Ok(Entry::Unreadable { .. })
    ));
    store.replace_keys(Sealer::from_key_lines(&format!("{KEY_B}\n{KEY_A}\n")).expect("test keys"));
    assert_eq!(
        store
            .read("main")
            .await
            .expect("the in-process store answers")
            .generation(),
        3
    );
}

/// `try_lock` on a store over the in-process backend, which always answers.
async fn try_lock(store: &Store, credential: &str) -> Option<LockLease> {
    store
        .try_lock(credential)
        .await
        .expect("the in-process store answers")
}

/// `renew` on a store over the in-process backend, which always answers.
async fn renew(store: &Store, credential: &str, lease: &LockLease) -> bool {
    store
        .renew(credential, lease)
        .await
        .expect("the in-process store answers")
}

#[tokio::test]
async fn the_refresh_lock_has_one_holder_and_only_the_holder_releases_it() {
    let backend = Arc::new(MemoryBackend::default());
    let store = store_over(backend, KEY_A);
    let first = try_lock(&store, "main").await.expect("free at first");
    assert!(try_lock(&store, "main").await.is_none(), "held");
    assert!(try_lock(&store, "other").await.is_some(), "per credential");

    let stale = LockLease(rand::random());
    assert!(!renew(&store, "main", &stale).await, "not the holder's");
    store.release("main", stale).await;
    assert!(try_lock(&store, "main").await.is_none(), "still held");

    assert!(renew(&store, "main", &first).await);
    store.release("main", first).await;
    assert!(try_lock(&store, "main").await.is_some(), "released");
}

#[test]
fn the_debug_of_an_entry_or_a_lock_shows_neither_token_nor_lock_value() {
    let shown = format!("{:?}", stored(3, "tok-Zx81", SystemTime::UNIX_EPOCH));
    assert!(
        shown.contains("generation: 3") && shown.contains("***"),
        "{shown}"
    );
    assert!(!shown.contains("tok-Zx81"), "{shown}");
    let lease = LockLease([7; 16]);
    assert_eq!(format!("{lease:?}"), "LockLease(***)");
}

#[tokio::test(start_paused = true)]
async fn a_shared_store_is_probed_and_a_replaced_backend_brings_it_back() {
    let local = Store::memory();
    assert_eq!((local.kind(), local.is_shared()), ("memory", false));
    assert!(local.status().is_none() && local.start_probe().is_none());

    let shared = down_store();
    assert_eq!((shared.kind(), shared.is_shared()), ("redis", true));
    let mut recoveries = shared.recoveries();
    let _probe = shared.start_probe().expect("a shared store is probed");
    tokio::time::sleep(PROBE_INTERVAL / 2).await;
    let status = shared.status().expect("shown");
    assert!(!status.up && status.kind == "redis", "{status:?}");
    assert_eq!(status.last_error.as_deref(), Some("connection refused"));

    // A re-read url_file: the next probe reaches the new backend.
    shared.replace_backend(Box::new(MemoryBackend::default()));
    recoveries.changed().await.expect("the store came back");
    assert!(shared.status().expect("shown").up);
}
