//! The token slot: one credential's current token in an `ArcSwap`, read with one
//! lock-free load per request and replaced whole by the single flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::schedule::{RefreshReason, TokenTimes};
use crate::config::HeaderFormat;

/// Counts token replacements in this process; a 401 on generation G only causes a
/// login when no token newer than G has been stored meanwhile.
pub type TokenGeneration = u64;

/// Which of a credential's prebuilt header values a route sends (one per distinct
/// header format among the credential's routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatId(pub(super) usize);

/// Where a stored token came from: the `source` label of the refresh metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FetchedFrom {
    /// This process fetched it (a login, or a static token read).
    Login,
    /// Adopted from the shared store: another replica logged in.
    Store,
}

impl FetchedFrom {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Store => "store",
        }
    }
}

/// A token and everything derived from it once, when it is stored.
pub struct Token {
    /// This process's generation (monotonic), for the 401 comparison.
    pub generation: TokenGeneration,
    /// The fleet's generation of this token (the shared store's counter): a store
    /// entry is adopted when its generation is newer than this.
    pub(super) fleet_generation: u64,
    /// One header value per format of this credential's routes, built once here,
    /// marked sensitive, cloned per request.
    headers: Box<[HeaderValue]>,
    /// `None` for static tokens: they never expire as far as the proxy knows.
    pub(super) times: Option<TokenTimes>,
    /// When and why the fleet obtained it (a login's start, on the wall clock).
    pub(super) obtained_at: SystemTime,
    pub(super) reason: RefreshReason,
    /// The token itself, kept to publish it to the store when it comes back.
    pub(super) secret: SecretString,
    /// A short digest of the token, to tell two tokens apart without comparing them.
    pub(super) fingerprint: [u8; 8],
}

/// What a token is built from.
pub(super) struct Minted<'a> {
    pub secret: SecretString,
    pub formats: &'a [HeaderFormat],
    pub generation: TokenGeneration,
    pub fleet_generation: u64,
    pub times: Option<TokenTimes>,
    pub obtained_at: SystemTime,
    pub reason: RefreshReason,
}

/// The token cannot go in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token is not a valid HTTP header value")]
pub(super) struct NotAHeaderValue;

impl Token {
    /// Renders one header value per format, each marked sensitive.
    pub(super) fn mint(parts: Minted<'_>) -> Result<Self, NotAHeaderValue> {
        let headers = parts
            .formats
            .iter()
            .map(|format| {
                let mut value = HeaderValue::try_from(format.render(parts.secret.expose_secret()))
                    .map_err(|_| NotAHeaderValue)?;
                value.set_sensitive(true);
                Ok(value)
            })
            .collect::<Result<Box<[HeaderValue]>, NotAHeaderValue>>()?;
        Ok(Self {
            generation: parts.generation,
            fleet_generation: parts.fleet_generation,
            headers,
            times: parts.times,
            obtained_at: parts.obtained_at,
            reason: parts.reason,
            fingerprint: fingerprint(parts.secret.expose_secret()),
            secret: parts.secret,
        })
    }

    /// Whether it may still be sent upstream at `now`.
    pub fn is_usable(&self, now: Instant) -> bool {
        self.times.is_none_or(|times| now < times.usable_until)
    }

    /// Expiry on the wall clock; `None` for a static token.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.times.map(|times| times.expires_at)
    }

    /// The prebuilt header value for `format`.
    pub fn header(&self, format: FormatId) -> &HeaderValue {
        &self.headers[format.0]
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Token")
            .field("generation", &self.generation)
            .field("fleet_generation", &self.fleet_generation)
            .field("times", &self.times)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// The first 8 bytes of the token's SHA-256: enough to tell tokens apart, useless for
/// recovering one.
pub(super) fn fingerprint(token: &str) -> [u8; 8] {
    let digest = Sha256::digest(token.as_bytes());
    let mut short = [0u8; 8];
    short.copy_from_slice(&digest[..8]);
    short
}

/// The current token of one credential.
#[derive(Debug)]
pub(super) struct Slot {
    current: ArcSwapOption<Token>,
    next_generation: AtomicU64,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            next_generation: AtomicU64::new(1),
        }
    }
}

impl Slot {
    /// The current token, if any: one lock-free load.
    pub(super) fn load(&self) -> Option<Arc<Token>> {
        self.current.load_full()
    }

    /// Runs `read` on the current token without taking a reference count.
    pub(super) fn with<R>(&self, read: impl FnOnce(Option<&Token>) -> R) -> R {
        let guard = self.current.load();
        read(guard.as_deref())
    }

    /// The generation for the next token stored.
    pub(super) fn next_generation(&self) -> TokenGeneration {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Replaces the current token.
    pub(super) fn store(&self, token: Arc<Token>) {
        self.current.store(Some(token));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn token(secret: &str, times: Option<TokenTimes>) -> Token {
        Token::mint(Minted {
            secret: SecretString::from(secret.to_owned()),
            formats: &[HeaderFormat::default()],
            generation: 4,
            fleet_generation: 9,
            times,
            obtained_at: SystemTime::UNIX_EPOCH,
            reason: RefreshReason::Startup,
        })
        .expect("a header value")
    }

    #[test]
    fn a_session_token_is_usable_until_its_instant_and_a_static_one_always() {
        let now = Instant::now();
        let expires_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let times = TokenTimes {
            usable_until: now + Duration::from_secs(60),
            refresh_at: now,
            expires_at,
        };
        let session = token("tok-session", Some(times));
        assert!(session.is_usable(times.usable_until - Duration::from_millis(1)));
        assert!(!session.is_usable(times.usable_until));
        assert_eq!(session.expires_at(), Some(expires_at));

        let fixed = token("tok-static", None);
        assert!(fixed.is_usable(now + Duration::from_secs(86_400 * 365)));
        assert_eq!(fixed.expires_at(), None);
    }

    #[test]
    fn the_fingerprint_is_the_first_bytes_of_the_sha256() {
        // SHA-256("abc") = ba7816bf 8f01cfea …
        assert_eq!(
            fingerprint("abc"),
            [0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea]
        );
        assert_ne!(fingerprint("abc"), fingerprint("abd"));
    }

    #[test]
    fn debug_shows_the_generations_and_never_the_token() {
        let shown = format!("{:?}", token("tok-Secret-123", None));
        assert!(shown.contains("generation: 4") && shown.contains("fleet_generation: 9"));
        assert!(!shown.contains("tok-Secret-123"), "{shown}");
    }

    #[test]
    fn the_slot_gives_back_what_was_stored_and_counts_generations_up() {
        let slot = Slot::default();
        assert!(slot.load().is_none());
        assert_eq!(slot.next_generation(), 1);
        assert_eq!(slot.next_generation(), 2);
        slot.store(Arc::new(token("tok-a", None)));
        assert_eq!(
            slot.load().map(|token| token.fingerprint),
            Some(fingerprint("tok-a"))
        );
    }
}
