//! `[idempotency]`: how long answers to `Idempotency-Key` requests are kept, how large
//! a kept answer may be, the memory store's bound, and what to do when the shared
//! store is down. Only routes with `idempotency = true` use it.

use std::time::Duration;

use super::Problem;
use super::defaults::{
    DEFAULT_IDEMPOTENCY_MAX_ENTRIES, DEFAULT_IDEMPOTENCY_MAX_RESPONSE, DEFAULT_IDEMPOTENCY_TTL,
};
use super::parse;
use super::raw::{RawIdempotency, RawStoreDown};

/// Ten million keys is far beyond any replica's memory for answers; a larger number is
/// a typo.
const MAX_ENTRIES_LIMIT: u64 = 10_000_000;
/// A kept answer goes through Redis whole: more than 64 MiB is a mistake.
const MAX_RESPONSE_LIMIT: u64 = 64 * 1024 * 1024;

/// What a replica does with an idempotent request when the shared store is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreDown {
    /// Keys and answers in this replica's memory until the store is back.
    #[default]
    Local,
    /// `503 idempotency_unavailable`.
    Reject,
}

impl OnStoreDown {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Reject => "reject",
        }
    }
}

/// `[idempotency]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// How long an answer is kept for repeats.
    pub ttl: Duration,
    /// Largest answer body kept; larger ones pass through, their key marked done
    /// without a kept answer.
    pub max_response: u64,
    /// The memory store's bound on keys, oldest dropped first.
    pub max_entries: usize,
    pub on_store_down: OnStoreDown,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_IDEMPOTENCY_TTL,
            max_response: DEFAULT_IDEMPOTENCY_MAX_RESPONSE,
            max_entries: DEFAULT_IDEMPOTENCY_MAX_ENTRIES,
            on_store_down: OnStoreDown::default(),
        }
    }
}

/// `[idempotency]` from its raw keys; problems name the key.
pub(super) fn resolve(raw: RawIdempotency, problems: &mut Vec<Problem>) -> IdempotencyConfig {
    let defaults = IdempotencyConfig::default();
    let mut problem = |key: &str, message: String| problems.push(Problem::new(key, message));
    let ttl = match raw.ttl.as_deref().map(parse::duration) {
        None => defaults.ttl,
        Some(Ok(ttl)) if !ttl.is_zero() => ttl,
        Some(Ok(_)) => {
            problem("idempotency.ttl", "must be longer than zero".to_owned());
            defaults.ttl
        }
        Some(Err(message)) => {
            problem("idempotency.ttl", message);
            defaults.ttl
        }
    };
    let max_response = match raw.max_response.as_ref().map(parse::size) {
        None => defaults.max_response,
        Some(Ok(size)) if size <= MAX_RESPONSE_LIMIT => size,
        Some(Ok(_)) => {
            problem(
                "idempotency.max_response",
                format!("must be at most {MAX_RESPONSE_LIMIT} bytes (64MiB)"),
            );
            defaults.max_response
        }
        Some(Err(message)) => {
            problem("idempotency.max_response", message);
            defaults.max_response
        }
    };
    let max_entries = match raw.max_entries {
        None => defaults.max_entries,
        Some(count) if (1..=MAX_ENTRIES_LIMIT).contains(&count) => {
            usize::try_from(count).unwrap_or(defaults.max_entries)
        }
        Some(_) => {
            problem(
                "idempotency.max_entries",
                format!("must be from 1 to {MAX_ENTRIES_LIMIT}"),
            );
            defaults.max_entries
        }
    };
    let on_store_down = match raw.on_store_down {
        None => defaults.on_store_down,
        Some(RawStoreDown::Local) => OnStoreDown::Local,
        Some(RawStoreDown::Reject) => OnStoreDown::Reject,
    };
    IdempotencyConfig {
        ttl,
        max_response,
        max_entries,
        on_store_down,
    }
}
