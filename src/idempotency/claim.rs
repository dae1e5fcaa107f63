//! A held claim on a key, and how it is settled: its answer kept (in the shared store,
//! or in this replica's memory when the store cannot take it), or the key released.
//! A claim dropped unsettled marks its key done without an answer: its request may
//! have been sent.

use std::sync::Arc;

use super::key::{Fingerprint, Scope};
use super::record::{Answer, Record};
use super::{Idempotency, redis, tee};
use crate::token::store::SealedAnswer;

/// Where a claim is held.
#[derive(Debug)]
pub(super) enum Place {
    Local(u64),
    Shared(SealedAnswer),
}

/// A held claim on a key. Settled by [`keep`](Self::keep) or
/// [`release`](Self::release); one dropped unsettled (a panic) marks its key done
/// without an answer, since its request may have been sent.
#[derive(Debug)]
pub(crate) struct Claim {
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    handle: Idempotency,
    route: Arc<str>,
    scope: Scope,
    fingerprint: Fingerprint,
    place: Place,
}

impl Claim {
    pub(super) fn new(
        handle: Idempotency,
        route: Arc<str>,
        scope: Scope,
        fingerprint: Fingerprint,
        place: Place,
    ) -> Self {
        Self {
            held: Some(Held {
                handle,
                route,
                scope,
                fingerprint,
                place,
            }),
        }
    }

    /// Keeps `answer` as the key's answer for `idempotency.ttl`; `None`: the key is
    /// done without a kept answer.
    pub(crate) async fn keep(mut self, answer: Option<Answer>) {
        if let Some(held) = self.held.take() {
            held.keep(answer).await;
        }
    }

    pub(super) async fn settle(mut self, record: Record) {
        if let Some(held) = self.held.take() {
            held.settle(record).await;
        }
    }

    /// Gives the key up: its request never left the proxy.
    pub(crate) async fn release(mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let inner = &held.handle.0;
        match &held.place {
            Place::Local(token) => inner.local.release(&held.scope, *token),
            Place::Shared(sealed) => {
                let store = inner.shared.as_ref().expect("a shared claim has a store");
                if redis::release(store, &held.scope, sealed).await.is_err() {
                    held.handle.store_is_down(&held.route);
                }
            }
        }
    }
}

impl Held {
    async fn keep(self, answer: Option<Answer>) {
        if answer.is_none() {
            tracing::info!(
                route = &*self.route,
                "idempotency: an answer was not kept (larger than idempotency.max_response); \
                 its key is done, and a repeat is answered 409"
            );
        }
        let record = Record::Done {
            fingerprint: self.fingerprint,
            answer: answer.map(Arc::new),
        };
        self.settle(record).await;
    }

    async fn settle(self, record: Record) {
        let inner = &self.handle.0;
        let settled = match &self.place {
            Place::Local(token) => {
                inner
                    .local
                    .settle(&self.scope, *token, record.clone(), inner.ttl)
            }
            Place::Shared(sealed) => {
                let store = inner.shared.as_ref().expect("a shared claim has a store");
                match redis::settle(store, &self.scope, sealed, &record, inner.ttl).await {
                    Ok(settled) => settled,
                    Err(_down) => {
                        self.handle.store_is_down(&self.route);
                        false
                    }
                }
            }
        };
        if !settled {
            // The claim expired (or the store is down): this replica at least keeps
            // the answer; repeats that reach another replica may be sent again.
            tracing::warn!(
                route = &*self.route,
                "idempotency: a claim expired before its answer was kept; kept in this \
                 replica's memory only"
            );
            inner.local.put(self.scope, record, inner.ttl);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            tee::spawn(held.keep(None));
        }
    }
}
