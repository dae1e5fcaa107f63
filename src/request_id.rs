//! `x-request-id`: taken from the client when it is safe to log, generated otherwise,
//! forwarded upstream and returned on every response.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The request id header.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied id kept; longer ones are replaced (they could bloat logs).
const MAX_LEN: usize = 128;

/// A request id: at most 128 characters of `[A-Za-z0-9._-]`, so it can never forge
/// or break a log line.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The client's id when it is acceptable, otherwise a new one.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get(&HEADER)
            .filter(|value| is_acceptable(value.as_bytes()))
            .map(|value| Self(value.clone()))
            .unwrap_or_else(Self::generate)
    }

    /// A new random id (128 bits, hex), written without a temporary string: this
    /// runs on almost every request.
    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let id: u128 = rand::random();
        let mut text = [0u8; 32];
        for (index, digit) in text.iter_mut().enumerate() {
            *digit = HEX[(id >> (124 - 4 * index)) as usize & 0xf];
        }
        // Owned bytes that are shared, not copied, by every clone of the header.
        let shared = Bytes::from_owner(text);
        Self(HeaderValue::from_maybe_shared(shared).expect("hex digits are a valid header value"))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII from the acceptable set ever gets in.
        self.0.to_str().unwrap_or_default()
    }

    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

fn is_acceptable(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER,
            HeaderValue::from_str(id).expect("valid test header"),
        );
        headers
    }

    #[test]
    fn client_id_is_kept_when_safe() {
        let id = RequestId::from_headers(&with_id("abc-123_x.y"));
        assert_eq!(id.as_str(), "abc-123_x.y");
    }

    #[test]
    fn unsafe_or_long_client_ids_are_replaced() {
        for bad in ["has space", "quote\"", "a{b}", &"x".repeat(129)] {
            let id = RequestId::from_headers(&with_id(bad));
            assert_ne!(id.as_str(), bad);
            assert_eq!(id.as_str().len(), 32);
        }
    }

    #[test]
    fn generated_ids_are_32_lowercase_hex_digits_and_differ() {
        let ids: Vec<String> = (0..64)
            .map(|_| RequestId::generate().as_str().to_owned())
            .collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Every digit position varies: the shifts cover all 128 bits.
        for position in 0..32 {
            let digits: std::collections::BTreeSet<u8> =
                ids.iter().map(|id| id.as_bytes()[position]).collect();
            assert!(digits.len() > 1, "digit {position} never changes");
        }
    }
}
