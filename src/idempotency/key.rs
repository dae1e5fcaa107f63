//! What identifies an idempotent request: its `Idempotency-Key` (an RFC 8941
//! sf-string or a bare value), the scope the key lives in (route credential, caller,
//! key), and the request's fingerprint (method, path and query, body).
//!
//! Must not: log or echo a key; errors name the header, never its value.

use http::{HeaderMap, HeaderName, Method, Uri};
use sha2::{Digest, Sha256};

use crate::access::Caller;
use crate::error::ProxyError;

/// The request header.
pub(super) const HEADER: HeaderName = HeaderName::from_static("idempotency-key");

/// The longest key, as docs/DESIGN.md says (the draft leaves it to the server).
const MAX_KEY: usize = 255;

/// Why a key is refused, for the `400`.
const MALFORMED: &str = "the Idempotency-Key header must be an RFC 8941 string (\"...\") or a \
                         bare value, of 1 to 255 visible ASCII characters";
const REPEATED: &str = "the Idempotency-Key header must appear at most once";

/// Only these methods take a key: the others are idempotent already (or, like
/// DELETE, not what the draft is about).
pub(crate) fn applies(method: &Method) -> bool {
    *method == Method::POST || *method == Method::PATCH
}

/// A client's key, decoded. `Debug` prints `***`: keys can carry meaning (an order
/// number) and never appear in a log line.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyKey(Vec<u8>);

impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("IdempotencyKey(***)")
    }
}

/// The key the request carries, `None` without the header; a malformed or repeated
/// header → `400 bad_request` naming it.
pub(crate) fn key_of(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ProxyError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProxyError::BadRequest(REPEATED));
    }
    parse_key(value.as_bytes())
        .map(Some)
        .ok_or(ProxyError::BadRequest(MALFORMED))
}

/// `"..."` (an RFC 8941 §3.3.3 string: printable ASCII, `\"` and `\\` the only
/// escapes) or a bare run of visible ASCII; 1 to [`MAX_KEY`] characters once decoded.
fn parse_key(raw: &[u8]) -> Option<IdempotencyKey> {
    let raw = raw.trim_ascii();
    let key = match raw.strip_prefix(b"\"") {
        Some(quoted) => sf_string(quoted)?,
        None => {
            if !raw.iter().all(|byte| (0x21..=0x7e).contains(byte)) {
                return None;
            }
            raw.to_vec()
        }
    };
    (1..=MAX_KEY)
        .contains(&key.len())
        .then_some(IdempotencyKey(key))
}

/// The content of an sf-string after its opening quote, which must end at its
/// closing one.
fn sf_string(quoted: &[u8]) -> Option<Vec<u8>> {
    let mut key = Vec::with_capacity(quoted.len());
    let mut bytes = quoted.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => key.push(escaped),
                _ => return None,
            },
            b'"' => return bytes.next().is_none().then_some(key),
            0x20..=0x7e => key.push(byte),
            _ => return None,
        }
    }
    // No closing quote.
    None
}

/// Where a key lives: SHA-256 over the route's credential, the caller and the key,
/// so that another caller's same key is another key, and the store holds neither the
/// key nor the caller's name.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Scope([u8; 32]);

impl Scope {
    pub(super) fn new(credential: &str, caller: &Caller, key: &IdempotencyKey) -> Self {
        let (kind, identity) = caller.identity();
        let mut hasher = Sha256::new();
        hasher.update(b"ipproxy-idempotency-scope-v1");
        for part in [credential.as_bytes(), kind, identity, &key.0] {
            length_prefixed(&mut hasher, part);
        }
        Self(hasher.finalize().into())
    }

    /// Lower-case hex, for the store's key names and associated data.
    pub(super) fn hex(&self) -> String {
        hex::encode(self.0)
    }

    #[cfg(test)]
    pub(super) fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Scope(***)")
    }
}

/// What a repeat must match: SHA-256 over method, path and query, and body.
pub(super) type Fingerprint = [u8; 32];

pub(super) fn fingerprint(method: &Method, target: &Uri, body: &[u8]) -> Fingerprint {
    let path_and_query = target
        .path_and_query()
        .map_or_else(|| target.path(), |target| target.as_str());
    let mut hasher = Sha256::new();
    hasher.update(b"ipproxy-idempotency-fingerprint-v1");
    for part in [method.as_str().as_bytes(), path_and_query.as_bytes(), body] {
        length_prefixed(&mut hasher, part);
    }
    hasher.finalize().into()
}

