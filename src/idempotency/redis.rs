//! Idempotency records in the fleet's shared store (`[store] kind = "redis"`): the
//! store's own connection and keys (`token::store`'s answer operations), the records
//! encoded by `record`. Store failures come back as [`StoreDown`]; what to do then
//! (the replica's memory, or `503`) is `super`'s decision.

use std::time::Duration;

use super::key::Scope;
use super::record::Record;
use crate::token::store::{AnswerClaim, SealedAnswer, Store, StoreDown};

/// What a claim in the shared store found.
#[derive(Debug)]
pub(super) enum SharedClaim {
    Held(SealedAnswer),
    /// Another request's record; `None` when it does not open or decode.
    Taken(Option<Record>),
}

pub(super) async fn claim(
    store: &Store,
    scope: &Scope,
    record: &Record,
    ttl: Duration,
) -> Result<SharedClaim, StoreDown> {
    let claim = store
        .claim_answer(&scope.hex(), &record.encode(), ttl)
        .await?;
    Ok(match claim {
        AnswerClaim::Held(held) => SharedClaim::Held(held),
        AnswerClaim::Taken(plaintext) => {
            SharedClaim::Taken(plaintext.as_deref().and_then(Record::decode))
        }
    })
}

pub(super) async fn settle(
    store: &Store,
    scope: &Scope,
    held: &SealedAnswer,
    record: &Record,
    ttl: Duration,
) -> Result<bool, StoreDown> {
    store
        .settle_answer(&scope.hex(), held, &record.encode(), ttl)
        .await
}

pub(super) async fn release(
    store: &Store,
    scope: &Scope,
    held: &SealedAnswer,
) -> Result<(), StoreDown> {
    store.release_answer(&scope.hex(), held).await
}
