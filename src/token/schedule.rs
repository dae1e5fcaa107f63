//! Pure timing: how long a token lives, when to refresh it, when to fetch next, how
//! long to back off.
//!
//! Everything here is a function of (token, now, settings, a random draw) so that it
//! can be tested without clocks; the refresh loop around it stays thin.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Largest JWT payload we bother decoding; IntelePeer's are a few hundred bytes.
const MAX_JWT_PAYLOAD: usize = 16 * 1024;

/// Jitter added before the refresh margin: up to this fraction of the margin, so that
/// replicas started together do not all log in at the same instant.
const REFRESH_JITTER_FRACTION: f64 = 0.10;

/// First backoff step after an auth failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest backoff between login attempts (1 s up to 5 min).
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Shortest wait between attempts, so full jitter can never make a tight loop.
const BACKOFF_FLOOR: Duration = Duration::from_millis(100);

/// A token is not sent upstream in its last moments: it could expire in transit.
/// The margin is this much, or a tenth of the lifetime for very short-lived tokens.
const EXPIRY_SAFETY: Duration = Duration::from_secs(1);

/// Why a token fetch happened (the `reason` label of logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshReason {
    /// The first token after start-up.
    Startup,
    /// Refresh ahead of expiry.
    Ahead,
    /// The token expired (a refresh ahead failed for too long).
    Expired,
    /// The upstream answered 401 on the current token.
    Rejected,
    /// `POST /refresh`.
    Manual,
    /// A static credential's `token_file` changed.
    FileChanged,
    /// `SIGHUP` found no valid token or a changed password.
    Reload,
    /// The shared store came back: the fleet converges on one token.
    Resync,
}

impl RefreshReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Ahead => "ahead",
            Self::Expired => "expired",
            Self::Rejected => "401",
            Self::Manual => "manual",
            Self::FileChanged => "file_changed",
            Self::Reload => "sighup",
            Self::Resync => "resync",
        }
    }

    /// The inverse of [`as_str`](Self::as_str), for entries read from the store.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Startup,
            Self::Ahead,
            Self::Expired,
            Self::Rejected,
            Self::Manual,
            Self::FileChanged,
            Self::Reload,
            Self::Resync,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == text)
    }
}

/// When a session token stops being sent, when it is refreshed, and when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    /// Sent upstream until then (a little before expiry).
    pub usable_until: Instant,
    /// Refresh ahead of expiry from then.
    pub refresh_at: Instant,
    /// Expiry on the wall clock, as IntelePeer and other replicas see it.
    pub expires_at: SystemTime,
}

/// The times of a token of `lifetime` expiring at `expires_at`, seen at `at` (`at_wall`
/// on the wall clock): for a fresh login, the moment its request was sent; for a token
/// adopted from the store, now. `None` when it is no longer usable.
pub fn token_times(
    expires_at: SystemTime,
    lifetime: Duration,
    at: Instant,
    at_wall: SystemTime,
    refresh_before: Duration,
    jitter_draw: f64,
) -> Option<TokenTimes> {
    let remaining = expires_at.duration_since(at_wall).ok()?;
    let elapsed = lifetime.saturating_sub(remaining);
    let usable = usable_for(lifetime).checked_sub(elapsed)?;
    if usable.is_zero() {
        return None;
    }
    let refresh_in = refresh_delay(lifetime, refresh_before, jitter_draw).saturating_sub(elapsed);
    Some(TokenTimes {
        usable_until: at + usable,
        refresh_at: at + refresh_in,
        expires_at,
    })
}

/// The next fetch a credential's refresh loop makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub at: Instant,
    pub reason: RefreshReason,
}

/// When and why to fetch next: at the backoff deadline after a failure, else at the
/// token's refresh time, else (no token yet) now.
pub fn next_fetch(token: Option<&TokenTimes>, retry_at: Option<Instant>, now: Instant) -> Fetch {
    let reason = match token {
        None => RefreshReason::Startup,
        Some(times) if now >= times.usable_until => RefreshReason::Expired,
        Some(_) => RefreshReason::Ahead,
    };
    let at = match (retry_at, token) {
        (Some(retry_at), _) => retry_at,
        (None, Some(times)) => times.refresh_at,
        (None, None) => now,
    };
    Fetch { at, reason }
}

