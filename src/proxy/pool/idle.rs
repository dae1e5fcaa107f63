//! The idle connections of one worker: per (client, origin), the HTTP/1.1 connections
//! that wait for a request, most recently used last, and the shared HTTP/2 connection.
//!
//! The lists live in a thread-local. A worker is one thread running a single-threaded
//! runtime whose tasks never leave it, so the thread's lists are the worker's own:
//! checking a connection out and putting it back are a `RefCell` borrow, with no lock
//! and no atomic, and never a spawned future. A client used on a multi-threaded
//! runtime still works: each thread keeps its own lists.
//!
//! Idle expiry: one reaper task per thread (spawned when a connection is parked and
//! none runs, gone when nothing is left to expire) sleeps until the oldest connection
//! is due, closes what is due, and sleeps again. On a multi-threaded runtime no reaper
//! is started (it could run on another thread than the lists it should sweep): due
//! connections are then dropped when the list is next used.

use std::cell::RefCell;
use std::collections::VecDeque;

use http::uri::{Authority, Scheme};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::time::Instant;

use super::ClientId;
use super::PoolSettings;
use super::connection::{Http1, Http2, PoolKey};

thread_local! {
    static IDLE: RefCell<Lists> = const { RefCell::new(Lists::new()) };
}

/// A connection taken out of the pool, checked to be usable.
pub(super) enum Pooled {
    Http1(Http1),
    Http2(Http2),
}

/// Takes a usable connection to `origin` of `client`, if one is idle. Connections
/// past their idle time on the way are dropped. One the upstream closed while it was
/// idle is not polled here: the send reads first, sees the close, and hands the
/// request back unsent (see `Http1::is_idle`).
pub(super) fn checkout(client: ClientId, scheme: &Scheme, authority: &Authority) -> Option<Pooled> {
    let now = Instant::now();
    loop {
        let candidate = IDLE.with(|lists| lists.borrow_mut().take(client, scheme, authority))?;
        match candidate {
            Taken::Http2(shared) => return Some(Pooled::Http2(shared)),
            Taken::Http1(parked) => {
                if parked.due(now) {
                    continue;
                }
                if parked.connection.is_idle() {
                    return Some(Pooled::Http1(parked.connection));
                }
            }
        }
    }
}

/// Parks an HTTP/1.1 connection whose exchange is complete (the caller checked
/// [`Http1::is_reusable`]). Over the bound, the oldest idle one is closed.
pub(super) fn release(connection: Http1) {
    let now = Instant::now();
    let (evicted, start_reaper) = IDLE.with(|lists| {
        let mut lists = lists.borrow_mut();
        let evicted = lists.park(connection, now);
        (evicted, lists.wants_reaper())
    });
    drop(evicted);
    if start_reaper {
        spawn_reaper();
    }
}

/// Offers a new HTTP/2 connection for sharing; the first live one per origin is
/// kept, a second one serves its own request and closes when that is done.
pub(super) fn share(connection: &Http2) {
    let now = Instant::now();
    let (replaced, start_reaper) = IDLE.with(|lists| {
        let mut lists = lists.borrow_mut();
        let replaced = lists.share(connection, now);
        (replaced, lists.wants_reaper())
    });
    drop(replaced);
    if start_reaper {
        spawn_reaper();
    }
}

/// Idle connections of this thread for `client` and `origin` (HTTP/1.1 ones, and 1
/// for a shared HTTP/2 one), for tests and diagnostics.
pub(super) fn count(client: ClientId, scheme: &Scheme, authority: &Authority) -> usize {
    IDLE.with(|lists| {
        let lists = lists.borrow();
        lists
            .lists
            .iter()
            .find(|list| list.home.client == client && list.home.origin.matches(scheme, authority))
            .map_or(0, |list| {
                list.http1.len() + usize::from(list.http2.is_some())
            })
    })
}

/// Starts this thread's reaper, on a single-threaded runtime only (see the module
/// comment).
fn spawn_reaper() {
    let Ok(runtime) = Handle::try_current() else {
        return;
    };
    if runtime.runtime_flavor() != RuntimeFlavor::CurrentThread {
        return;
    }
    IDLE.with(|lists| lists.borrow_mut().reaper_running = true);
    runtime.spawn(reap());
}

/// Closes connections as they pass their idle time; ends when none is left.
async fn reap() {
    // Clears the flag however the task ends, also when its runtime drops it.
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = IDLE.try_with(|lists| {
                if let Ok(mut lists) = lists.try_borrow_mut() {
                    lists.reaper_running = false;
                }
            });
        }
    }
    let _running = Running;
    loop {
        let (expired, next) = IDLE.with(|lists| lists.borrow_mut().expire(Instant::now()));
        drop(expired);
        match next {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => return,
        }
    }
}

