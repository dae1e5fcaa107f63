//! One credential alone: the single flight, the generation compare, and the gates in
//! front of a login (static, rejection, backoff, the reauth interval).

use super::*;

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
    let retries = join_all((0..20).map(|_| one.after_401(&lease))).await;
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
    let retry = one.after_401(&old).await.expect("the current token");
    assert_eq!(retry.generation, current.generation);
    assert_eq!(
        one.source.fetches(),
        2,
        "no login for a 401 on an old token"
    );
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
    let retry = one.after_401(&lease).await;
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
    let retry = one.after_401(&lease).await;
    assert!(retry.is_none());
    assert_eq!(one.source.fetches(), before, "backing off: no login");
}

#[tokio::test(start_paused = true)]
async fn a_hundred_content_401s_cause_one_login_per_reauth_interval() {
    let one = alone();
    first_token(&one.credential).await;
    let mut retried = 0;
    for _ in 0..100 {
        if one.after_401(&one.current()).await.is_some() {
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
    assert!(
        one.after_401(&one.current()).await.is_some(),
        "the interval has passed"
    );
    assert_eq!(one.source.fetches(), 4);

    // Well after the interval that login opened, a 401 logs in again.
    tokio::time::advance(settings().min_reauth_interval * 2).await;
    assert!(
        one.after_401(&one.current()).await.is_some(),
        "long past the interval"
    );
    assert_eq!(one.source.fetches(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_401_while_a_401_login_is_in_flight_joins_it() {
    let one = alone();
    let lease = first_token(&one.credential).await;
    one.source.take(Duration::from_millis(500));
    let (first, second) = tokio::join!(one.after_401(&lease), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        one.after_401(&lease).await
    });
    assert_eq!(
        first.map(|lease| lease.generation),
        second.map(|lease| lease.generation)
    );
    assert_eq!(one.source.fetches(), 2);
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
        one.after_401(&lease).await.is_some(),
        "the backoff is over at its deadline"
    );
    assert_eq!(one.source.fetches(), 3);
    let deadline = start_wall() + (retry_at - started);
    assert_eq!(one.credential.status().last_refresh, Some(deadline));
}
