//! The replica's own idempotency records: a map bounded by `max_entries` (the oldest
//! claim dropped first) whose entries expire (`idempotency.ttl` for answers, the
//! in-flight TTL for claims). The store of a single replica, and the fallback of a
//! fleet whose shared store is down.
//!
//! A key dropped for the bound is forgotten: a repeat of it is sent again. The bound
//! is on keys, so memory is at most `max_entries` × (`max_response` + headers).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::key::Scope;
use super::record::Record;
use crate::telemetry;

/// What a claim found.
#[derive(Debug)]
pub(super) enum LocalClaim {
    /// Free: now held, with this token (only its holder settles or releases it).
    Held(u64),
    Taken(Record),
}

/// Bounded, expiring records.
#[derive(Debug)]
pub(super) struct MemoryLedger {
    entries: Mutex<Entries>,
    max_entries: usize,
}

#[derive(Debug, Default)]
struct Entries {
    by_scope: HashMap<Scope, Entry>,
    /// Claim order: sequence number → scope; the first is the oldest.
    order: BTreeMap<u64, Scope>,
    next: u64,
}

#[derive(Debug)]
struct Entry {
    /// Its place in `order`, and its holder's token.
    sequence: u64,
    record: Record,
    expires: Instant,
}

impl Entries {
    fn remove(&mut self, scope: &Scope) {
        if let Some(entry) = self.by_scope.remove(scope) {
            self.order.remove(&entry.sequence);
        }
    }

    /// The live record of `scope`; an expired one is removed.
    fn live(&mut self, scope: &Scope, now: Instant) -> Option<&mut Entry> {
        if self
            .by_scope
            .get(scope)
            .is_some_and(|entry| entry.expires <= now)
        {
            self.remove(scope);
        }
        self.by_scope.get_mut(scope)
    }

    fn insert(&mut self, scope: Scope, record: Record, expires: Instant, max: usize) -> u64 {
        self.remove(&scope);
        let sequence = self.next;
        self.next += 1;
        self.by_scope.insert(
            scope,
            Entry {
                sequence,
                record,
                expires,
            },
        );
        self.order.insert(sequence, scope);
        let now = Instant::now();
        // The oldest go first: past the bound, and any expired ones at the front
        // (bounded work per insert: expired entries further back wait their turn).
        while let Some((_, oldest)) = self.order.first_key_value() {
            let oldest = *oldest;
            let expired = self
                .by_scope
                .get(&oldest)
                .is_none_or(|entry| entry.expires <= now);
            if self.by_scope.len() <= max && !expired {
                break;
            }
            self.remove(&oldest);
        }
        sequence
    }
}

impl MemoryLedger {
    pub(super) fn new(max_entries: usize) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            max_entries,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Claims `scope` for `ttl` unless a live record is there.
    pub(super) fn claim(&self, scope: Scope, record: Record, ttl: Duration) -> LocalClaim {
        let now = Instant::now();
        let mut entries = self.lock();
        if let Some(entry) = entries.live(&scope, now) {
            return LocalClaim::Taken(entry.record.clone());
        }
        let token = entries.insert(scope, record, now + ttl, self.max_entries);
        telemetry::idempotency_entries(entries.by_scope.len());
        LocalClaim::Held(token)
    }

    /// The live record of `scope`, if any.
    pub(super) fn peek(&self, scope: &Scope) -> Option<Record> {
        let now = Instant::now();
        self.lock()
            .live(scope, now)
            .map(|entry| entry.record.clone())
    }

    /// Replaces the claim held with `token` by `record`, kept for `ttl`; false when
    /// it is no longer there (expired or dropped for the bound).
    pub(super) fn settle(&self, scope: &Scope, token: u64, record: Record, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut entries = self.lock();
        match entries.live(scope, now) {
            Some(entry) if entry.sequence == token => {
                entry.record = record;
                entry.expires = now + ttl;
                true
            }
            _ => false,
        }
    }

    /// Puts `record` under `scope` whatever is there (an answer the shared store
    /// could not take).
    pub(super) fn put(&self, scope: Scope, record: Record, ttl: Duration) {
        let mut entries = self.lock();
        entries.insert(scope, record, Instant::now() + ttl, self.max_entries);
        telemetry::idempotency_entries(entries.by_scope.len());
    }

    /// Gives the claim held with `token` up.
    pub(super) fn release(&self, scope: &Scope, token: u64) {
        let mut entries = self.lock();
        if entries
            .by_scope
            .get(scope)
            .is_some_and(|entry| entry.sequence == token)
        {
            entries.remove(scope);
        }
        telemetry::idempotency_entries(entries.by_scope.len());
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let entries = self.lock();
        (entries.by_scope.len(), entries.order.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(number: u64) -> Scope {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&number.to_be_bytes());
        Scope::from_bytes(bytes)
    }

    fn marker() -> Record {
        Record::InFlight {
            fingerprint: [1; 32],
        }
    }

    #[test]
    fn the_bound_holds_under_a_hundred_thousand_distinct_keys_dropping_the_oldest() {
        let max = 1_000;
        let ledger = MemoryLedger::new(max);
        let hour = Duration::from_secs(3600);
        for number in 0..100_000 {
            assert!(matches!(
                ledger.claim(scope(number), marker(), hour),
                LocalClaim::Held(_)
            ));
            let (entries, order) = ledger.len();
            assert!(entries <= max && order == entries, "{entries} {order}");
        }
        assert_eq!(ledger.len(), (max, max));
        assert!(
            ledger.peek(&scope(100_000 - 1)).is_some(),
            "the newest stays"
        );
        assert!(
            ledger.peek(&scope(100_000 - max as u64)).is_some(),
            "the oldest kept one"
        );
        assert!(ledger.peek(&scope(100_000 - max as u64 - 1)).is_none());
        assert!(ledger.peek(&scope(0)).is_none(), "the oldest went first");
    }

    #[test]
    fn a_claim_is_settled_or_released_only_by_its_holder() {
        let ledger = MemoryLedger::new(10);
        let ttl = Duration::from_secs(60);
        let LocalClaim::Held(token) = ledger.claim(scope(1), marker(), ttl) else {
            panic!("free");
        };
        assert!(matches!(
            ledger.claim(scope(1), marker(), ttl),
            LocalClaim::Taken(Record::InFlight { .. })
        ));
        ledger.release(&scope(1), token + 1);
        assert!(ledger.peek(&scope(1)).is_some(), "not the holder's token");
        let done = Record::Done {
            fingerprint: [1; 32],
            answer: None,
        };
        assert!(!ledger.settle(&scope(1), token + 1, done.clone(), ttl));
        assert!(ledger.settle(&scope(1), token, done.clone(), ttl));
        assert_eq!(ledger.peek(&scope(1)), Some(done));
        ledger.release(&scope(1), token);
        assert_eq!(ledger.len(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn records_expire_at_their_ttl() {
        let ledger = MemoryLedger::new(10);
        let LocalClaim::Held(_) = ledger.claim(scope(1), marker(), Duration::from_secs(5)) else {
            panic!("free");
        };
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert!(ledger.peek(&scope(1)).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(ledger.peek(&scope(1)).is_none());
        assert!(matches!(
            ledger.claim(scope(1), marker(), Duration::from_secs(5)),
            LocalClaim::Held(_)
        ));
        assert_eq!(ledger.len(), (1, 1));
    }
}
