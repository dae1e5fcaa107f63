//! Idempotency records in the shared store: claims and kept answers of requests with
//! an `Idempotency-Key`, under `<prefix>:idem:<scope>` (the scope is a SHA-256 hex of
//! credential, caller and key, so no key or caller name is a Redis key name).
//!
//! Every value is sealed like a token entry (AES-256-GCM, a random nonce), with the
//! scope as associated data, so a record opens only under its own key name: an answer
//! cannot be moved to another caller's scope. The sealed value of a claim is also its
//! holder's proof: only the replica holding those exact bytes can turn the claim into
//! an answer (`set_if_equal`) or release it (`delete_if_equal`).
//!
//! Knows bytes, not HTTP: the records' meaning belongs to `crate::idempotency`.

use std::fmt;
use std::time::Duration;

use super::{Store, StoreDown};

/// How often a claim is tried again when the record it met vanished between the
/// `SET NX` and the `GET` (released by its holder meanwhile).
const CLAIM_ATTEMPTS: usize = 3;

/// A sealed record as it sits in the store: the proof of a held claim.
#[derive(Clone)]
pub struct SealedAnswer(Vec<u8>);

impl fmt::Debug for SealedAnswer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("SealedAnswer(***)")
    }
}

/// What a claim found.
#[derive(Debug)]
pub enum AnswerClaim {
    /// The scope was free: it now holds the claim.
    Held(SealedAnswer),
    /// Another request's record: its plaintext, `None` when it does not open.
    Taken(Option<Vec<u8>>),
}

impl Store {
    /// Claims `scope` with `record` (an in-flight marker) for `ttl`, unless a record
    /// is there already (then it is read back).
    pub async fn claim_answer(
        &self,
        scope: &str,
        record: &[u8],
        ttl: Duration,
    ) -> Result<AnswerClaim, StoreDown> {
        let key = self.answer_key(scope);
        let sealed = self.seal_answer(scope, record);
        for _ in 0..CLAIM_ATTEMPTS {
            let backend = self.0.backend.load_full();
            if self
                .run_write("idem_claim", backend.set_if_absent(&key, &sealed, ttl))
                .await?
            {
                return Ok(AnswerClaim::Held(SealedAnswer(sealed)));
            }
            if let Some(current) = self.run("idem_read", backend.get(&key)).await? {
                return Ok(AnswerClaim::Taken(self.open_answer(scope, &current)));
            }
        }
        // Claimed and released over and over: as good as in flight.
        Ok(AnswerClaim::Taken(None))
    }

    /// Replaces a held claim with `record` for `ttl`; false when the claim was no
    /// longer there (it expired).
    pub async fn settle_answer(
        &self,
        scope: &str,
        held: &SealedAnswer,
        record: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreDown> {
        let key = self.answer_key(scope);
        let sealed = self.seal_answer(scope, record);
        let backend = self.0.backend.load_full();
        self.run_write(
            "idem_settle",
            backend.set_if_equal(&key, &held.0, &sealed, ttl),
        )
        .await
    }

    /// Gives a held claim up, so that a retry goes through.
    pub async fn release_answer(&self, scope: &str, held: &SealedAnswer) -> Result<(), StoreDown> {
        let key = self.answer_key(scope);
        let backend = self.0.backend.load_full();
        self.run_write("idem_release", backend.delete_if_equal(&key, &held.0))
            .await
            .map(|_| ())
    }

    fn answer_key(&self, scope: &str) -> String {
        format!("{}:idem:{scope}", self.0.settings.prefix)
    }

    fn answer_associated(scope: &str) -> Vec<u8> {
        format!("ipproxy-idem-v1:{scope}").into_bytes()
    }

    fn seal_answer(&self, scope: &str, record: &[u8]) -> Vec<u8> {
        self.0
            .sealer
            .load()
            .seal(record, &Self::answer_associated(scope))
    }

    fn open_answer(&self, scope: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        self.0
            .sealer
            .load()
            .open(sealed, &Self::answer_associated(scope))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::store::{MemoryBackend, Sealer, StoreSettings};

    fn store() -> Store {
        Store::new(
            "redis",
            true,
            Box::new(MemoryBackend::default()),
            Sealer::ephemeral(),
            StoreSettings::default(),
        )
    }

    #[tokio::test]
    async fn one_claim_holds_a_scope_and_only_its_holder_settles_or_releases_it() {
        let store = store();
        let ttl = Duration::from_secs(60);
        let AnswerClaim::Held(held) = store.claim_answer("s1", b"marker", ttl).await.expect("up")
        else {
            panic!("a free scope is claimed");
        };
        match store.claim_answer("s1", b"other", ttl).await.expect("up") {
            AnswerClaim::Taken(Some(record)) => assert_eq!(record, b"marker"),
            other => panic!("the second claim reads the first: {other:?}"),
        }
        let AnswerClaim::Held(stranger) =
            store.claim_answer("s2", b"marker", ttl).await.expect("up")
        else {
            panic!("another scope is free");
        };
        assert!(
            !store
                .settle_answer("s1", &stranger, b"answer", ttl)
                .await
                .expect("up"),
            "another claim's proof does not settle this one"
        );
        assert!(
            store
                .settle_answer("s1", &held, b"answer", ttl)
                .await
                .expect("up")
        );
        match store.claim_answer("s1", b"again", ttl).await.expect("up") {
            AnswerClaim::Taken(Some(record)) => assert_eq!(record, b"answer"),
            other => panic!("the answer is read back: {other:?}"),
        }
        store.release_answer("s2", &stranger).await.expect("up");
        assert!(matches!(
            store.claim_answer("s2", b"marker", ttl).await.expect("up"),
            AnswerClaim::Held(_)
        ));
    }
}
