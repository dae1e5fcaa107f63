//! The raw key-value operations a store backend offers (their meaning is Redis's), and
//! how one fails: unreachable, or refused by a store that answered.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::Failure;

/// The raw operations a store backend offers; their meaning is Redis's.
pub trait Backend: Send + Sync + fmt::Debug {
    /// `GET key`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>>;
    /// `SET key value NX PX ttl`: true when it was set.
    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;
    /// Sets `key` to `value` with `ttl` when the generation of its current value is
    /// `expected` (a missing or unreadable value counts as generation 0).
    fn set_if_generation<'a>(
        &'a self,
        key: &'a str,
        expected: u64,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;
    /// Deletes `key` when its value is `value`.
    fn delete_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, BackendError>>;
    /// Sets the TTL of `key` when its value is `value`.
    fn expire_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;
    /// A round trip (`PING`).
    fn ping(&self) -> BoxFuture<'_, Result<(), BackendError>>;
    /// Replaces the value of `key` with `value` and `ttl` when it is `expected`
    /// (idempotency: a claim's marker becomes its answer only for its holder). A
    /// backend without it refuses, as if it were down.
    fn set_if_equal<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        let _ = (key, expected, value, ttl);
        Box::pin(async { Err(BackendError::refused("set_if_equal is not supported")) })
    }
}

/// A backend shared by several stores (replicas in one process, in tests).
impl<B: Backend + ?Sized> Backend for Arc<B> {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>> {
        (**self).get(key)
    }
    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        (**self).set_if_absent(key, value, ttl)
    }
    fn set_if_generation<'a>(
        &'a self,
        key: &'a str,
        expected: u64,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        (**self).set_if_generation(key, expected, value, ttl)
    }
    fn delete_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        (**self).delete_if_equal(key, value)
    }
    fn expire_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        (**self).expire_if_equal(key, value, ttl)
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        (**self).ping()
    }
    fn set_if_equal<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        (**self).set_if_equal(key, expected, value, ttl)
    }
}

/// A backend could not do what was asked. The text names no secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub failure: Failure,
    pub message: String,
}

impl BackendError {
    /// No answer (connection refused or dropped, a timeout).
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self {
            failure: Failure::Unreachable,
            message: message.into(),
        }
    }

    /// The store answered with an error: it is there but will not do this.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            failure: Failure::Refused,
            message: message.into(),
        }
    }
}
