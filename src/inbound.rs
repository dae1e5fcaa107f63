//! Bounds on slow and silent clients, per accepted connection (docs/DESIGN.md "Slow and
//! silent clients"):
//!
//! - `server.header_read_timeout` runs whenever the connection has no request in
//!   progress: from accept (so a connection that never sends a byte, or sends half an
//!   HTTP/2 preface, is closed like a slow request head) and from the moment a
//!   keep-alive connection falls idle, for HTTP/1 and HTTP/2 alike.
//! - `server.client_timeout` bounds each wait on the client in the middle of a
//!   request: for the next chunk of its request body ([`ClientBody`] then fails, which
//!   the pipeline answers `408`), and for the client to take the next chunk of the
//!   response ([`WatchedBody`]; the connection is then dropped, which drops the
//!   response body, its upstream request and its `max_concurrency` slot).
//!
//! One [`ConnectionWatch`] per connection keeps a small slab of its requests and
//! when each began waiting on the client; the connection's task sleeps until the
//! earliest deadline and acts on it ([`ConnectionWatch::check`]). A request pays a
//! lock (uncontended: a connection lives on one worker thread) when it starts, ends,
//! or starts or stops waiting on the client; no timer per request, no allocation
//! per request once the slab has grown to the connection's concurrency.
//!
//! Knows nothing of routes, tokens or status codes: the pipeline turns a stalled
//! request body into its `408`, and reads [`RequestHandle::stalled`] for the log line.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

/// The two bounds, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientLimits {
    /// No request in progress for this long (from accept, or since the last one
    /// ended) closes the connection.
    pub(crate) header_read_timeout: Duration,
    /// A wait on the client for this long in the middle of a request abandons it.
    pub(crate) client_timeout: Duration,
}

/// What the connection's task should do after a [`ConnectionWatch::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verdict {
    /// Nothing is overdue.
    InTime,
    /// A request body stalled: its reader has been told (it answers `408`); the
    /// connection should close once that answer is out.
    BodyStalled,
    /// No request in progress for `header_read_timeout`: close the connection.
    Idle,
    /// The client has not taken a response chunk for `client_timeout`: drop the
    /// connection now (a graceful close would wait on that same client).
    ResponseStalled,
}

/// The state one connection shares with its requests.
#[derive(Debug)]
pub(crate) struct ConnectionWatch {
    limits: ClientLimits,
    state: Mutex<Requests>,
}

#[derive(Debug)]
struct Requests {
    /// Requests of this connection, by slot; ended slots are reused.
    slots: Vec<RequestEntry>,
    free: Vec<usize>,
    /// Requests in progress.
    live: usize,
    /// When the connection was accepted or its last request ended.
    idle_since: Instant,
}

#[derive(Debug, Default)]
struct RequestEntry {
    /// Tells a request from an earlier one in the same slot: a request body can
    /// outlive its request (the 413 path reads the rest in the background).
    generation: u32,
    live: bool,
    /// Since when the request body's reader has been waiting for the next chunk.
    body_wait: Option<Instant>,
    /// The reader to wake when its wait passes `client_timeout`.
    reader: Option<Waker>,
    /// Since when a response chunk has been handed to the server and the client has
    /// not taken it.
    response_wait: Option<Instant>,
    /// A wait passed `client_timeout`: the request is abandoned.
    stalled: bool,
}

