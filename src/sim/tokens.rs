//! The simulator's token store: issues JWT-shaped (or opaque) tokens and judges the
//! tokens presented to it. Pure over the instants it is given, so its rules are tested
//! without waiting; it knows nothing of HTTP.
//!
//! Validity is judged on a monotonic [`Instant`] (issue time plus the exact TTL, which
//! may be sub-second in tests), while the JWT's `crt` and `exp` are whole Unix seconds,
//! `exp − crt` being the TTL rounded up to at least one second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;
use rand::distr::Alphanumeric;

/// How long an expired token is remembered (and reported as expired rather than
/// unknown) before the store forgets it.
const FORGET_AFTER_EXPIRY: Duration = Duration::from_secs(60);

/// Most tokens remembered at once: a login storm against a 24-hour TTL must not grow
/// the map without end. Beyond it, revoked tokens go first, then the oldest.
const MAX_REMEMBERED_TOKENS: usize = 100_000;

/// Longest TTL honoured, so that `Instant + ttl` cannot overflow (a century).
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Length of an opaque token, in alphanumerics.
const OPAQUE_TOKEN_LEN: usize = 40;

/// The flavour of the tokens issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TokenShape {
    /// `header.payload.signature`, base64url, with `sub`, `crt`, `exp` and `jti`.
    Jwt,
    /// Random alphanumerics with no readable expiry.
    Opaque,
}

/// Why a presented token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rejection {
    Missing,
    Unknown,
    Revoked,
    Expired,
}

/// What the store remembers of one issued token.
#[derive(Debug)]
struct TokenEntry {
    /// The `jti`: 1 for the first token issued, then counting up.
    id: u64,
    subject: String,
    expires_at: Instant,
    revoked: bool,
}

/// Issued tokens by their text.
#[derive(Debug)]
pub(super) struct TokenStore {
    entries: HashMap<String, TokenEntry>,
    last_id: u64,
    /// [`MAX_REMEMBERED_TOKENS`], smaller in tests.
    max_remembered: usize,
}

impl Default for TokenStore {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            last_id: 0,
            max_remembered: MAX_REMEMBERED_TOKENS,
        }
    }
}

impl TokenStore {
    /// Issue a token for `subject`, valid for `ttl` from `now`. With `revoke_older`,
    /// every earlier token of that subject is revoked.
    pub(super) fn issue(
        &mut self,
        subject: &str,
        ttl: Duration,
        shape: TokenShape,
        revoke_older: bool,
        now: Instant,
        unix_now: u64,
    ) -> String {
        self.forget_old(now);
        if revoke_older {
            for entry in self.entries.values_mut() {
                if entry.subject == subject {
                    entry.revoked = true;
                }
            }
        }
        let ttl = ttl.min(MAX_TTL);
        self.last_id += 1;
        let id = self.last_id;
        let token = match shape {
            TokenShape::Jwt => jwt(subject, unix_now, ttl, id),
            TokenShape::Opaque => opaque(),
        };
        self.entries.insert(
            token.clone(),
            TokenEntry {
                id,
                subject: subject.to_owned(),
                expires_at: now + ttl,
                revoked: false,
            },
        );
        token
    }

    /// The id of `token` when it is valid at `now`, else why not.
    pub(super) fn check(&self, token: &str, now: Instant) -> Result<u64, Rejection> {
        let entry = self.entries.get(token).ok_or(Rejection::Unknown)?;
        if entry.revoked {
            Err(Rejection::Revoked)
        } else if now >= entry.expires_at {
            Err(Rejection::Expired)
        } else {
            Ok(entry.id)
        }
    }

    /// Every token remembered (issued and not yet forgotten), oldest first.
    pub(super) fn tokens(&self) -> Vec<String> {
        let mut tokens: Vec<(&u64, &String)> = self
            .entries
            .iter()
            .map(|(token, entry)| (&entry.id, token))
            .collect();
        tokens.sort();
        tokens.into_iter().map(|(_, token)| token.clone()).collect()
    }

    /// Revoke every token issued so far.
    pub(super) fn revoke_all(&mut self) {
        for entry in self.entries.values_mut() {
            entry.revoked = true;
        }
    }

    /// Forget tokens expired for over a minute; at the size limit, forget revoked
    /// tokens, then the oldest, to make room for one more.
    fn forget_old(&mut self, now: Instant) {
        self.entries.retain(|_, entry| {
            now.saturating_duration_since(entry.expires_at) <= FORGET_AFTER_EXPIRY
        });
        if self.entries.len() < self.max_remembered {
            return;
        }
        self.entries.retain(|_, entry| !entry.revoked);
        while self.entries.len() >= self.max_remembered {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.id)
                .map(|(token, _)| token.clone());
            match oldest {
                Some(token) => {
                    self.entries.remove(&token);
                }
                None => break,
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A JWT-shaped token: RS256 header, the payload below, 32 random bytes as signature
/// (nobody verifies it).
fn jwt(subject: &str, unix_now: u64, ttl: Duration, id: u64) -> String {
    let ttl_secs = (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1);
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    let payload = serde_json::json!({
        "sub": subject,
        "crt": unix_now,
        "exp": unix_now.saturating_add(ttl_secs),
        "jti": id,
    });
    let signature: [u8; 32] = rand::random();
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(signature),
    )
}

fn opaque() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(OPAQUE_TOKEN_LEN)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn payload(token: &str) -> serde_json::Value {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "a JWT has three parts");
        let bytes = URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url payload");
        serde_json::from_slice(&bytes).expect("JSON payload")
    }

