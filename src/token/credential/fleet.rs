//! The fleet protocol a flight runs: read the shared entry and adopt a newer token,
//! or take the fleet's lock and log in, or log in alone when the store cannot be
//! used; after an outage, converge on the newest token without going back to an
//! older one. Also the login itself and the token it mints.
//!
//! Must not: adopt a token that is not newer than this replica's own, or one that
//! IntelePeer already rejected here.

use std::sync::Arc;
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::{Credential, Obtained, RefreshError};
use crate::task::BackgroundTask;
use crate::telemetry::trace;
use crate::token::schedule::{self, RefreshReason, TokenTimes};
use crate::token::slot::{self, FetchedFrom, Minted, Token};
use crate::token::source::AuthError;
use crate::token::store::{Entry, LockLease, StoredToken, WAIT_POLL};

/// How many rejected tokens a credential remembers: more than an outage produces.
const REMEMBERED_REJECTIONS: usize = 8;

/// How many times a replica back from an outage tries to publish its newer token
/// over entries other replicas publish at the same moment (one per replica racing it
/// is enough in practice; the bound keeps a store that flaps from holding it).
const PUBLISH_ATTEMPTS: usize = 3;

/// The fingerprints of the last [`REMEMBERED_REJECTIONS`] tokens rejected with a 401.
#[derive(Debug, Default)]
pub(super) struct RejectedTokens {
    fingerprints: std::collections::VecDeque<[u8; 8]>,
}

impl RejectedTokens {
    pub(super) fn remember(&mut self, fingerprint: [u8; 8]) {
        if self.contains(&fingerprint) {
            return;
        }
        if self.fingerprints.len() == REMEMBERED_REJECTIONS {
            self.fingerprints.pop_front();
        }
        self.fingerprints.push_back(fingerprint);
    }

    pub(super) fn contains(&self, fingerprint: &[u8; 8]) -> bool {
        self.fingerprints.contains(fingerprint)
    }
}

impl Credential {
    /// The fleet protocol. Reads the shared entry first and adopts a newer token
    /// instead of logging in; otherwise takes the refresh lock and logs in; while
    /// another replica holds the lock, waits for its entry (bounded). Whenever the
    /// store is unreachable, logs in alone: the store never fails a request.
    pub(super) async fn obtain(&self, reason: RefreshReason) -> Result<Obtained, RefreshError> {
        let store = &self.inner.store;
        if self.is_static() || !store.is_up() {
            return self.login_alone(reason).await;
        }
        let now = self.inner.clock.now();
        if reason == RefreshReason::Resync
            && let Some(own) = self.inner.slot.load().filter(|token| token.is_usable(now))
        {
            return Ok(self.converge(own).await);
        }
        let deadline =
            self.inner.clock.now() + store.lock_ttl() + self.inner.settings.request_timeout;
        // What counts as newer: for `/refresh`, newer than what was there when it was
        // asked for (someone else's login finishing meanwhile is as good as ours).
        let mut floor: Option<u64> = None;
        loop {
            let Ok(seen) = store.read(self.name()).await else {
                return self.login_alone(reason).await;
            };
            let floor = *floor.get_or_insert(if reason == RefreshReason::Manual {
                seen.generation()
            } else {
                0
            });
            if let Some(obtained) = self.adopt_if_newer(&seen, reason, floor) {
                return Ok(obtained);
            }
            if reason == RefreshReason::Rejected && self.reauth_closed(Some(&seen)) {
                return Err(RefreshError::Suppressed);
            }
            match store.try_lock(self.name()).await {
                Err(_) => return self.login_alone(reason).await,
                Ok(Some(lease)) => return self.login_holding(reason, lease, floor).await,
                Ok(None) => {}
            }
            // Another replica is logging in: look again shortly.
            if self.inner.clock.now() + WAIT_POLL > deadline {
                tracing::warn!(
                    credential = self.name(),
                    "another replica held the refresh lock too long: logging in alone"
                );
                return self.login_alone(reason).await;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Logs in holding the fleet's lock (renewed every third of its lease meanwhile),
    /// writes the entry if nobody else did, and releases the lock.
    async fn login_holding(
        &self,
        reason: RefreshReason,
        lease: LockLease,
        floor: u64,
    ) -> Result<Obtained, RefreshError> {
        let store = &self.inner.store;
        let renewing = {
            let store = store.clone();
            let name = self.inner.name.clone();
            let lease = lease.clone();
            let every = store.lock_ttl() / 3;
            BackgroundTask::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if !matches!(store.renew(&name, &lease).await, Ok(true)) {
                        break;
                    }
                }
            })
        };
        let result = async {
            // Someone may have written the entry just before we took the lock.
            let seen = store.read(self.name()).await.unwrap_or(Entry::Absent);
            if let Some(obtained) = self.adopt_if_newer(&seen, reason, floor) {
                return Ok(obtained);
            }
            if reason == RefreshReason::Rejected && self.reauth_closed(Some(&seen)) {
                return Err(RefreshError::Suppressed);
            }
            let generation = seen.generation().max(self.fleet_generation()) + 1;
            let (obtained, stored) = self.login(reason, generation).await?;

            if let Some(stored) = stored {
                let written = store
                    .write(
                        self.name(),
                        &stored,
                        seen.generation(),
                        self.inner.clock.wall(),
                    )
                    .await;
                if written == Ok(false) {
                    tracing::warn!(
                        credential = self.name(),
                        "the shared entry changed during this login (the lock was lost): \
                         keeping this token locally"
                    );
                }
            }
            Ok(obtained)
        }
        .await;
        drop(renewing);
        store.release(self.name(), lease).await;
        result
    }

