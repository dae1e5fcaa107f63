//! When the refresh loop acts: the refresh ahead of expiry (a JWT's `exp` or
//! `token_ttl`, minus seeded jitter) and the backoff after failed logins.

use super::*;

#[tokio::test(start_paused = true)]
async fn the_refresh_ahead_comes_at_the_margin_minus_seeded_jitter() {
    let one = alone();
    let _task = one.credential.start();
    one.credential
        .lease(FORMAT, WAIT)
        .await
        .expect("first token");
    let refresh_at = refresh_at(&one.credential);
    let now = tokio::time::Instant::now();
    let margin = Duration::from_secs(600);
    let earliest = now + LIFETIME - margin - margin / 10 - Duration::from_secs(1);
    assert!(refresh_at <= now + LIFETIME - margin && refresh_at >= earliest);
    tokio::time::sleep_until(refresh_at - Duration::from_millis(10)).await;
    assert_eq!(one.source.fetches(), 1, "not before its time");
    tokio::time::sleep_until(refresh_at + Duration::from_millis(10)).await;
    assert_eq!(one.source.fetches(), 2, "refreshed at its time");
}

/// A replica alone whose `token_ttl` is two seconds, issuing opaque tokens or JWTs.
fn two_second_ttl(opaque: bool) -> Replica {
    let two_seconds = Settings {
        token_ttl: Duration::from_secs(2),
        ..settings()
    };
    replica_with(Store::memory(), 5, two_seconds, opaque)
}

#[tokio::test(start_paused = true)]
async fn a_jwt_exp_sets_the_lifetime_whatever_token_ttl_says() {
    let one = two_second_ttl(false);
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
    let one = two_second_ttl(true);
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
