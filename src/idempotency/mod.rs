//! Idempotent requests: on a route with `idempotency = true`, a POST or PATCH with an
//! `Idempotency-Key` is sent upstream at most once per key, and its repeats get the
//! first answer (docs/DESIGN.md "Idempotent requests").
//!
//! The protocol, per request: read the body (up to `replay_limit`), fingerprint it,
//! claim the key's scope atomically with an in-flight marker holding the fingerprint
//! (`SET NX PX` in Redis); a scope already held answers the repeat (replay, `409`,
//! `422`) without contacting the upstream. The holder forwards on a task of its own (a
//! client that leaves does not cancel a send that may already have happened), then
//! settles the claim: an upstream answer is kept as it streams (`tee`); a request that
//! never left releases the key; one that left but got no answer keeps the proxy's own
//! `504`/`502`. The in-flight marker expires after [`Idempotency::in_flight_ttl`], so a
//! replica that died mid-request blocks its key for a bounded time only.
//!
//! - `key`: the header, the scope, the fingerprint.
//! - `claim`: a held claim, and how it is settled (kept, or released).
//! - `record`: what a scope holds, and its encoding for the shared store.
//! - `memory`: this replica's bounded records (the default, and the fallback).
//! - `redis`: records in the fleet's shared store.
//! - `tee`: the first answer, kept as it streams.
//!
//! Must not: log or count a key, a caller's key, or a kept answer; cost anything for
//! a request without the header (the pipeline only calls in for keyed requests).

mod claim;
mod key;
mod memory;
mod record;
mod redis;
mod tee;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use http::Request;
use tracing::Instrument as _;

use crate::access::Caller;
use crate::config::{IdempotencyConfig, OnStoreDown};
use crate::error::ProxyError;
use crate::inbound::ClientBody;
use crate::proxy::{self, Limits, OutboundBody, Outcome, UpstreamClient};
use crate::request_id::RequestId;
use crate::route::Route;
use crate::telemetry;
use crate::token::store::Store;
pub(crate) use claim::Claim;
use claim::Place;
use key::{Fingerprint, Scope};
pub(crate) use key::{IdempotencyKey, applies, key_of};
use memory::{LocalClaim, MemoryLedger};
use record::{Answer, Record};
use redis::SharedClaim;
pub(crate) use tee::KeptBody;

/// Added to the longest a request can take before its answer's head (two attempts of
/// `request_timeout`: the retry after a 401) for the in-flight marker's TTL: room for
/// the login between the attempts and for the body of the answer to stream.
const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(30);

/// What became of a keyed request: the `idempotency` field of its log line and the
/// `result` label of `ipproxy_idempotency_total` (one per keyed request; a request
/// that found the shared store down is also counted `store_down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Label {
    /// Claimed and forwarded.
    First,
    /// The kept answer, replayed.
    Replayed,
    /// `409 idempotency_in_progress`.
    InProgress,
    /// `422 idempotency_key_mismatch`.
    Mismatch,
    /// `409 idempotency_answer_not_kept`: a repeat of a key whose answer was too large
    /// to keep.
    NotKept,
    /// Claimed, but it never left the proxy: the key was released.
    Released,
    /// `503 idempotency_unavailable`: the shared store is down and
    /// `on_store_down = "reject"`.
    StoreDown,
}

impl Label {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Replayed => "replayed",
            Self::InProgress => "in_progress",
            Self::Mismatch => "mismatch",
            Self::NotKept => "not_kept",
            Self::Released => "released",
            Self::StoreDown => "store_down",
        }
    }
}

/// What the proxy answers itself to a keyed request.
#[derive(Debug)]
pub(crate) enum OwnAnswer {
    /// One of the error table's answers.
    Error(ProxyError),
    /// A kept answer (replayed, or the first request's own `504`/`502`).
    Kept(http::Response<Body>),
}

/// An upstream answer on its way, kept as it streams.
pub(crate) type Forwarded = (http::Response<KeptBody>, Outcome);

/// What the upstream exchange of a keyed request needs, owned: it runs on its own
/// task.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub client: UpstreamClient,
    pub limits: Limits,
    pub route: Arc<Route>,
    pub request_id: RequestId,
}

/// The idempotency records of this process. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Idempotency(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    ttl: Duration,
    max_response: usize,
    on_store_down: OnStoreDown,
    in_flight_ttl: Duration,
    local: MemoryLedger,
    /// The fleet's store, with `[store] kind = "redis"`.
    shared: Option<Store>,
    /// Whether the shared store was last found down (logged once per outage).
    store_down: AtomicBool,
}

