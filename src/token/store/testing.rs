//! Test helpers shared by the store's and the credential's tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{Backend, BackendError, MemoryBackend, Sealer, Store, StoreSettings};

/// A shared Redis store whose backend is [`Down`], not yet known to be: it shows as
/// up until an operation fails.
pub(crate) fn down_store() -> Store {
    Store::new(
        "redis",
        true,
        Box::new(Down),
        Sealer::ephemeral(),
        StoreSettings::default(),
    )
}

/// A backend that is down: every operation fails as a refused connection would.
#[derive(Debug)]
pub(crate) struct Down;

fn refused<'a, T: Send + 'a>() -> BoxFuture<'a, Result<T, BackendError>> {
    Box::pin(async { Err(BackendError::unreachable("connection refused")) })
}

impl Backend for Down {
    fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>> {
        refused()
    }
    fn set_if_absent<'a>(
        &'a self,
        _: &'a str,
        _: &'a [u8],
        _: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        refused()
    }
    fn set_if_generation<'a>(
        &'a self,
        _: &'a str,
        _: u64,
        _: &'a [u8],
        _: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        refused()
    }
    fn delete_if_equal<'a>(
        &'a self,
        _: &'a str,
        _: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        refused()
    }
    fn expire_if_equal<'a>(
        &'a self,
        _: &'a str,
        _: &'a [u8],
        _: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        refused()
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        refused()
    }
}

/// A backend that answers reads but refuses every write, as a Redis over
/// `maxmemory` with `noeviction` does, until [`RefusingWrites::accept_writes`];
/// it counts every operation it is asked for.
#[derive(Debug, Default)]
pub(crate) struct RefusingWrites {
    inner: MemoryBackend,
    accepting: AtomicBool,
    operations: AtomicU64,
}

impl RefusingWrites {
    pub(crate) fn accept_writes(&self) {
        self.accepting.store(true, Ordering::SeqCst);
    }

    pub(crate) fn operations(&self) -> u64 {
        self.operations.load(Ordering::SeqCst)
    }

    fn count(&self) {
        self.operations.fetch_add(1, Ordering::SeqCst);
    }

    /// `write` is only called when writes are accepted: the in-process backend applies
    /// a write when it is called, not when its future is polled, so a refused write
    /// must never reach it.
    fn write<'a, T: Send + 'a>(
        &'a self,
        write: impl FnOnce() -> BoxFuture<'a, Result<T, BackendError>>,
    ) -> BoxFuture<'a, Result<T, BackendError>> {
        self.count();
        if self.accepting.load(Ordering::SeqCst) {
            write()
        } else {
            Box::pin(async {
                Err(BackendError::refused(
                    "OOM command not allowed when used memory > 'maxmemory'",
                ))
            })
        }
    }
}

impl Backend for RefusingWrites {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>> {
        self.count();
        self.inner.get(key)
    }
    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.write(|| self.inner.set_if_absent(key, value, ttl))
    }
    fn set_if_generation<'a>(
        &'a self,
        key: &'a str,
        expected: u64,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.write(|| self.inner.set_if_generation(key, expected, value, ttl))
    }
    fn delete_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.write(|| self.inner.delete_if_equal(key, value))
    }
    fn expire_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.write(|| self.inner.expire_if_equal(key, value, ttl))
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.count();
        self.inner.ping()
    }
}
