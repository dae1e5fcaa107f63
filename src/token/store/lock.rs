//! The per-credential refresh lock in the store (`<prefix>:{<credential>}:lock`): one
//! replica of the fleet fetches at a time. Its value is random and known only to its
//! holder, so only the holder renews or releases it.

use std::fmt;

use super::{Store, StoreDown};

/// A held refresh lock: its random value, which only its holder knows.
#[derive(Clone)]
pub struct LockLease(pub(super) [u8; 16]);

impl fmt::Debug for LockLease {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("LockLease(***)")
    }
}

impl LockLease {
    fn value(&self) -> String {
        hex::encode(self.0)
    }
}

impl Store {
    /// Takes the refresh lock of `credential` when it is free.
    pub async fn try_lock(&self, credential: &str) -> Result<Option<LockLease>, StoreDown> {
        let key = self.key(credential, "lock");
        let lease = LockLease(rand::random());
        let value = lease.value();
        let backend = self.0.backend.load_full();
        let taken = self
            .run_write(
                "lock",
                backend.set_if_absent(&key, value.as_bytes(), self.0.settings.lock_ttl),
            )
            .await?;
        Ok(taken.then_some(lease))
    }

    /// Extends a held lock by another `lock_ttl`; false when it was lost.
    pub async fn renew(&self, credential: &str, lease: &LockLease) -> Result<bool, StoreDown> {
        let key = self.key(credential, "lock");
        let value = lease.value();
        let backend = self.0.backend.load_full();
        self.run_write(
            "renew",
            backend.expire_if_equal(&key, value.as_bytes(), self.0.settings.lock_ttl),
        )
        .await
    }

    /// Releases a held lock (only if it is still this holder's).
    pub async fn release(&self, credential: &str, lease: LockLease) {
        let key = self.key(credential, "lock");
        let value = lease.value();
        let backend = self.0.backend.load_full();
        let _ = self
            .run_write("release", backend.delete_if_equal(&key, value.as_bytes()))
            .await;
    }
}