impl Idempotency {
    pub(crate) fn new(
        config: &IdempotencyConfig,
        request_timeout: Duration,
        store: &Store,
    ) -> Self {
        Self(Arc::new(Inner {
            ttl: config.ttl,
            max_response: usize::try_from(config.max_response).unwrap_or(usize::MAX),
            on_store_down: config.on_store_down,
            in_flight_ttl: Self::in_flight_ttl(request_timeout),
            local: MemoryLedger::new(config.max_entries),
            shared: store.is_shared().then(|| store.clone()),
            store_down: AtomicBool::new(false),
        }))
    }

    /// How long an in-flight marker lives: two attempts and [`IN_FLIGHT_MARGIN`].
    pub(crate) fn in_flight_ttl(request_timeout: Duration) -> Duration {
        request_timeout.saturating_mul(2) + IN_FLIGHT_MARGIN
    }

    /// Answers a keyed request: forwards it at most once per key, or answers a
    /// repeat. The label is `None` for a request refused before its key was looked
    /// at (a body over `replay_limit`).
    pub(crate) async fn forward_once(
        &self,
        exchange: Exchange,
        request: Request<ClientBody>,
        caller: &Caller,
        key: &IdempotencyKey,
    ) -> (Result<Forwarded, OwnAnswer>, Option<Label>) {
        let (parts, body) = request.into_parts();
        let limits = &exchange.limits;
        // The whole body, to fingerprint it: up to `replay_limit` (413 beyond).
        let body = match OutboundBody::prepare(
            body,
            &parts.headers,
            limits.replay_limit,
            limits.replay_limit,
        )
        .await
        {
            Ok(body) => body,
            Err(error) => return (Err(OwnAnswer::Error(error)), None),
        };
        let bytes = body.buffered().map_or(&[][..], |bytes| &bytes[..]);
        let fingerprint = key::fingerprint(&parts.method, &parts.uri, bytes);
        let route = &exchange.route;
        let scope = Scope::new(route.credential.name(), caller, key);
        let claim = match self.claim(&route.name, scope, fingerprint).await {
            Ok(claim) => claim,
            Err(refused) => {
                let label = refused.label();
                // A refusal for a down store was counted `store_down` already.
                if label != Label::StoreDown {
                    telemetry::idempotency_counted(&route.name, label.as_str());
                }
                let answer = match refused {
                    Met::Kept(answer) => OwnAnswer::Kept(answer.replay(&exchange.request_id, true)),
                    Met::Refused(error, _) => OwnAnswer::Error(error),
                };
                return (Err(answer), Some(label));
            }
        };
        let route_name = Arc::clone(&route.name);
        let max_response = self.0.max_response;
        let exchange_task = async move {
            let Exchange {
                client,
                limits,
                route,
                request_id,
            } = exchange;
            match proxy::forward_prepared(&client, &limits, &route, &parts, body, &request_id).await
            {
                Ok((response, outcome)) => {
                    let (head, body) = response.into_parts();
                    let kept = KeptBody::keeping(
                        body,
                        claim,
                        head.status,
                        head.headers.clone(),
                        max_response,
                        request_id,
                    );
                    Ok((http::Response::from_parts(head, kept), outcome))
                }
                Err(failed) if !failed.may_have_left => {
                    claim.release().await;
                    Err((OwnAnswer::Error(failed.error), Label::Released))
                }
                Err(failed) => {
                    // It may have been sent: its answer is the proxy's own, for good.
                    let answer = Answer::of_error(failed.error, &request_id).await;
                    let response = answer.replay(&request_id, false);
                    claim.keep(Some(answer)).await;
                    Err((OwnAnswer::Kept(response), Label::First))
                }
            }
        };
        // Dropping the handle (the client left) does not cancel the task.
        let task = tokio::spawn(exchange_task.instrument(tracing::Span::current()));
        let (result, label) = match task.await {
            Ok(Ok(forwarded)) => (Ok(forwarded), Label::First),
            Ok(Err((answer, label))) => (Err(answer), label),
            Err(_panicked) => (
                Err(OwnAnswer::Error(ProxyError::UpstreamUnreachable)),
                Label::First,
            ),
        };
        telemetry::idempotency_counted(&route_name, label.as_str());
        (result, Some(label))
    }