    #[test]
    fn jwt_payload_carries_subject_issue_time_expiry_and_id() {
        let mut store = TokenStore::default();
        let token = store.issue("demo", DAY, TokenShape::Jwt, false, Instant::now(), 1_000);
        let claims = payload(&token);
        assert_eq!(claims["sub"], "demo");
        assert_eq!(claims["crt"], 1_000);
        assert_eq!(claims["exp"], 1_000 + 86_400);
        assert_eq!(claims["jti"], 1);
        let header = URL_SAFE_NO_PAD
            .decode(token.split('.').next().expect("header part"))
            .expect("base64url header");
        let header: serde_json::Value = serde_json::from_slice(&header).expect("JSON header");
        assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT"}));
    }

    #[test]
    fn jwt_lifetime_is_rounded_up_to_whole_seconds_and_at_least_one() {
        let now = Instant::now();
        let mut store = TokenStore::default();
        for (ttl, expected) in [
            (Duration::from_millis(300), 1),
            (Duration::ZERO, 1),
            (Duration::from_millis(1_500), 2),
            (Duration::from_secs(3), 3),
        ] {
            let claims = payload(&store.issue("demo", ttl, TokenShape::Jwt, false, now, 50));
            assert_eq!(claims["exp"], 50 + expected, "ttl {ttl:?}");
        }
    }

    #[test]
    fn token_is_valid_until_its_precise_expiry() {
        let now = Instant::now();
        let ttl = Duration::from_millis(300);
        let mut store = TokenStore::default();
        let token = store.issue("demo", ttl, TokenShape::Jwt, false, now, 0);
        assert_eq!(store.check(&token, now), Ok(1));
        assert_eq!(store.check(&token, now + Duration::from_millis(299)), Ok(1));
        assert_eq!(store.check(&token, now + ttl), Err(Rejection::Expired));
        assert_eq!(store.check("nope", now), Err(Rejection::Unknown));
    }

    #[test]
    fn revoke_all_revokes_every_issued_token() {
        let now = Instant::now();
        let mut store = TokenStore::default();
        let first = store.issue("demo", DAY, TokenShape::Jwt, false, now, 0);
        let second = store.issue("demo", DAY, TokenShape::Opaque, false, now, 0);
        store.revoke_all();
        assert_eq!(store.check(&first, now), Err(Rejection::Revoked));
        assert_eq!(store.check(&second, now), Err(Rejection::Revoked));
        let third = store.issue("demo", DAY, TokenShape::Jwt, false, now, 0);
        assert_eq!(store.check(&third, now), Ok(3));
    }

    #[test]
    fn reauth_revokes_only_the_same_subjects_older_tokens() {
        let now = Instant::now();
        let mut store = TokenStore::default();
        let demo = store.issue("demo", DAY, TokenShape::Jwt, true, now, 0);
        let other = store.issue("other", DAY, TokenShape::Jwt, true, now, 0);
        let newer = store.issue("demo", DAY, TokenShape::Jwt, true, now, 0);
        assert_eq!(store.check(&demo, now), Err(Rejection::Revoked));
        assert_eq!(store.check(&other, now), Ok(2));
        assert_eq!(store.check(&newer, now), Ok(3));
    }

    #[test]
    fn tokens_expired_for_over_a_minute_are_forgotten_on_issue() {
        let now = Instant::now();
        let mut store = TokenStore::default();
        let old = store.issue(
            "demo",
            Duration::from_secs(1),
            TokenShape::Jwt,
            false,
            now,
            0,
        );
        let later = now + Duration::from_secs(30);
        store.issue("demo", DAY, TokenShape::Jwt, false, later, 0);
        assert_eq!(store.check(&old, later), Err(Rejection::Expired));
        let much_later = now + Duration::from_secs(62);
        store.issue("demo", DAY, TokenShape::Jwt, false, much_later, 0);
        assert_eq!(store.check(&old, much_later), Err(Rejection::Unknown));
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn at_the_size_limit_revoked_then_oldest_tokens_are_forgotten() {
        let now = Instant::now();
        let mut store = TokenStore {
            max_remembered: 3,
            ..TokenStore::default()
        };
        let first = store.issue("demo", DAY, TokenShape::Jwt, false, now, 0);
        let second = store.issue("demo", DAY, TokenShape::Jwt, false, now, 0);
        store.revoke_all();
        let third = store.issue("demo", DAY, TokenShape::Jwt, false, now, 0);
        // Full: the two revoked tokens make room.
        let fourth = store.issue("demo", DAY, TokenShape::Jwt, false, now, 0);
        assert_eq!(store.check(&first, now), Err(Rejection::Unknown));
        assert_eq!(store.check(&second, now), Err(Rejection::Unknown));
        let fifth = store.issue("demo", DAY, TokenShape::Jwt, false, now, 0);
        // Full again with nothing revoked: the oldest goes.
        store.issue("demo", DAY, TokenShape::Jwt, false, now, 0);
        assert_eq!(store.check(&third, now), Err(Rejection::Unknown));
        assert_eq!(store.check(&fourth, now), Ok(4));
        assert_eq!(store.check(&fifth, now), Ok(5));
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn opaque_tokens_are_forty_alphanumerics() {
        let mut store = TokenStore::default();
        let token = store.issue("demo", DAY, TokenShape::Opaque, false, Instant::now(), 0);
        assert_eq!(token.len(), OPAQUE_TOKEN_LEN);
        assert!(token.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn huge_ttl_does_not_overflow() {
        let mut store = TokenStore::default();
        let now = Instant::now();
        let token = store.issue("demo", Duration::MAX, TokenShape::Jwt, false, now, 0);
        assert_eq!(store.check(&token, now), Ok(1));
    }
}