    /// Logs in without the store: it is unreachable, or the credential is static. A
    /// 401-caused login still keeps this process's reauth interval (the fleet's cannot
    /// be read).
    async fn login_alone(&self, reason: RefreshReason) -> Result<Obtained, RefreshError> {
        if reason == RefreshReason::Rejected && self.reauth_closed(None) {
            return Err(RefreshError::Suppressed);
        }
        let generation = self.fleet_generation() + 1;
        self.login(reason, generation)
            .await
            .map(|(obtained, _)| obtained)
    }

    /// The store came back after an outage: adopt the fleet's token if it is newer
    /// than ours (fleet generation, then the time it was obtained), usable and not one
    /// rejected here; otherwise publish ours (compare-and-set), so every replica ends
    /// up with the newest token without a login. Never goes back to an older token: a
    /// replica that logged in alone during the outage holds a newer token than the
    /// entry written before it, and with an IntelePeer that revokes older tokens on a
    /// new login the entry's is dead.
    ///
    /// A compare-and-set lost to another replica publishing at the same moment is
    /// tried again over what it wrote, when ours is still the newer one: keeping ours
    /// without publishing it would leave the older token in the store, and a replica
    /// that already took its second look would never learn of ours.
    async fn converge(&self, own: Arc<Token>) -> Obtained {
        let store = &self.inner.store;
        let kept = |token: Arc<Token>| Obtained {
            token,
            origin: None,
        };
        for _ in 0..PUBLISH_ATTEMPTS {
            let Ok(seen) = store.read(self.name()).await else {
                return kept(own);
            };
            if let Some(stored) = seen.token() {
                if slot::fingerprint(stored.token.expose_secret()) == own.fingerprint {
                    return kept(own);
                }
                if is_newer(stored, &own)
                    && let Some(obtained) = self.adopt(&seen)
                {
                    return obtained;
                }
            }
            let Some(expires_at) = own.expires_at() else {
                return kept(own);
            };
            if !store.accepts_writes() {
                return kept(own);
            }
            let stored = StoredToken {
                // Our own generation where it is ahead (the entry then says what our
                // token says), otherwise one past the entry's, so the compare-and-set
                // replaces it.
                generation: own.fleet_generation.max(seen.generation() + 1),
                token: own.secret.clone(),
                expires_at,
                obtained_at: own.obtained_at,
                reason: own.reason,
            };
            let wall = self.inner.clock.wall();
            match store
                .write(self.name(), &stored, seen.generation(), wall)
                .await
            {
                // Another replica published first: look at what it wrote.
                Ok(false) => {}
                Ok(true) | Err(_) => return kept(own),
            }
        }
        kept(own)
    }

    /// The fleet generation of the current token (0 without one).
    fn fleet_generation(&self) -> u64 {
        self.inner
            .slot
            .with(|token| token.map_or(0, |token| token.fleet_generation))
    }

    /// Adopts the entry when it is newer than our token (and its generation above
    /// `floor`), usable, not one rejected here, and, for a refresh ahead, not itself
    /// due for refresh.
    fn adopt_if_newer(&self, seen: &Entry, reason: RefreshReason, floor: u64) -> Option<Obtained> {
        let stored = seen.token()?;
        if stored.generation <= floor {
            return None;
        }
        if let Some(own) = self.inner.slot.load()
            && !is_newer(stored, &own)
        {
            return None;
        }
        let obtained = self.adopt(seen)?;
        let due = obtained
            .token
            .times
            .is_some_and(|times| self.inner.clock.now() >= times.refresh_at);
        (reason != RefreshReason::Ahead || !due).then_some(obtained)
    }