/// Every idle list of this thread.
struct Lists {
    lists: Vec<List>,
    reaper_running: bool,
}

/// The idle connections of one client to one origin.
struct List {
    home: PoolKey,
    /// Oldest first: checked out from the back (the warmest connection, so that the
    /// least used ones reach their idle time and close), expired from the front.
    /// At most `home.settings.max_idle`.
    http1: VecDeque<Parked>,
    http2: Option<Shared>,
}

struct Parked {
    connection: Http1,
    since: Instant,
    idle_timeout: std::time::Duration,
}

impl Parked {
    fn due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= self.idle_timeout
    }
}

/// The shared HTTP/2 connection and when a request last started on it.
struct Shared {
    connection: Http2,
    last_used: Instant,
}

enum Taken {
    Http1(Parked),
    Http2(Http2),
}

/// What [`Lists::expire`] closes, dropped after the borrow ends.
#[derive(Default)]
struct Expired {
    http1: Vec<Http1>,
    http2: Vec<Http2>,
}

impl Lists {
    const fn new() -> Self {
        Self {
            lists: Vec::new(),
            reaper_running: false,
        }
    }

    fn wants_reaper(&self) -> bool {
        !self.reaper_running
    }

    fn find(
        &mut self,
        client: ClientId,
        scheme: &Scheme,
        authority: &Authority,
    ) -> Option<&mut List> {
        self.lists
            .iter_mut()
            .find(|list| list.home.client == client && list.home.origin.matches(scheme, authority))
    }

    fn list_for(&mut self, home: &PoolKey) -> &mut List {
        let found = self.lists.iter().position(|list| {
            list.home.client == home.client
                && list
                    .home
                    .origin
                    .matches(&home.origin.scheme, &home.origin.authority)
        });
        let index = found.unwrap_or_else(|| {
            self.lists.push(List {
                home: home.clone(),
                http1: VecDeque::new(),
                http2: None,
            });
            self.lists.len() - 1
        });
        &mut self.lists[index]
    }

    fn take(&mut self, client: ClientId, scheme: &Scheme, authority: &Authority) -> Option<Taken> {
        let list = self.find(client, scheme, authority)?;
        if let Some(shared) = &mut list.http2 {
            if shared.connection.is_closed() {
                list.http2 = None;
            } else {
                shared.last_used = Instant::now();
                return Some(Taken::Http2(shared.connection.clone()));
            }
        }
        list.http1.pop_back().map(Taken::Http1)
    }

    fn park(&mut self, connection: Http1, now: Instant) -> Option<Parked> {
        let settings: PoolSettings = connection.home.settings;
        let list = self.list_for(&connection.home);
        list.http1.push_back(Parked {
            connection,
            since: now,
            idle_timeout: settings.idle_timeout,
        });
        if list.http1.len() > settings.max_idle {
            list.http1.pop_front()
        } else {
            None
        }
    }

    fn share(&mut self, connection: &Http2, now: Instant) -> Option<Http2> {
        let list = self.list_for(&connection.home);
        match &list.http2 {
            Some(shared) if !shared.connection.is_closed() => None,
            _ => list
                .http2
                .replace(Shared {
                    connection: connection.clone(),
                    last_used: now,
                })
                .map(|old| old.connection),
        }
    }

    /// Takes out what is due at `now`; returns it and when the next one is due.
    fn expire(&mut self, now: Instant) -> (Expired, Option<Instant>) {
        let mut expired = Expired::default();
        let mut next: Option<Instant> = None;
        let mut earliest = |deadline: Instant| {
            next = Some(next.map_or(deadline, |next| next.min(deadline)));
        };
        for list in &mut self.lists {
            while list.http1.front().is_some_and(|parked| parked.due(now)) {
                if let Some(parked) = list.http1.pop_front() {
                    expired.http1.push(parked.connection);
                }
            }
            if let Some(parked) = list.http1.front() {
                earliest(parked.since + parked.idle_timeout);
            }
            let idle_timeout = list.home.settings.idle_timeout;
            match &list.http2 {
                Some(shared)
                    if shared.connection.is_closed()
                        || now.saturating_duration_since(shared.last_used) >= idle_timeout =>
                {
                    if let Some(shared) = list.http2.take() {
                        expired.http2.push(shared.connection);
                    }
                }
                Some(shared) => earliest(shared.last_used + idle_timeout),
                None => {}
            }
        }
        self.lists
            .retain(|list| !list.http1.is_empty() || list.http2.is_some());
        (expired, next)
    }
}

#[cfg(test)]
mod tests;