/// What the JWT payload says, when the token is a JWT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JwtTimes {
    /// `exp`, seconds since the Unix epoch.
    pub expires: f64,
    /// `crt`, `ctd` or `iat`, seconds since the Unix epoch.
    pub issued: Option<f64>,
}

/// Reads `exp` and an issue time from a JWT's payload without checking the signature
/// (there is no key, and it is not the proxy's job). `None` for anything else.
pub fn decode_jwt_times(token: &str) -> Option<JwtTimes> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > MAX_JWT_PAYLOAD {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let number = |name: &str| claims.get(name).and_then(as_seconds);
    let expires = number("exp")?;
    let issued = number("crt")
        .or_else(|| number("ctd"))
        .or_else(|| number("iat"));
    Some(JwtTimes { expires, issued })
}

/// A claim as seconds: a JSON number, or a string holding one.
fn as_seconds(value: &serde_json::Value) -> Option<f64> {
    let seconds = match value {
        serde_json::Value::Number(number) => number.as_f64()?,
        serde_json::Value::String(text) => text.trim().parse().ok()?,
        _ => return None,
    };
    seconds.is_finite().then_some(seconds)
}

/// How long a token fetched at `fetched_unix` (wall clock, seconds) lives from that
/// moment.
///
/// - JWT with `exp` and an issue time: `exp - issued`, counted from the local fetch
///   time, so skewed clocks on either side do not matter.
/// - JWT with `exp` only: `exp - fetched_unix` (`None` when already expired).
/// - Anything else: `token_ttl`.
pub fn token_lifetime(token: &str, fetched_unix: f64, token_ttl: Duration) -> Option<Duration> {
    let Some(times) = decode_jwt_times(token) else {
        return Some(token_ttl);
    };
    let seconds = match times.issued {
        Some(issued) if times.expires > issued => times.expires - issued,
        _ => times.expires - fetched_unix,
    };
    (seconds > 0.0).then(|| Duration::from_secs_f64(seconds.min(u32::MAX as f64)))
}

/// How long before expiry the refresh happens (before jitter):
/// `min(refresh_before, lifetime / 2)`.
pub fn refresh_margin(lifetime: Duration, refresh_before: Duration) -> Duration {
    refresh_before.min(lifetime / 2)
}

/// Time from fetch to the ahead-of-expiry refresh. `jitter_draw` is uniform in [0, 1).
pub fn refresh_delay(lifetime: Duration, refresh_before: Duration, jitter_draw: f64) -> Duration {
    let margin = refresh_margin(lifetime, refresh_before);
    let jitter = margin.mul_f64(REFRESH_JITTER_FRACTION * jitter_draw.clamp(0.0, 1.0));
    lifetime.saturating_sub(margin + jitter)
}

/// Time from fetch during which the token is sent upstream.
pub fn usable_for(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(EXPIRY_SAFETY.min(lifetime / 10))
}

