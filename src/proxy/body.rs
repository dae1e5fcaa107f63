//! Request bodies: small ones are buffered so the one retry after a 401 can replay
//! them; large ones stream and are not retried. `max_body` is enforced while
//! streaming, not only from `Content-Length`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use http_body::Body as _;
use http_body_util::BodyExt;

use crate::error::ProxyError;

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
        body: Body,
        content_length: Option<u64>,
        replay_limit: u64,
        max_body: u64,
    ) -> Result<Self, ProxyError> {
        if content_length.is_some_and(|length| length > max_body) {
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
    pub fn attempt(&mut self) -> Body {
        match self {
            Self::Replayable(bytes) => Body::from(bytes.clone()),
            Self::Streaming { body, .. } => std::mem::replace(body, Body::empty()),
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

    fn stream_rest(head: Bytes, rest: Body, max_body: u64) -> Self {
        let over_limit = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&over_limit);
        let mut sent = head.len() as u64;
        let rest = rest.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            sent += chunk.len() as u64;
            if sent > max_body {
                flag.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("request body over max_body"));
            }
            Ok(chunk)
        });
        let stream = stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(rest);
        Self::Streaming {
            body: Body::from_stream(stream),
            over_limit,
        }
    }
}
