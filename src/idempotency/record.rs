//! What the store keeps under a scope: an in-flight marker, or a finished request's
//! answer (or the note that it was too large to keep), each with the fingerprint of
//! the request that made it; and their encoding for the shared store (JSON, header
//! values and body in base64, sealed by the store before it leaves the process).

use std::sync::Arc;

use axum::body::Body;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt as _;

use super::key::Fingerprint;
use crate::error::ProxyError;
use crate::request_id::{self, RequestId};

/// The response header that marks a replay.
pub(super) const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A kept answer: what the first request's client got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub status: StatusCode,
    /// End-to-end headers (hop-by-hop ones were removed on the way in), without the
    /// first request's `x-request-id`.
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The proxy's own answer to the first request (a `504`, a `502`), kept as the
    /// key's answer.
    pub(crate) async fn of_error(error: ProxyError, request_id: &RequestId) -> Self {
        let response = error.into_response_for(request_id);
        let (parts, body) = response.into_parts();
        // An in-memory JSON body: it cannot fail.
        let body = body
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        Self::new(parts.status, parts.headers, body)
    }

    pub(crate) fn new(status: StatusCode, mut headers: HeaderMap, body: Bytes) -> Self {
        headers.remove(request_id::HEADER);
        Self {
            status,
            headers,
            body,
        }
    }

    /// The kept answer, byte for byte, with this request's id and, for a repeat,
    /// `Idempotent-Replayed: true`.
    pub(crate) fn replay(&self, request_id: &RequestId, replayed: bool) -> http::Response<Body> {
        let mut response = http::Response::new(Body::from(self.body.clone()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.clone_from(&self.headers);
        headers.insert(request_id::HEADER, request_id.header_value());
        if replayed {
            headers.insert(REPLAYED, HeaderValue::from_static("true"));
        }
        response
    }
}

/// What a scope holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record {
    /// Claimed by a request still in flight.
    InFlight { fingerprint: Fingerprint },
    /// Finished: its answer, or `None` when it was too large to keep.
    Done {
        fingerprint: Fingerprint,
        answer: Option<Arc<Answer>>,
    },
}

impl Record {
    pub(super) fn fingerprint(&self) -> &Fingerprint {
        match self {
            Self::InFlight { fingerprint } | Self::Done { fingerprint, .. } => fingerprint,
        }
    }

    /// The plaintext the shared store seals.
    pub(super) fn encode(&self) -> Vec<u8> {
        let wire = match self {
            Self::InFlight { fingerprint } => Wire {
                state: WireState::InFlight,
                fingerprint: hex::encode(fingerprint),
                answer: None,
            },
            Self::Done {
                fingerprint,
                answer,
            } => Wire {
                state: WireState::Done,
                fingerprint: hex::encode(fingerprint),
                answer: answer.as_deref().map(|answer| WireAnswer {
                    status: answer.status.as_u16(),
                    headers: answer
                        .headers
                        .iter()
                        .map(|(name, value)| (name.as_str().to_owned(), STANDARD.encode(value)))
                        .collect(),
                    body: STANDARD.encode(&answer.body),
                }),
            },
        };
        serde_json::to_vec(&wire).expect("a record serializes")
    }

    /// A record read back; `None` when it is not one (another version, garbage).
    pub(super) fn decode(plaintext: &[u8]) -> Option<Self> {
        let wire: Wire = serde_json::from_slice(plaintext).ok()?;
        let mut fingerprint = [0u8; 32];
        hex::decode_to_slice(&wire.fingerprint, &mut fingerprint).ok()?;
        match wire.state {
            WireState::InFlight => Some(Self::InFlight { fingerprint }),
            WireState::Done => {
                let answer = match wire.answer {
                    None => None,
                    Some(answer) => {
                        let mut headers = HeaderMap::with_capacity(answer.headers.len());
                        for (name, value) in answer.headers {
                            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                            let value =
                                HeaderValue::from_bytes(&STANDARD.decode(value).ok()?).ok()?;
                            headers.append(name, value);
                        }
                        Some(Arc::new(Answer {
                            status: StatusCode::from_u16(answer.status).ok()?,
                            headers,
                            body: Bytes::from(STANDARD.decode(answer.body).ok()?),
                        }))
                    }
                };
                Some(Self::Done {
                    fingerprint,
                    answer,
                })
            }
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireState {
    InFlight,
    Done,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    state: WireState,
    fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    answer: Option<WireAnswer>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WireAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_their_encoding() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append(
            "x-multi",
            HeaderValue::from_bytes(b"b\xff").expect("opaque"),
        );
        for record in [
            Record::InFlight {
                fingerprint: [7; 32],
            },
            Record::Done {
                fingerprint: [8; 32],
                answer: None,
            },
            Record::Done {
                fingerprint: [9; 32],
                answer: Some(Arc::new(Answer::new(
                    StatusCode::ACCEPTED,
                    headers,
                    Bytes::from_static(b"{\"refid\":\"SM1\"}\x00\xff"),
                ))),
            },
        ] {
            assert_eq!(Record::decode(&record.encode()), Some(record));
        }
        assert_eq!(Record::decode(b"garbage"), None);
    }
}