/// Wait before login attempt number `failures + 1`: exponential with full jitter
/// (`jitter_draw` uniform in [0, 1)), never shorter than what the auth endpoint asked
/// for in `Retry-After` (itself capped at [`BACKOFF_CAP`]).
pub fn backoff(failures: u32, retry_after: Option<Duration>, jitter_draw: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let ceiling = BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_CAP);
    let jittered = ceiling
        .mul_f64(jitter_draw.clamp(0.0, 1.0))
        .max(BACKOFF_FLOOR);
    match retry_after {
        Some(asked) => jittered.max(asked.min(BACKOFF_CAP)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use proptest::prelude::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const HOUR: Duration = Duration::from_secs(3_600);

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn jwt_lifetime_is_exp_minus_issue_time_whatever_the_local_clock() {
        let token = jwt(r#"{"exp":1000086400,"crt":1000000000}"#);
        // The local clock is a year off: the lifetime is still 24 h.
        let lifetime = token_lifetime(&token, 1_031_536_000.0, Duration::from_secs(60));
        assert_eq!(lifetime, Some(DAY));
        let token = jwt(r#"{"exp":"1000086400","ctd":"1000000000"}"#);
        assert_eq!(token_lifetime(&token, 0.0, HOUR), Some(DAY));
    }

    #[test]
    fn jwt_with_exp_only_counts_from_local_time() {
        let token = jwt(r#"{"exp":1000003600}"#);
        assert_eq!(
            token_lifetime(&token, 1_000_000_000.0, DAY),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(token_lifetime(&token, 1_000_003_600.0, DAY), None);
    }

    #[test]
    fn an_issue_time_not_before_exp_is_ignored() {
        // exp == crt, and exp before crt: the claims are nonsense, exp still counts.
        for crt in [1_000_003_600_u64, 1_000_009_000] {
            let token = jwt(&format!(r#"{{"exp":1000003600,"crt":{crt}}}"#));
            assert_eq!(
                token_lifetime(&token, 1_000_000_000.0, DAY),
                Some(HOUR),
                "crt {crt}"
            );
        }
    }

    /// A JWT whose payload is `length` base64 characters (a multiple of 4).
    fn jwt_of_payload_length(length: usize) -> String {
        let json_length = length / 4 * 3;
        let head = r#"{"exp":1000003600,"pad":""#;
        let padding = "a".repeat(json_length - head.len() - 2);
        let token = jwt(&format!("{head}{padding}\"}}"));
        assert_eq!(token.split('.').nth(1).map(str::len), Some(length));
        token
    }

    #[test]
    fn payloads_up_to_16_kib_are_decoded_and_longer_ones_are_not() {
        for length in [2_048, MAX_JWT_PAYLOAD] {
            assert!(
                decode_jwt_times(&jwt_of_payload_length(length)).is_some(),
                "{length}"
            );
        }
        let longer = jwt_of_payload_length(MAX_JWT_PAYLOAD + 4);
        assert_eq!(decode_jwt_times(&longer), None);
        // Four parts is not a JWT either.
        let four = format!("{}.extra", jwt(r#"{"exp":1000003600}"#));
        assert_eq!(decode_jwt_times(&four), None);
    }

    #[test]
    fn opaque_token_uses_token_ttl() {
        assert_eq!(token_lifetime("not-a-jwt", 0.0, HOUR), Some(HOUR));
        assert_eq!(token_lifetime("a.b.c", 0.0, HOUR), Some(HOUR));
        assert_eq!(
            token_lifetime(&jwt(r#"{"sub":"x"}"#), 0.0, HOUR),
            Some(HOUR)
        );
    }

    #[test]
    fn refresh_happens_an_hour_early_for_a_day_token() {
        let delay = refresh_delay(DAY, HOUR, 0.0);
        assert_eq!(delay, DAY - HOUR);
        let latest = refresh_delay(DAY, HOUR, 0.999_999);
        assert!(latest < DAY - HOUR && latest >= DAY - HOUR - HOUR / 10);
    }

    #[test]
    fn short_token_refreshes_at_half_life() {
        let lifetime = Duration::from_secs(10);
        assert_eq!(refresh_margin(lifetime, HOUR), Duration::from_secs(5));
        assert_eq!(refresh_delay(lifetime, HOUR, 0.0), Duration::from_secs(5));
    }

    #[test]
    fn backoff_grows_to_the_cap_and_honours_retry_after() {
        assert!(backoff(1, None, 0.999) <= BACKOFF_BASE);
        assert!(backoff(3, None, 0.999) <= BACKOFF_BASE * 4);
        assert_eq!(backoff(40, None, 1.0), BACKOFF_CAP);
        assert_eq!(backoff(1, None, 0.0), BACKOFF_FLOOR);
        assert_eq!(
            backoff(1, Some(Duration::from_secs(30)), 0.5),
            Duration::from_secs(30)
        );
        assert_eq!(backoff(1, Some(DAY), 0.5), BACKOFF_CAP);
    }

    #[test]
    fn usable_window_ends_before_expiry() {
        assert_eq!(usable_for(DAY), DAY - Duration::from_secs(1));
        assert_eq!(
            usable_for(Duration::from_secs(2)),
            Duration::from_millis(1800)
        );
    }

    #[test]
    fn a_fresh_login_is_usable_until_just_before_expiry_and_refreshes_at_the_margin() {
        let at = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let times = token_times(wall + DAY, DAY, at, wall, HOUR, 0.0).expect("usable");
        assert_eq!(times.usable_until, at + DAY - Duration::from_secs(1));
        assert_eq!(times.refresh_at, at + DAY - HOUR);
        assert_eq!(times.expires_at, wall + DAY);
    }

    #[test]
    fn an_adopted_token_keeps_its_expiry_and_is_unusable_once_past_it() {
        let at = Instant::now();
        let obtained = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // Seen ten hours after another replica obtained it.
        let seen = obtained + 10 * HOUR;
        let times = token_times(obtained + DAY, DAY, at, seen, HOUR, 0.0).expect("usable");
        assert_eq!(times.usable_until, at + 14 * HOUR - Duration::from_secs(1));
        assert_eq!(times.refresh_at, at + 13 * HOUR);
        // A second before expiry the safety margin has run out; after it, nothing.
        let late = obtained + DAY - Duration::from_secs(1);
        assert_eq!(token_times(obtained + DAY, DAY, at, late, HOUR, 0.0), None);
        assert_eq!(
            token_times(obtained + DAY, DAY, at, obtained + 2 * DAY, HOUR, 0.0),
            None
        );
    }

    #[test]
    fn next_fetch_is_now_without_a_token_then_at_refresh_time_then_at_the_backoff() {
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            next_fetch(None, None, now),
            Fetch {
                at: now,
                reason: RefreshReason::Startup
            }
        );
        let times = token_times(wall + DAY, DAY, now, wall, HOUR, 0.0).expect("usable");
        assert_eq!(
            next_fetch(Some(&times), None, now),
            Fetch {
                at: now + DAY - HOUR,
                reason: RefreshReason::Ahead
            }
        );
        let retry = now + Duration::from_secs(7);
        assert_eq!(next_fetch(Some(&times), Some(retry), now).at, retry);
        let after_expiry = now + DAY;
        assert_eq!(
            next_fetch(Some(&times), Some(retry), after_expiry).reason,
            RefreshReason::Expired
        );
    }

    #[test]
    fn reasons_read_back_from_their_labels() {
        for reason in [
            RefreshReason::Startup,
            RefreshReason::Ahead,
            RefreshReason::Expired,
            RefreshReason::Rejected,
            RefreshReason::Manual,
            RefreshReason::FileChanged,
            RefreshReason::Reload,
            RefreshReason::Resync,
        ] {
            assert_eq!(RefreshReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(RefreshReason::parse("other"), None);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_input_never_panics(input in ".{0,400}") {
            let _ = decode_jwt_times(&input);
            let _ = token_lifetime(&input, 1e9, HOUR);
        }

        #[test]
        fn decoding_arbitrary_payload_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let token = format!("h.{}.s", URL_SAFE_NO_PAD.encode(&payload));
            let _ = token_lifetime(&token, 1e9, HOUR);
        }

        #[test]
        fn refresh_always_precedes_expiry(secs in 1u64..200_000, before in 0u64..10_000, draw in 0.0f64..1.0) {
            let lifetime = Duration::from_secs(secs);
            let delay = refresh_delay(lifetime, Duration::from_secs(before), draw);
            prop_assert!(delay <= lifetime);
            prop_assert!(delay >= lifetime / 2 - lifetime / 20);
        }
    }
}
