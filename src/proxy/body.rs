//! Request bodies: small ones are buffered so the one retry after a 401 can replay
//! them; large ones stream and are not retried. `max_body` is enforced while
//! streaming, not only from `Content-Length`. A client whose body stalls for
//! `client_timeout` ([`ClientBody`] fails) gets `408`, buffered or streaming; when
//! streaming, the upstream request is aborted mid-body.
//!
//! A client that passes `max_body` is usually still sending when its 413 is ready.
//! Closing the connection on unread bytes makes the kernel send a reset that can
//! destroy the 413 before the client reads it (RFC 9112 §9.6), so the rest of the
//! body is read and dropped in the background for a bounded time, the way nginx's
//! lingering close does, and the 413 says `Connection: close`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use http::{HeaderMap, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full};

use crate::connection::{ClientBody, ClientBodyError};
use crate::error::ProxyError;

/// How long the rest of an over-limit body is read and dropped.
const DISCARD_TIME: Duration = Duration::from_secs(5);

/// What an upstream request carries: a buffered body as it is (no box per request),
/// or a stream.
pub type UpstreamBody = Either<Full<Bytes>, Body>;

/// A request body ready to go upstream.
#[derive(Debug)]
pub enum OutboundBody {
    /// Fully read (at most `replay_limit` bytes): can be sent twice.
    Replayable(Bytes),
    /// Larger than `replay_limit`: streams once. `cut` says why the stream was cut off
    /// (the client sent more than `max_body`, or stalled), so that the failed upstream
    /// request becomes the client's 413 or 408 rather than a 502.
    Streaming { body: Body, cut: Arc<CutOff> },
}

/// Why a streaming body was cut off, if it was (set by the stream, read by `forward`).
#[derive(Debug, Default)]
pub struct CutOff(AtomicU8);

impl CutOff {
    const OVER_LIMIT: u8 = 1;
    const CLIENT_STALLED: u8 = 2;

    fn set(&self, reason: u8) {
        self.0.store(reason, Ordering::Relaxed);
    }
}

impl OutboundBody {
    /// Reads up to `replay_limit` bytes; beyond that, streams the rest (up to
    /// `max_body` in all).
    pub async fn prepare(
        body: ClientBody,
        headers: &HeaderMap,
        replay_limit: u64,
        max_body: u64,
    ) -> Result<Self, ProxyError> {
        let content_length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if content_length.is_some_and(|length| length > max_body) {
            // A client that waits for `100 Continue` has sent nothing and will send
            // nothing: reading would invite the body.
            if headers.get(header::EXPECT).is_none() {
                discard(body);
            }
            return Err(ProxyError::BodyTooLarge { limit: max_body });
        }
        if body.is_end_stream() {
            return Ok(Self::Replayable(Bytes::new()));
        }
        let mut body = body;
        let mut buffered =
            BytesMut::with_capacity(content_length.unwrap_or(0).min(replay_limit) as usize);
        // Read until the body ends or passes the replay limit.
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| match error {
                ClientBodyError::Stalled(limit) => ProxyError::ClientTimeout(limit),
                ClientBodyError::Read(_) => {
                    ProxyError::BadRequest("the request body could not be read")
                }
            })?;
            if let Ok(data) = frame.into_data() {
                buffered.extend_from_slice(&data);
                if buffered.len() as u64 > max_body {
                    discard(body);
                    return Err(ProxyError::BodyTooLarge { limit: max_body });
                }
                if buffered.len() as u64 > replay_limit {
                    return Ok(Self::stream_rest(buffered.freeze(), body, max_body));
                }
            }
        }
        Ok(Self::Replayable(buffered.freeze()))
    }

    /// The body for one attempt. A streaming body can be taken once.
    pub fn attempt(&mut self) -> UpstreamBody {
        match self {
            Self::Replayable(bytes) => Either::Left(Full::new(bytes.clone())),
            Self::Streaming { body, .. } => Either::Right(std::mem::replace(body, Body::empty())),
        }
    }

    pub fn is_replayable(&self) -> bool {
        matches!(self, Self::Replayable(_))
    }

    /// The client's answer when a streaming body was cut off: `413` for passing
    /// `max_body`, `408` for stalling. `None` when it was not (the upstream failed).
    pub fn cut_off(&self, limits: &super::Limits) -> Option<ProxyError> {
        let Self::Streaming { cut, .. } = self else {
            return None;
        };
        match cut.0.load(Ordering::Relaxed) {
            CutOff::OVER_LIMIT => Some(ProxyError::BodyTooLarge {
                limit: limits.max_body,
            }),
            CutOff::CLIENT_STALLED => Some(ProxyError::ClientTimeout(limits.client_timeout)),
            _ => None,
        }
    }

    fn stream_rest(head: Bytes, rest: ClientBody, max_body: u64) -> Self {
        let cut = Arc::new(CutOff::default());
        let state = (rest, head.len() as u64, Arc::clone(&cut));
        let rest = stream::unfold(Some(state), move |state| async move {
            let (mut body, mut sent, cut) = state?;
            loop {
                let frame = match body.frame().await? {
                    Ok(frame) => frame,
                    Err(error) => {
                        if matches!(error, ClientBodyError::Stalled(_)) {
                            cut.set(CutOff::CLIENT_STALLED);
                        }
                        return Some((Err(std::io::Error::other(error)), None));
                    }
                };
                // Trailers are not forwarded.
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                sent += chunk.len() as u64;
                if sent > max_body {
                    cut.set(CutOff::OVER_LIMIT);
                    discard(body);
                    let error = std::io::Error::other("request body over max_body");
                    return Some((Err(error), None));
                }
                return Some((Ok(chunk), Some((body, sent, cut))));
            }
        });
        let stream = stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(rest);
        Self::Streaming {
            body: Body::from_stream(stream),
            cut,
        }
    }
}

/// Reads and drops what is left of `body` for at most [`DISCARD_TIME`], in the
/// background, so that the client can finish sending and read its 413.
fn discard(mut body: ClientBody) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
    });
}