/// Each part with its length first, so that no two different lists hash alike.
fn length_prefixed(hasher: &mut Sha256, part: &[u8]) {
    hasher.update((part.len() as u64).to_be_bytes());
    hasher.update(part);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(raw: &str) -> Option<Vec<u8>> {
        parse_key(raw.as_bytes()).map(|key| key.0)
    }

    #[test]
    fn a_key_is_an_sf_string_or_a_bare_value() {
        assert_eq!(key("abc-123").as_deref(), Some(&b"abc-123"[..]));
        assert_eq!(key("\"abc-123\"").as_deref(), Some(&b"abc-123"[..]));
        assert_eq!(
            key("  8e03978e-40d5  ").as_deref(),
            Some(&b"8e03978e-40d5"[..])
        );
        assert_eq!(
            key(r#""a \"b\" \\c""#).as_deref(),
            Some(&br#"a "b" \c"#[..])
        );
        assert_eq!(key("\"with space\"").as_deref(), Some(&b"with space"[..]));
        assert_eq!(key(&"k".repeat(255)).map(|key| key.len()), Some(255));
        assert_eq!(
            key(&format!("\"{}\"", "k".repeat(255))).map(|key| key.len()),
            Some(255)
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "\"\"",
            "\"open",
            "\"a\"b",
            "\"a\\nb\"",
            "\"tab\there\"",
            "bare space",
            "é",
            "\"é\"",
        ] {
            assert_eq!(key(bad), None, "{bad:?}");
        }
        assert_eq!(key(&"k".repeat(256)), None);
        assert_eq!(key(&format!("\"{}\"", "k".repeat(256))), None);
    }

    #[test]
    fn the_header_once_or_not_at_all() {
        let mut headers = HeaderMap::new();
        assert!(matches!(key_of(&headers), Ok(None)));
        headers.append(HEADER, http::HeaderValue::from_static("k1"));
        assert!(matches!(key_of(&headers), Ok(Some(_))));
        headers.append(HEADER, http::HeaderValue::from_static("k2"));
        let Err(ProxyError::BadRequest(message)) = key_of(&headers) else {
            panic!("a repeated header is refused");
        };
        assert!(message.contains("Idempotency-Key"));
        let mut bad = HeaderMap::new();
        bad.insert(HEADER, http::HeaderValue::from_static("\"secret-ish"));
        let Err(ProxyError::BadRequest(message)) = key_of(&bad) else {
            panic!("a malformed key is refused");
        };
        assert!(message.contains("Idempotency-Key") && !message.contains("secret-ish"));
    }

    #[test]
    fn the_fingerprint_covers_method_path_query_and_body() {
        let uri = |text: &str| text.parse::<Uri>().expect("uri");
        let base = fingerprint(&Method::POST, &uri("/sms/send?a=1"), b"{}");
        assert_eq!(
            base,
            fingerprint(&Method::POST, &uri("/sms/send?a=1"), b"{}")
        );
        for other in [
            fingerprint(&Method::PATCH, &uri("/sms/send?a=1"), b"{}"),
            fingerprint(&Method::POST, &uri("/sms/send?a=2"), b"{}"),
            fingerprint(&Method::POST, &uri("/sms/send"), b"{}"),
            fingerprint(&Method::POST, &uri("/sms/other?a=1"), b"{}"),
            fingerprint(&Method::POST, &uri("/sms/send?a=1"), b"{ }"),
            // The boundary between parts cannot move.
            fingerprint(&Method::POST, &uri("/sms/send?a=1{"), b"}"),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn a_scope_is_per_credential_caller_and_key() {
        let key = |raw: &str| parse_key(raw.as_bytes()).expect("key");
        let anyone = Caller::default();
        let billing = Caller::named("billing");
        let base = Scope::new("default", &anyone, &key("k1"));
        assert_eq!(base, Scope::new("default", &anyone, &key("\"k1\"")));
        assert_ne!(base, Scope::new("default", &billing, &key("k1")));
        assert_ne!(base, Scope::new("cpaas", &anyone, &key("k1")));
        assert_ne!(base, Scope::new("default", &anyone, &key("k2")));
        assert!(!format!("{base:?}{:?}", key("k1")).contains("k1"));
    }

    proptest! {
        #[test]
        fn key_parsing_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_key(&raw);
        }
    }
}
