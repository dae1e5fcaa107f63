//! The token entry as the fleet shares it, and its sealed encoding.
//!
//! An entry's value is `v1:<generation>:<base64url(nonce ‖ AES-256-GCM ciphertext)>`:
//! the generation is in the clear so that the compare-and-set can run inside the
//! store (a Lua script in Redis); it is also bound into the ciphertext, with the
//! credential name, so neither can be changed without the entry becoming unreadable.
//!
//! Must not: put a token anywhere but inside the ciphertext.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};

use super::Sealer;
use crate::token::schedule::RefreshReason;

/// The generation in the clear prefix of an entry's value; 0 when it has none.
pub fn generation_of(value: &[u8]) -> u64 {
    let Some(rest) = value.strip_prefix(b"v1:") else {
        return 0;
    };
    let digits = rest.iter().take_while(|byte| byte.is_ascii_digit()).count();
    if rest.get(digits) != Some(&b':') {
        return 0;
    }
    std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

/// A token as the fleet shares it.
#[derive(Clone)]
pub struct StoredToken {
    /// The fleet's generation: one more than the entry it replaced.
    pub generation: u64,
    pub token: SecretString,
    pub expires_at: SystemTime,
    /// When the login that obtained it started.
    pub obtained_at: SystemTime,
    /// Why it was obtained (a 401-caused login closes the fleet's reauth interval).
    pub reason: RefreshReason,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("StoredToken")
            .field("generation", &self.generation)
            .field("token", &"***")
            .field("expires_at", &self.expires_at)
            .field("obtained_at", &self.obtained_at)
            .field("reason", &self.reason)
            .finish()
    }
}

/// The sealed JSON inside an entry.
#[derive(serde::Serialize, serde::Deserialize)]
struct EntryBody {
    token: String,
    expires_at_ms: u64,
    obtained_at_ms: u64,
    reason: String,
}

/// What a read found.
#[derive(Debug, Clone)]
pub enum Entry {
    Absent,
    Present(StoredToken),
    /// There, but it does not open (another key, tampering, garbage): never used,
    /// replaced by the next login's entry.
    Unreadable {
        generation: u64,
    },
}

impl Entry {
    /// The generation a compare-and-set must expect to replace this entry.
    pub fn generation(&self) -> u64 {
        match self {
            Self::Absent => 0,
            Self::Present(stored) => stored.generation,
            Self::Unreadable { generation } => *generation,
        }
    }

    pub fn token(&self) -> Option<&StoredToken> {
        match self {
            Self::Present(stored) => Some(stored),
            _ => None,
        }
    }
}

/// The associated data of an entry: the credential and the generation it is for.
fn associated(credential: &str, generation: u64) -> Vec<u8> {
    format!("ipproxy-token-v1:{credential}:{generation}").into_bytes()
}

/// `stored` as the value of `credential`'s entry, sealed with `sealer`.
pub(super) fn seal(sealer: &Sealer, credential: &str, stored: &StoredToken) -> Vec<u8> {
    let body = EntryBody {
        token: stored.token.expose_secret().to_owned(),
        expires_at_ms: unix_ms(stored.expires_at),
        obtained_at_ms: unix_ms(stored.obtained_at),
        reason: stored.reason.as_str().to_owned(),
    };
    let plaintext = serde_json::to_vec(&body).expect("an entry body serializes");
    let sealed = sealer.seal(&plaintext, &associated(credential, stored.generation));
    let mut value = format!("v1:{}:", stored.generation).into_bytes();
    value.extend_from_slice(URL_SAFE_NO_PAD.encode(sealed).as_bytes());
    value
}

/// The token in `value`, if it opens with one of `sealer`'s keys as `credential`'s
/// entry at `generation`.
pub(super) fn open(
    sealer: &Sealer,
    credential: &str,
    generation: u64,
    value: &[u8],
) -> Option<StoredToken> {
    if generation == 0 {
        return None;
    }
    let prefix = format!("v1:{generation}:");
    let encoded = value.strip_prefix(prefix.as_bytes())?;
    let sealed = URL_SAFE_NO_PAD.decode(encoded).ok()?;
    let plaintext = sealer
        .open(&sealed, &associated(credential, generation))
        .ok()?;
    let body: EntryBody = serde_json::from_slice(&plaintext).ok()?;
    Some(StoredToken {
        generation,
        token: SecretString::from(body.token),
        expires_at: from_unix_ms(body.expires_at_ms),
        obtained_at: from_unix_ms(body.obtained_at_ms),
        reason: RefreshReason::parse(&body.reason)?,
    })
}

pub(super) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}
