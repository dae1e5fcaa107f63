//! The in-process backend: the same operations as Redis over a map, with expiry.
//! The default store of one replica (it only ever reads back its own entries), and
//! the stand-in for a shared Redis when several credentials in one test act as
//! replicas.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::{Backend, BackendError, generation_of};

/// Values with their expiry.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    entries: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
}

impl MemoryBackend {
    /// Runs `change` on the live entries (expired ones removed first).
    fn with<R>(&self, change: impl FnOnce(&mut HashMap<String, (Vec<u8>, Instant)>) -> R) -> R {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        entries.retain(|_, (_, expires)| *expires > now);
        change(&mut entries)
    }

    fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, Result<T, BackendError>> {
        async move { Ok(value) }.boxed()
    }
}

impl Backend for MemoryBackend {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>> {
        Self::ready(self.with(|entries| entries.get(key).map(|(value, _)| value.clone())))
    }

    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Self::ready(self.with(|entries| {
            if entries.contains_key(key) {
                return false;
            }
            entries.insert(key.to_owned(), (value.to_vec(), Instant::now() + ttl));
            true
        }))
    }

    fn set_if_generation<'a>(
        &'a self,
        key: &'a str,
        expected: u64,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Self::ready(self.with(|entries| {
            let current = entries
                .get(key)
                .map_or(0, |(value, _)| generation_of(value));
            if current != expected {
                return false;
            }
            entries.insert(key.to_owned(), (value.to_vec(), Instant::now() + ttl));
            true
        }))
    }

    fn delete_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Self::ready(self.with(|entries| {
            let held = entries
                .get(key)
                .is_some_and(|(current, _)| current == value);
            if held {
                entries.remove(key);
            }
            held
        }))
    }

    fn expire_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Self::ready(self.with(|entries| match entries.get_mut(key) {
            Some((current, expires)) if current == value => {
                *expires = Instant::now() + ttl;
                true
            }
            _ => false,
        }))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Self::ready(())
    }

    fn set_if_equal<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Self::ready(self.with(|entries| match entries.get_mut(key) {
            Some(entry) if entry.0 == expected => {
                *entry = (value.to_vec(), Instant::now() + ttl);
                true
            }
            _ => false,
        }))
    }
}