impl ConnectionWatch {
    /// The watch of a connection accepted now.
    pub(crate) fn new(limits: ClientLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(Requests {
                slots: Vec::new(),
                free: Vec::new(),
                live: 0,
                idle_since: Instant::now(),
            }),
        })
    }

    /// The longest time between two checks: any wait or idle period that begins
    /// after a check ends no sooner than this after it, so checking at least this
    /// often (and at every known deadline) acts on every deadline on time.
    pub(crate) fn check_interval(&self) -> Duration {
        self.limits
            .header_read_timeout
            .min(self.limits.client_timeout)
    }

    fn lock(&self) -> MutexGuard<'_, Requests> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a request; it ends when the returned slot is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> RequestSlot {
        let mut state = self.lock();
        let index = state.free.pop().unwrap_or_else(|| {
            state.slots.push(RequestEntry::default());
            state.slots.len() - 1
        });
        state.live += 1;
        let generation = state.slots.get_mut(index).map_or(0, |slot| {
            slot.live = true;
            slot.generation
        });
        drop(state);
        RequestSlot {
            handle: RequestHandle {
                watch: Arc::clone(self),
                index,
                generation,
            },
        }
    }

    /// Acts on every deadline that has passed at `now`, and says when to check next.
    pub(crate) fn check(&self, now: Instant) -> (Verdict, Instant) {
        let limits = self.limits;
        let mut next = now + self.check_interval();
        let mut verdict = Verdict::InTime;
        let mut readers = Vec::new();
        let mut state = self.lock();
        if state.live == 0 {
            let deadline = state.idle_since + limits.header_read_timeout;
            if now >= deadline {
                return (Verdict::Idle, next);
            }
            next = next.min(deadline);
        }
        for slot in state.slots.iter_mut().filter(|slot| slot.live) {
            if let Some(since) = slot.response_wait {
                let deadline = since + limits.client_timeout;
                if now >= deadline {
                    slot.stalled = true;
                    verdict = verdict.max(Verdict::ResponseStalled);
                } else {
                    next = next.min(deadline);
                }
            }
            if let Some(since) = slot.body_wait {
                let deadline = since + limits.client_timeout;
                if now >= deadline {
                    slot.stalled = true;
                    slot.body_wait = None;
                    readers.extend(slot.reader.take());
                    verdict = verdict.max(Verdict::BodyStalled);
                } else {
                    next = next.min(deadline);
                }
            }
        }
        drop(state);
        // Woken outside the lock: a reader may run at once and take it.
        readers.into_iter().for_each(Waker::wake);
        (verdict, next)
    }

    /// Runs `update` on the slot of `handle` if that request is still in progress.
    fn with_slot<T>(
        &self,
        handle: &RequestHandle,
        update: impl FnOnce(&mut RequestEntry) -> T,
    ) -> Option<T> {
        let mut state = self.lock();
        let slot = state.slots.get_mut(handle.index)?;
        (slot.live && slot.generation == handle.generation).then(|| update(slot))
    }

    fn end(&self, handle: &RequestHandle) {
        let mut state = self.lock();
        let Some(slot) = state.slots.get_mut(handle.index) else {
            return;
        };
        if !slot.live || slot.generation != handle.generation {
            return;
        }
        *slot = RequestEntry {
            generation: slot.generation.wrapping_add(1),
            ..RequestEntry::default()
        };
        state.free.push(handle.index);
        state.live -= 1;
        if state.live == 0 {
            state.idle_since = Instant::now();
        }
    }
}

/// A request in progress on a connection; dropping it ends the request. The server
/// moves it into the response body, so a request lasts until its response is sent
/// (or dropped).
#[derive(Debug)]
pub(crate) struct RequestSlot {
    handle: RequestHandle,
}

impl RequestSlot {
    /// A handle for the request body and the pipeline.
    pub(crate) fn handle(&self) -> RequestHandle {
        self.handle.clone()
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.handle.watch.end(&self.handle);
    }
}

/// Refers to a request's slot without owning it; stale once the request ended.
#[derive(Debug, Clone)]
pub(crate) struct RequestHandle {
    watch: Arc<ConnectionWatch>,
    index: usize,
    generation: u32,
}

impl RequestHandle {
    /// True once the request waited on its client for longer than `client_timeout`.
    pub(crate) fn stalled(&self) -> bool {
        self.watch
            .with_slot(self, |slot| slot.stalled)
            .unwrap_or(false)
    }

    /// `client_timeout`, for the `408`'s message.
    pub(crate) fn client_timeout(&self) -> Duration {
        self.watch.limits.client_timeout
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client sent no more of its request body for {0:?}")]
    Stalled(Duration),
    #[error("the request body could not be read: {0}")]
    /// The cause is in the message, not a `source()`: an error chain would say it twice.
    Read(hyper::Error),
}

/// A request body that fails with [`ClientBodyError::Stalled`] once its reader has
/// waited `client_timeout` for the next chunk.
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    handle: RequestHandle,
    /// The last poll was pending: a wait is recorded in the slot.
    waiting: bool,
}

impl ClientBody {
    pub(crate) fn new(inner: Incoming, handle: RequestHandle) -> Self {
        Self {
            inner,
            handle,
            waiting: false,
        }
    }

