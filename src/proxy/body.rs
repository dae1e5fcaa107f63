//! Request bodies: small ones are buffered so the one retry after a 401 can replay
//! them; large ones stream and are not retried. `max_body` is enforced while
//! streaming, not only from `Content-Length`. A client whose body stalls for
//! `client_timeout` (its [`ClientBody`] fails) gets `408`, buffered or streaming;
//! when streaming, the upstream request is aborted mid-body.
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
use http_body_util::{BodyExt, Either, Full};

use crate::error::ProxyError;
#[cfg(doc)]
use crate::inbound::ClientBody;
use crate::inbound::ClientBodyError;

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

/// A request body as it comes from the client: a [`ClientBody`], or a unit test's.
pub trait RequestBody:
    http_body::Body<Data = Bytes, Error = ClientBodyError> + Send + Unpin + 'static
{
}

impl<B> RequestBody for B where
    B: http_body::Body<Data = Bytes, Error = ClientBodyError> + Send + Unpin + 'static
{
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
        body: impl RequestBody,
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

    /// The whole body, when it was read to its end.
    pub fn buffered(&self) -> Option<&Bytes> {
        match self {
            Self::Replayable(bytes) => Some(bytes),
            Self::Streaming { .. } => None,
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

    fn stream_rest(head: Bytes, rest: impl RequestBody, max_body: u64) -> Self {
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
fn discard(mut body: impl RequestBody) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
    });
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use futures_util::Stream;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use tokio::sync::mpsc;

    use super::*;
    use crate::proxy::Limits;

    type Chunk = Result<Frame<Bytes>, ClientBodyError>;
    type TestBody = StreamBody<Pin<Box<dyn Stream<Item = Chunk> + Send>>>;

    const STALL: Duration = Duration::from_secs(7);

    /// A body that sends `chunks`, then stalls if `stall`, else ends.
    fn body(chunks: &[&'static str], stall: bool) -> TestBody {
        let mut items: Vec<Chunk> = chunks
            .iter()
            .map(|chunk| Ok(Frame::data(Bytes::from_static(chunk.as_bytes()))))
            .collect();
        if stall {
            items.push(Err(ClientBodyError::Stalled(STALL)));
        }
        StreamBody::new(Box::pin(stream::iter(items)))
    }

    /// A body fed by the returned sender, one chunk at a time.
    fn channel_body() -> (mpsc::Sender<Chunk>, TestBody) {
        let (sender, receiver) = mpsc::channel(1);
        let chunks = stream::unfold(receiver, |mut receiver| async move {
            let chunk = receiver.recv().await?;
            Some((chunk, receiver))
        });
        (sender, StreamBody::new(Box::pin(chunks)))
    }

    fn headers(content_length: Option<usize>, expect: bool) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(length) = content_length {
            headers.insert(header::CONTENT_LENGTH, length.into());
        }
        if expect {
            headers.insert(
                header::EXPECT,
                http::HeaderValue::from_static("100-continue"),
            );
        }
        headers
    }

    fn limits(replay_limit: u64, max_body: u64) -> Limits {
        Limits {
            request_timeout: Duration::from_secs(5),
            replay_limit,
            max_body,
            client_timeout: Duration::from_secs(3),
        }
    }

    /// Prepares a body without a `Content-Length` under `limits`.
    async fn prepare(body: TestBody, limits: &Limits) -> Result<OutboundBody, ProxyError> {
        OutboundBody::prepare(
            body,
            &headers(None, false),
            limits.replay_limit,
            limits.max_body,
        )
        .await
    }

    /// Asserts that `error` is the 413 for a body over `limit` bytes.
    fn assert_too_large(error: &ProxyError, limit: u64) {
        assert!(
            matches!(error, ProxyError::BodyTooLarge { limit: named } if *named == limit),
            "{error:?}"
        );
    }

    /// What the upstream receives from one attempt: the bytes, or the stream's error.
    async fn sent(outbound: &mut OutboundBody) -> Result<Bytes, String> {
        match outbound.attempt() {
            Either::Left(full) => Ok(full.collect().await.expect("infallible").to_bytes()),
            Either::Right(body) => body
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .map_err(|error| error.to_string()),
        }
    }

    #[tokio::test]
    async fn a_content_length_of_max_body_is_accepted_and_one_more_is_413() {
        let exact = OutboundBody::prepare(
            body(&["0123456789"], false),
            &headers(Some(10), false),
            64,
            10,
        )
        .await
        .expect("max_body bytes are accepted");
        assert!(exact.is_replayable());
        let over = OutboundBody::prepare(
            body(&["0123456789a"], false),
            &headers(Some(11), false),
            64,
            10,
        )
        .await
        .expect_err("one byte more");
        assert_too_large(&over, 10);
    }

    #[tokio::test]
    async fn a_buffered_body_of_max_body_is_sent_and_one_more_is_413() {
        // A replay limit above max_body: the whole body is buffered and counted.
        let limits = limits(64, 10);
        let mut exact = prepare(body(&["01234", "56789"], false), &limits)
            .await
            .expect("max_body bytes");
        assert_eq!(sent(&mut exact).await.expect("sent"), "0123456789");
        let over = prepare(body(&["01234", "56789a"], false), &limits)
            .await
            .expect_err("one byte more");
        assert_too_large(&over, 10);
    }

    #[tokio::test]
    async fn a_body_of_replay_limit_bytes_can_be_sent_twice_and_one_more_streams_once() {
        let limits = limits(4, 64);
        let mut exact = prepare(body(&["ab", "cd"], false), &limits)
            .await
            .expect("prepared");
        assert!(exact.is_replayable());
        assert_eq!(sent(&mut exact).await.expect("first"), "abcd");
        assert_eq!(sent(&mut exact).await.expect("second"), "abcd");

        let mut longer = prepare(body(&["ab", "cde"], false), &limits)
            .await
            .expect("prepared");
        assert!(!longer.is_replayable());
        assert_eq!(sent(&mut longer).await.expect("first"), "abcde");
        assert_eq!(
            sent(&mut longer).await.expect("taken"),
            "",
            "a stream is taken once"
        );
        assert!(
            longer.cut_off(&limits).is_none(),
            "it ended, it was not cut off"
        );
    }

    #[tokio::test]
    async fn a_streaming_body_of_max_body_is_sent_and_one_more_is_cut_off_with_413() {
        let limits = limits(2, 6);
        let mut exact = prepare(body(&["abc", "d", "ef"], false), &limits)
            .await
            .expect("prepared");
        assert_eq!(sent(&mut exact).await.expect("sent"), "abcdef");
        assert!(exact.cut_off(&limits).is_none());

        let mut over = prepare(body(&["abc", "de", "fg"], false), &limits)
            .await
            .expect("prepared: the limit is passed while streaming");
        let error = sent(&mut over).await.expect_err("cut off");
        assert!(error.contains("over max_body"), "{error}");
        let answer = over.cut_off(&limits).expect("the client's answer");
        assert_too_large(&answer, 6);
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_408_buffered_or_streaming() {
        let limits = limits(4, 64);
        let buffered = prepare(body(&["ab"], true), &limits)
            .await
            .expect_err("stalled while buffered");
        assert!(
            matches!(buffered, ProxyError::ClientTimeout(STALL)),
            "{buffered:?}"
        );

        let mut streaming = prepare(body(&["abcde"], true), &limits)
            .await
            .expect("prepared");
        sent(&mut streaming).await.expect_err("the stream fails");
        let answer = streaming.cut_off(&limits).expect("the client's answer");
        assert!(
            matches!(answer, ProxyError::ClientTimeout(timeout) if timeout == limits.client_timeout),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn the_rest_of_an_over_limit_body_is_read_and_dropped_unless_the_client_waits_for_100() {
        let chunk = || Ok(Frame::data(Bytes::from_static(b"0123456789")));
        let (sender, rest) = channel_body();
        let error = OutboundBody::prepare(rest, &headers(Some(100), false), 4, 10)
            .await
            .expect_err("over max_body");
        assert_too_large(&error, 10);
        // Each send waits for the previous chunk to be read: the body is being drained.
        for _ in 0..3 {
            sender.send(chunk()).await.expect("the rest is read");
        }

        let (sender, rest) = channel_body();
        OutboundBody::prepare(rest, &headers(Some(100), true), 4, 10)
            .await
            .expect_err("over max_body");
        // Nothing reads a body its client has not sent yet: it is dropped.
        assert!(sender.send(chunk()).await.is_err());
    }
}
