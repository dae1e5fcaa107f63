//! Request bodies: small ones are buffered so the one retry after a 401 can replay
//! them; large ones stream and are not retried. `max_body` is enforced while
//! streaming, not only from `Content-Length`.
//!
//! A client that passes `max_body` is usually still sending when its 413 is ready.
//! Closing the connection on unread bytes makes the kernel send a reset that can
//! destroy the 413 before the client reads it (RFC 9112 §9.6), so the rest of the
//! body is read and dropped in the background for a bounded time, the way nginx's
//! lingering close does, and the 413 says `Connection: close`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use http::{HeaderMap, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

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
    /// Larger than `replay_limit`: streams once. The flag is set when the client sent
    /// more than `max_body`, so that the failed upstream request becomes a 413.
    Streaming {
        body: Body,
        over_limit: Arc<AtomicBool>,
    },
}

impl OutboundBody {
    /// Reads up to `replay_limit` bytes; beyond that, streams the rest (up to
    /// `max_body` in all).
    pub async fn prepare(
        body: Incoming,
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
            let frame =
                frame.map_err(|_| ProxyError::BadRequest("the request body could not be read"))?;
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

    /// True when a streaming body was cut off for passing `max_body`.
    pub fn exceeded_limit(&self) -> bool {
        match self {
            Self::Replayable(_) => false,
            Self::Streaming { over_limit, .. } => over_limit.load(Ordering::Relaxed),
        }
    }

    fn stream_rest(head: Bytes, rest: Incoming, max_body: u64) -> Self {
        let over_limit = Arc::new(AtomicBool::new(false));
        let state = (rest, head.len() as u64, Arc::clone(&over_limit));
        let rest = stream::unfold(Some(state), move |state| async move {
            let (mut body, mut sent, over_limit) = state?;
            loop {
                let frame = match body.frame().await? {
                    Ok(frame) => frame,
                    Err(error) => return Some((Err(std::io::Error::other(error)), None)),
                };
                // Trailers are not forwarded.
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                sent += chunk.len() as u64;
                if sent > max_body {
                    over_limit.store(true, Ordering::Relaxed);
                    discard(body);
                    let error = std::io::Error::other("request body over max_body");
                    return Some((Err(error), None));
                }
                return Some((Ok(chunk), Some((body, sent, over_limit))));
            }
        });
        let stream = stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(rest);
        Self::Streaming {
            body: Body::from_stream(stream),
            over_limit,
        }
    }
}

/// Reads and drops what is left of `body` for at most [`DISCARD_TIME`], in the
/// background, so that the client can finish sending and read its 413.
fn discard(mut body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
    });
}