    /// The request this body belongs to.
    pub(crate) fn handle(&self) -> &RequestHandle {
        &self.handle
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let stalled = this
                    .handle
                    .watch
                    .with_slot(&this.handle, |slot| {
                        if slot.stalled {
                            return true;
                        }
                        slot.body_wait.get_or_insert_with(Instant::now);
                        match &mut slot.reader {
                            Some(reader) => reader.clone_from(cx.waker()),
                            None => slot.reader = Some(cx.waker().clone()),
                        }
                        false
                    })
                    .unwrap_or(false);
                if stalled {
                    this.waiting = false;
                    let limit = this.handle.client_timeout();
                    return Poll::Ready(Some(Err(ClientBodyError::Stalled(limit))));
                }
                this.waiting = true;
                Poll::Pending
            }
            Poll::Ready(frame) => {
                if std::mem::take(&mut this.waiting) {
                    this.handle.watch.with_slot(&this.handle, |slot| {
                        slot.body_wait = None;
                        slot.reader = None;
                    });
                }
                Poll::Ready(frame.map(|frame| frame.map_err(ClientBodyError::Read)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that records how long the client takes to take each chunk, and
/// ends its request (the slot) when it is dropped.
#[derive(Debug)]
pub(crate) struct WatchedBody<B> {
    /// Declared before `slot`: fields drop in order, so the body (whose drop writes
    /// the request log line) can still ask its request whether it stalled.
    inner: B,
    slot: RequestSlot,
    /// The last frame was handed out and not yet taken.
    handed_out: bool,
}

impl<B> WatchedBody<B> {
    pub(crate) fn new(inner: B, slot: RequestSlot) -> Self {
        Self {
            inner,
            slot,
            handed_out: false,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for WatchedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        // The server asks for the next frame: the client took the last one. A frame
        // handed out now is waited on until the next ask, unless it is the last.
        let handing_out = matches!(poll, Poll::Ready(Some(Ok(_)))) && !this.inner.is_end_stream();
        if handing_out || this.handed_out {
            let handle = &this.slot.handle;
            handle.watch.with_slot(handle, |slot| {
                slot.response_wait = handing_out.then(Instant::now);
            });
        }
        this.handed_out = handing_out;
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ClientLimits = ClientLimits {
        header_read_timeout: Duration::from_secs(10),
        client_timeout: Duration::from_secs(4),
    };

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_is_idle_after_header_read_timeout() {
        let watch = ConnectionWatch::new(LIMITS);
        let accepted = Instant::now();
        let (verdict, next) = watch.check(accepted);
        assert_eq!(verdict, Verdict::InTime);
        assert_eq!(
            next,
            accepted + LIMITS.client_timeout,
            "checks at least this often"
        );
        let (verdict, next) = watch.check(accepted + Duration::from_secs(8));
        assert_eq!(verdict, Verdict::InTime);
        assert_eq!(
            next,
            accepted + LIMITS.header_read_timeout,
            "the idle deadline"
        );
        assert_eq!(
            watch.check(accepted + LIMITS.header_read_timeout).0,
            Verdict::Idle
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_is_not_idle_and_its_end_restarts_the_idle_clock() {
        let watch = ConnectionWatch::new(LIMITS);
        let slot = watch.begin();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            watch.check(Instant::now()).0,
            Verdict::InTime,
            "waiting on nobody"
        );
        drop(slot);
        let ended = Instant::now();
        assert_eq!(
            watch.check(ended + Duration::from_secs(9)).0,
            Verdict::InTime
        );
        assert_eq!(
            watch.check(ended + LIMITS.header_read_timeout).0,
            Verdict::Idle
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_chunk_not_taken_within_client_timeout_stalls_the_request() {
        let watch = ConnectionWatch::new(LIMITS);
        let slot = watch.begin();
        let handle = slot.handle();
        let start = Instant::now();
        watch.with_slot(&handle, |slot| slot.response_wait = Some(start));
        let (verdict, next) = watch.check(start + Duration::from_secs(1));
        assert_eq!(verdict, Verdict::InTime);
        assert_eq!(next, start + LIMITS.client_timeout);
        assert!(!handle.stalled());
        assert_eq!(watch.check(next).0, Verdict::ResponseStalled);
        assert!(handle.stalled());
        drop(slot);
        assert!(!handle.stalled(), "a stale handle says nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_reused_and_a_stale_handle_cannot_touch_the_next_request() {
        let watch = ConnectionWatch::new(LIMITS);
        let first = watch.begin();
        let stale = first.handle();
        drop(first);
        let second = watch.begin();
        assert_eq!(second.handle.index, stale.index);
        assert!(
            watch
                .with_slot(&stale, |slot| slot.stalled = true)
                .is_none()
        );
        assert!(!second.handle().stalled());
        assert_eq!(watch.lock().slots.len(), 1);
    }
}