    /// Claims `scope`, or says what holds it.
    async fn claim(
        &self,
        route: &Arc<str>,
        scope: Scope,
        fingerprint: Fingerprint,
    ) -> Result<Claim, Met> {
        let marker = Record::InFlight { fingerprint };
        let inner = &self.0;
        if let Some(store) = &inner.shared {
            match redis::claim(store, &scope, &marker, inner.in_flight_ttl).await {
                Ok(claim) => {
                    self.store_is_up();
                    return self.shared_claim(route, scope, fingerprint, claim).await;
                }
                Err(_down) => {
                    self.store_is_down(route);
                    if inner.on_store_down == OnStoreDown::Reject {
                        return Err(Met::Refused(
                            ProxyError::IdempotencyUnavailable,
                            Label::StoreDown,
                        ));
                    }
                }
            }
        }
        match inner.local.claim(scope, marker, inner.in_flight_ttl) {
            LocalClaim::Held(token) => {
                Ok(self.claim_of(route, scope, fingerprint, Place::Local(token)))
            }
            LocalClaim::Taken(record) => Err(Met::of(&record, &fingerprint)),
        }
    }

    /// A claim in the shared store. A key this replica answered from its memory while
    /// the store was down is answered the same way now, and the store learns it.
    async fn shared_claim(
        &self,
        route: &Arc<str>,
        scope: Scope,
        fingerprint: Fingerprint,
        claim: SharedClaim,
    ) -> Result<Claim, Met> {
        match claim {
            SharedClaim::Held(held) => {
                let claim = self.claim_of(route, scope, fingerprint, Place::Shared(held));
                match self.0.local.peek(&scope) {
                    None => Ok(claim),
                    Some(record @ Record::Done { .. }) => {
                        let met = Met::of(&record, &fingerprint);
                        claim.settle(record).await;
                        Err(met)
                    }
                    Some(record @ Record::InFlight { .. }) => {
                        claim.release().await;
                        Err(Met::of(&record, &fingerprint))
                    }
                }
            }
            SharedClaim::Taken(Some(record)) => Err(Met::of(&record, &fingerprint)),
            SharedClaim::Taken(None) => {
                tracing::error!(
                    route = &**route,
                    "an idempotency record in the shared store does not open (another key, \
                     tampering or garbage): its key is answered as used, without an answer"
                );
                Err(Met::Refused(
                    ProxyError::IdempotencyAnswerNotKept,
                    Label::NotKept,
                ))
            }
        }
    }

    fn claim_of(
        &self,
        route: &Arc<str>,
        scope: Scope,
        fingerprint: Fingerprint,
        place: Place,
    ) -> Claim {
        Claim::new(self.clone(), Arc::clone(route), scope, fingerprint, place)
    }

    fn store_is_down(&self, route: &str) {
        telemetry::idempotency_counted(route, "store_down");
        if !self.0.store_down.swap(true, Ordering::Relaxed) {
            let action = match self.0.on_store_down {
                OnStoreDown::Local => "this replica keeps idempotency keys in its own memory",
                OnStoreDown::Reject => "idempotent requests are refused with 503",
            };
            tracing::warn!(
                on_store_down = self.0.on_store_down.as_str(),
                "idempotency: the shared store is unreachable; {action} until it is back"
            );
        }
    }

    fn store_is_up(&self) {
        if self.0.store_down.swap(false, Ordering::Relaxed) {
            tracing::info!("idempotency: the shared store is reachable again");
        }
    }
}

/// What a claim met instead of a free scope.
enum Met {
    /// A kept answer with this request's fingerprint.
    Kept(Arc<Answer>),
    Refused(ProxyError, Label),
}

impl Met {
    fn of(record: &Record, fingerprint: &Fingerprint) -> Self {
        if record.fingerprint() != fingerprint {
            return Self::Refused(ProxyError::IdempotencyKeyMismatch, Label::Mismatch);
        }
        match record {
            Record::InFlight { .. } => {
                Self::Refused(ProxyError::IdempotencyInProgress, Label::InProgress)
            }
            Record::Done {
                answer: Some(answer),
                ..
            } => Self::Kept(Arc::clone(answer)),
            Record::Done { answer: None, .. } => {
                Self::Refused(ProxyError::IdempotencyAnswerNotKept, Label::NotKept)
            }
        }
    }

    fn label(&self) -> Label {
        match self {
            Self::Kept(_) => Label::Replayed,
            Self::Refused(_, label) => *label,
        }
    }
}
