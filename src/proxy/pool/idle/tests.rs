//! The idle lists with real connections and explicit instants: expiry deadlines,
//! which HTTP/2 connection is shared, one reaper per thread.

use std::time::Duration;

use super::super::connection::testing::Upstream;
use super::*;

const IDLE: Duration = super::super::IDLE_TIMEOUT;

fn take(lists: &mut Lists, upstream: &Upstream) -> Option<Taken> {
    let origin = &upstream.home.origin;
    lists.take(upstream.home.client, &origin.scheme, &origin.authority)
}

#[tokio::test]
async fn parked_connections_expire_oldest_first_each_at_its_own_deadline() {
    let mut upstream = Upstream::start().await;
    let mut lists = Lists::new();
    let start = Instant::now();
    let later = start + Duration::from_secs(10);
    assert!(lists.park(upstream.http1().await, start).is_none());
    assert!(lists.park(upstream.http1().await, later).is_none());

    let (expired, next) = lists.expire(start);
    assert!(expired.http1.is_empty());
    assert_eq!(next, Some(start + IDLE));
    let (expired, next) = lists.expire(start + IDLE);
    assert_eq!(expired.http1.len(), 1);
    assert_eq!(next, Some(later + IDLE));
    let (expired, next) = lists.expire(later + IDLE);
    assert_eq!((expired.http1.len(), next), (1, None));
    assert!(lists.lists.is_empty(), "an empty list is dropped");
}

#[tokio::test]
async fn a_shared_http2_connection_expires_idle_or_closed() {
    let upstream = Upstream::start().await;
    let mut lists = Lists::new();
    let start = Instant::now();
    let idle = upstream.http2().await;
    assert!(lists.share(&idle.connection, start).is_none());
    let (expired, next) = lists.expire(start + IDLE - Duration::from_millis(1));
    assert!(expired.http2.is_empty());
    assert_eq!(next, Some(start + IDLE));
    let (expired, next) = lists.expire(start + IDLE);
    assert_eq!((expired.http2.len(), next), (1, None), "idle too long");

    let mut closed = upstream.http2().await;
    assert!(lists.share(&closed.connection, start).is_none());
    closed.close();
    let (expired, next) = lists.expire(start);
    assert_eq!(
        (expired.http2.len(), next),
        (1, None),
        "closed, before its time"
    );
    assert!(lists.lists.is_empty());
}

#[tokio::test]
async fn the_first_live_http2_connection_is_shared_until_it_closes() {
    let upstream = Upstream::start().await;
    let mut lists = Lists::new();
    let now = Instant::now();
    let mut first = upstream.http2().await;
    let second = upstream.http2().await;
    assert!(lists.share(&first.connection, now).is_none());
    assert!(
        lists.share(&second.connection, now).is_none(),
        "a second live one serves only its own request"
    );
    first.close();
    let replaced = lists.share(&second.connection, now);
    assert!(
        replaced.is_some_and(|old| old.is_closed()),
        "a closed one gives way"
    );
    match take(&mut lists, &upstream) {
        Some(Taken::Http2(shared)) => assert!(!shared.is_closed()),
        _ => panic!("the live connection is shared"),
    }
}

#[tokio::test]
async fn a_closed_http2_connection_is_not_handed_out() {
    let upstream = Upstream::start().await;
    let mut lists = Lists::new();
    let mut shared = upstream.http2().await;
    assert!(lists.share(&shared.connection, Instant::now()).is_none());
    shared.close();
    assert!(take(&mut lists, &upstream).is_none());
}

#[tokio::test]
async fn one_reaper_runs_however_many_connections_are_parked() {
    let mut upstream = Upstream::start().await;
    let tasks = || Handle::current().metrics().num_alive_tasks();
    let before = tasks();
    for _ in 0..3 {
        release(upstream.http1().await);
    }
    assert_eq!(tasks(), before + 1);
    let origin = &upstream.home.origin;
    assert_eq!(
        count(upstream.home.client, &origin.scheme, &origin.authority),
        3
    );
}

#[tokio::test]
async fn idle_connections_are_kept_up_to_the_bound() {
    let mut upstream = Upstream::start().await;
    upstream.home.settings.max_idle = 2;
    let mut lists = Lists::new();
    let now = Instant::now();
    assert!(lists.park(upstream.http1().await, now).is_none());
    assert!(lists.park(upstream.http1().await, now).is_none(), "two fit");
    assert!(
        lists.park(upstream.http1().await, now).is_some(),
        "a third does not"
    );
    assert_eq!(lists.lists[0].http1.len(), 2);
}
