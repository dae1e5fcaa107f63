//! The store down, refusing writes, or back after an outage: a replica logs in
//! alone, keeps the reauth interval, and the fleet converges on one token without a
//! login.

use super::*;

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
async fn with_the_store_down_a_content_401_is_still_suppressed_by_the_interval() {
    let store = down_store();
    let one = replica(store, 1);
    let first = first_token(&one.credential).await;
    let fresh = one.after_401(&first).await.expect("the first 401 logs in");
    assert!(
        one.after_401(&fresh).await.is_none(),
        "a 401 on the fresh token within the interval"
    );
    assert_eq!(one.source.fetches(), 2, "startup + one 401-caused login");
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
    second_look_adopts(&a, &b, &b_own).await;
}

/// A backend whose next compare-and-set is preceded by `before` (another replica
/// publishing at the same moment), so that it loses.
#[derive(Debug)]
struct Overtaken {
    inner: Arc<MemoryBackend>,
    before: Mutex<Option<Overtaking>>,
}

struct Overtaking(BoxFuture<'static, ()>);

impl std::fmt::Debug for Overtaking {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Overtaking")
    }
}

impl Backend for Overtaken {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>> {
        self.inner.get(key)
    }
    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.inner.set_if_absent(key, value, ttl)
    }
    fn set_if_generation<'a>(
        &'a self,
        key: &'a str,
        expected: u64,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        let before = self.before.lock().expect("lock").take();
        Box::pin(async move {
            if let Some(Overtaking(before)) = before {
                before.await;
            }
            self.inner
                .set_if_generation(key, expected, value, ttl)
                .await
        })
    }
    fn delete_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.inner.delete_if_equal(key, value)
    }
    fn expire_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.inner.expire_if_equal(key, value, ttl)
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.inner.ping()
    }
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_loses_the_race_to_publish_still_leaves_its_newer_token_in_the_store() {
    let backend = Arc::new(MemoryBackend::default());
    let overtaken = Arc::new(Overtaken {
        inner: Arc::clone(&backend),
        before: Mutex::new(None),
    });
    let stores = [
        shared_store(Arc::clone(&backend)),
        shared_store(Arc::clone(&overtaken)),
    ];
    let a = replica(stores[0].clone(), 1);
    let b = replica(stores[1].clone(), 2);
    for store in &stores {
        store.replace_backend(Box::new(Down));
    }
    first_token(&a.credential).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let b_own = first_token(&b.credential).await;
    let b_token = b.credential.inner.slot.load().expect("B's token");
    // Back and empty. B reads the empty entry, and A publishes its older token
    // between B's read and B's compare-and-set.
    stores[0].replace_backend(Box::new(Arc::clone(&backend)));
    stores[1].replace_backend(Box::new(Arc::clone(&overtaken)));
    for store in &stores {
        store.read("default").await.expect("back");
    }
    let a_credential = a.credential.clone();
    *overtaken.before.lock().expect("lock") = Some(Overtaking(Box::pin(async move {
        a_credential
            .join_or_start(RefreshReason::Resync)
            .await
            .expect("A converged");
    })));
    b.credential
        .join_or_start(RefreshReason::Resync)
        .await
        .expect("B converged");
    assert!(
        overtaken.before.lock().expect("lock").is_none(),
        "A went first"
    );
    let entry = stores[0].read("default").await.expect("up");
    let stored = entry.token().expect("published");
    assert_eq!(
        stored.token.expose_secret(),
        b_token.secret.expose_secret(),
        "B published its newer token over A's"
    );
    // A's second look finds it.
    second_look_adopts(&a, &b, &b_own).await;
}

/// `a`'s second look after a recovery adopts `newer`, `b`'s token, and neither
/// replica logged in for it (one login each while the store was down).
async fn second_look_adopts(a: &Replica, b: &Replica, newer: &Lease) {
    a.credential
        .join_or_start(RefreshReason::Resync)
        .await
        .expect("converged");
    let a_current = a.credential.current(FORMAT).expect("A's token");
    assert_eq!(a_current.header, newer.header, "one token for the fleet");
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
    let second = one.after_401(&first).await.expect("the 401-caused login");
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
        .after_401(&first)
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
    let relogged = one.after_401(&first).await.expect("the 401's login");
    // The store fails from here on; nothing has noticed yet, so it still shows as up
    // and the next refresh meets the failure on its first read.
    store.replace_backend(Box::new(Down));
    assert!(store.is_up());
    assert!(
        one.after_401(&relogged).await.is_none(),
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
    let adopted = a_logs_in_on_a_401_and_b_adopts(&a, &b).await;
    // B learns the fleet's interval from the entry.
    assert!(b.after_401(&adopted).await.is_none());
    // The store goes down and B notices; a content-401 within the interval is still
    // no login.
    b_store.replace_backend(Box::new(Down));
    assert!(b_store.read("default").await.is_err());
    assert!(b.after_401(&adopted).await.is_none());
    assert_eq!(b.source.fetches(), 0);
}