    /// The entry's token as ours, if it is usable and not one rejected here.
    fn adopt(&self, seen: &Entry) -> Option<Obtained> {
        let stored = seen.token()?;
        let fingerprint = slot::fingerprint(stored.token.expose_secret());
        if self.lock_state().rejected.contains(&fingerprint) {
            tracing::warn!(
                credential = self.name(),
                fleet_generation = stored.generation,
                "the shared entry holds a token IntelePeer already rejected here: not adopted"
            );
            return None;
        }
        let lifetime = stored
            .expires_at
            .duration_since(stored.obtained_at)
            .unwrap_or_default();
        let times = schedule::token_times(
            stored.expires_at,
            lifetime,
            self.inner.clock.now(),
            self.inner.clock.wall(),
            self.inner.settings.refresh_before,
            self.inner.random.unit(),
        )?;
        let token = self
            .mint(
                stored.token.clone(),
                stored.generation,
                Some(times),
                stored.obtained_at,
                stored.reason,
            )
            .ok()?;
        Some(Obtained {
            token: Arc::new(token),
            origin: Some(FetchedFrom::Store),
        })
    }

    /// The reauth interval is closed: this process made a 401-caused login less than
    /// `min_reauth_interval` ago, or the fleet's entry (`seen`) says one did.
    fn reauth_closed(&self, seen: Option<&Entry>) -> bool {
        let now = self.inner.clock.now();
        let local = self
            .lock_state()
            .reauth_closed_until
            .is_some_and(|until| now < until);
        local || seen.is_some_and(|seen| self.fleet_reauth_closed(seen))
    }

    /// True (and remembered) when the entry says the fleet made a 401-caused login
    /// less than `min_reauth_interval` ago.
    fn fleet_reauth_closed(&self, seen: &Entry) -> bool {
        let Some(stored) = seen
            .token()
            .filter(|stored| stored.reason == RefreshReason::Rejected)
        else {
            return false;
        };
        let reopens = stored.obtained_at + self.inner.settings.min_reauth_interval;
        let Ok(left) = reopens.duration_since(self.inner.clock.wall()) else {
            return false;
        };
        let until = self.inner.clock.now() + left;
        let mut state = self.lock_state();
        state.reauth_closed_until =
            Some(state.reauth_closed_until.map_or(until, |at| at.max(until)));
        true
    }

    /// Fetches from the source and builds the token (and, for a session token, the
    /// entry to share).
    async fn login(
        &self,
        reason: RefreshReason,
        fleet_generation: u64,
    ) -> Result<(Obtained, Option<StoredToken>), RefreshError> {
        let started = self.inner.clock.now();
        if reason == RefreshReason::Rejected {
            // A 401-caused login closes the interval whether it succeeds or fails; a
            // 401 answered by adopting the fleet's newer token does not.
            self.lock_state().reauth_closed_until =
                Some(started + self.inner.settings.min_reauth_interval);
        }
        let started_wall = self.inner.clock.wall();
        let span = trace::login_span(self.name(), reason.as_str());
        let fetched = self.inner.source.fetch().instrument(span.clone()).await;
        trace::record_login(&span, fetched.as_ref().map(|_| ()).map_err(AuthError::kind));
        drop(span);
        let secret = fetched?;
        let times = if self.is_static() {
            None
        } else {
            Some(self.session_times(secret.expose_secret(), started, started_wall)?)
        };
        let token = self
            .mint(
                secret.clone(),
                fleet_generation,
                times,
                started_wall,
                reason,
            )
            .map_err(|_| AuthError::InvalidToken)?;
        let stored = times.map(|times| StoredToken {
            generation: fleet_generation,
            token: secret,
            expires_at: times.expires_at,
            obtained_at: started_wall,
            reason,
        });
        let obtained = Obtained {
            token: Arc::new(token),
            origin: Some(FetchedFrom::Login),
        };
        Ok((obtained, stored))
    }

    fn session_times(
        &self,
        secret: &str,
        started: Instant,
        started_wall: SystemTime,
    ) -> Result<TokenTimes, AuthError> {
        let fetched_unix = started_wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let lifetime =
            schedule::token_lifetime(secret, fetched_unix, self.inner.settings.token_ttl)
                .ok_or(AuthError::AlreadyExpired)?;
        schedule::token_times(
            started_wall + lifetime,
            lifetime,
            started,
            started_wall,
            self.inner.settings.refresh_before,
            self.inner.random.unit(),
        )
        .ok_or(AuthError::AlreadyExpired)
    }

    fn mint(
        &self,
        secret: SecretString,
        fleet_generation: u64,
        times: Option<TokenTimes>,
        obtained_at: SystemTime,
        reason: RefreshReason,
    ) -> Result<Token, slot::NotAHeaderValue> {
        Token::mint(Minted {
            secret,
            formats: &self.inner.formats,
            generation: self.inner.slot.next_generation(),
            fleet_generation,
            times,
            obtained_at,
            reason,
        })
    }
}

/// Whether the fleet's entry holds a newer token than `own`: a higher fleet
/// generation, or the same one obtained later (two replicas that logged in alone
/// during an outage). Our own token is never newer than itself.
fn is_newer(stored: &StoredToken, own: &Token) -> bool {
    if slot::fingerprint(stored.token.expose_secret()) == own.fingerprint {
        return false;
    }
    (stored.generation, stored.obtained_at) > (own.fleet_generation, own.obtained_at)
}
