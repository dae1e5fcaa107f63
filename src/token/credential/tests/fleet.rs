//! Several replicas sharing one store: one login for the fleet, adopting a newer
//! token instead of logging in, the fleet-wide reauth interval, and the lock.

use super::*;

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
    let retry = b.after_401(&b_old).await.expect("a newer token");
    assert_eq!(retry.header, newer.header(FORMAT).clone());
    assert_eq!(b.source.fetches(), 0, "B never logged in");
}

#[tokio::test(start_paused = true)]
async fn a_401_caused_login_in_the_fleet_closes_the_interval_for_every_replica() {
    let (a, b) = pair();
    // B adopts A's token on its own 401, then a content-401 on it is not a login.
    let adopted = a_logs_in_on_a_401_and_b_adopts(&a, &b).await;
    let again = b.after_401(&adopted).await;
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
async fn a_401_answered_by_adopting_does_not_close_the_reauth_interval() {
    let (a, b) = pair();
    first_token(&a.credential).await;
    first_token(&b.credential).await;
    for _ in 0..3 {
        // Another replica logs in (its refresh ahead); B's token is now the old one.
        a.credential.force_refresh().await.expect("refresh");
        assert!(
            b.after_401(&b.current()).await.is_some(),
            "every such 401 is retried with the fleet's token"
        );
    }
    assert_eq!(b.source.fetches(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_closed_reauth_interval_still_adopts_the_fleets_newer_token() {
    let (a, b) = pair();
    let b_first = first_token(&b.credential).await;
    first_token(&a.credential).await;
    // B's 401-caused login closes B's interval.
    b.after_401(&b_first).await.expect("B's 401 login");
    let logins = b.source.fetches();
    // A logs in again; B's next 401 must adopt A's token, not pass through.
    let newer = a.credential.force_refresh().await.expect("refresh");
    let retry = b
        .after_401(&b.current())
        .await
        .expect("adopted within B's closed interval");
    assert_eq!(retry.header, newer.header(FORMAT).clone());
    // And a content-401 on that token is still suppressed: no login.
    assert!(b.after_401(&retry).await.is_none());
    assert_eq!(b.source.fetches(), logins);
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

/// Past every refresh instant of an hour's token (10 min margin minus jitter), not
/// yet expired.
const DUE: Duration = LIFETIME.saturating_sub(Duration::from_secs(590));

/// A and B hold their first tokens, A then logs in again (a newer entry), and time
/// passes until that newer token is due too. Returns B's first token.
async fn a_newer_entry_that_is_due(a: &Replica, b: &Replica) -> Lease {
    first_token(&a.credential).await;
    let b_old = first_token(&b.credential).await;
    a.credential.force_refresh().await.expect("a newer entry");
    tokio::time::advance(DUE).await;
    b_old
}

#[tokio::test(start_paused = true)]
async fn a_refresh_ahead_logs_in_rather_than_adopt_a_token_itself_due_but_a_401_adopts_it() {
    let (a, b) = pair();
    a_newer_entry_that_is_due(&a, &b).await;
    b.credential
        .join_or_start(RefreshReason::Ahead)
        .await
        .expect("refreshed");
    assert_eq!(b.source.fetches(), 1, "the fleet's newer token is due too");

    let (a, b) = pair();
    let b_old = a_newer_entry_that_is_due(&a, &b).await;
    b.after_401(&b_old)
        .await
        .expect("the newer token, due or not");
    assert_eq!(b.source.fetches(), 0, "a 401 adopts what the fleet has");
}
