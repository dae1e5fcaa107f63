//! Test helpers shared by the store's and the credential's tests.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{Backend, BackendError, Sealer, Store, StoreSettings};

/// A shared Redis store whose backend is [`Down`], not yet known to be: it shows as
/// up until an operation fails.
pub fn down_store() -> Store {
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
pub struct Down;

fn refused<'a, T: Send + 'a>() -> BoxFuture<'a, Result<T, BackendError>> {
    Box::pin(async { Err(BackendError("connection refused".into())) })
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
