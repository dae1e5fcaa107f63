//! The first request's answer on its way to the client: streamed as it arrives and
//! copied, up to `max_response`, into a buffer; when it ends, the copy becomes the
//! key's answer before the last frame goes out (so a client that repeats the request
//! the moment it has the answer finds it kept). Past `max_response` the key is marked
//! done without a kept answer, before the frame that crossed it goes out, and the rest
//! streams through uncopied.
//!
//! A client that leaves mid-answer does not lose the key's answer: the rest of the
//! upstream body is read in the background (bounded by `DRAIN_LIMIT` and
//! `max_response`) and kept. An upstream that fails mid-answer leaves the key with the
//! proxy's `502`, as a failure before the head would.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;

use super::Claim;
use super::record::Answer;
use crate::error::ProxyError;
use crate::proxy::ResponseBody;
use crate::request_id::RequestId;

/// How long the rest of an answer whose client left is read for keeping.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// An upstream response body, passed through as it is, or passed through and kept.
#[derive(Debug)]
pub(crate) struct KeptBody(Inner);

#[derive(Debug)]
enum Inner {
    Plain(ResponseBody),
    Keeping(Box<Keeping>),
}

struct Keeping {
    body: Option<ResponseBody>,
    /// Until the answer is kept (or marked not kept).
    claim: Option<Claim>,
    status: StatusCode,
    headers: HeaderMap,
    copy: BytesMut,
    max_response: usize,
    request_id: RequestId,
    /// The answer being written to the store, and what goes out once it is: a held
    /// last frame, or the end.
    settling: Option<(BoxFuture<'static, ()>, Option<Frame<Bytes>>)>,
}

impl std::fmt::Debug for Keeping {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Keeping")
            .field("status", &self.status)
            .field("copied", &self.copy.len())
            .finish_non_exhaustive()
    }
}

impl KeptBody {
    /// A body that is only passed through.
    pub(crate) fn plain(body: ResponseBody) -> Self {
        Self(Inner::Plain(body))
    }

    /// The first answer of `claim`, kept as it streams.
    pub(super) fn keeping(
        body: ResponseBody,
        claim: Claim,
        status: StatusCode,
        headers: HeaderMap,
        max_response: usize,
        request_id: RequestId,
    ) -> Self {
        Self(Inner::Keeping(Box::new(Keeping {
            body: Some(body),
            claim: Some(claim),
            status,
            headers,
            copy: BytesMut::new(),
            max_response,
            request_id,
            settling: None,
        })))
    }
}

impl Keeping {
    fn answer(&mut self) -> Answer {
        Answer::new(
            self.status,
            std::mem::take(&mut self.headers),
            std::mem::take(&mut self.copy).freeze(),
        )
    }

    /// Copies `data`; past `max_response`, the copy is dropped and what marks the key
    /// done without an answer is returned, to be awaited before `data` goes out.
    fn copy(&mut self, data: &Bytes) -> Option<BoxFuture<'static, ()>> {
        if self.copy.len() + data.len() > self.max_response {
            self.copy = BytesMut::new();
            return self
                .claim
                .take()
                .map(|claim| Box::pin(claim.keep(None)) as BoxFuture<'static, ()>);
        }
        self.copy.extend_from_slice(data);
        None
    }
}

impl Body for KeptBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let keeping = match &mut self.get_mut().0 {
            Inner::Plain(body) => return Pin::new(body).poll_frame(cx),
            Inner::Keeping(keeping) => &mut **keeping,
        };
        loop {
            if let Some((settling, _)) = &mut keeping.settling {
                ready!(settling.as_mut().poll(cx));
                let (_, held) = keeping.settling.take().expect("settling was just polled");
                return Poll::Ready(held.map(Ok));
            }
            let Some(body) = keeping.body.as_mut() else {
                return Poll::Ready(None);
            };
            let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
            let ended = body.is_end_stream();
            match frame {
                None => {
                    if let Some(claim) = keeping.claim.take() {
                        let answer = keeping.answer();
                        keeping.settling = Some((Box::pin(claim.keep(Some(answer))), None));
                        continue;
                    }
                    return Poll::Ready(None);
                }
                Some(Ok(frame)) => {
                    if keeping.claim.is_some() {
                        if let Some(marking) = frame.data_ref().and_then(|data| keeping.copy(data))
                        {
                            keeping.settling = Some((marking, Some(frame)));
                            continue;
                        }
                        if ended && let Some(claim) = keeping.claim.take() {
                            let answer = keeping.answer();
                            keeping.settling =
                                Some((Box::pin(claim.keep(Some(answer))), Some(frame)));
                            continue;
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(error)) => {
                    if let Some(claim) = keeping.claim.take() {
                        let request_id = keeping.request_id.clone();
                        spawn(async move {
                            let answer =
                                Answer::of_error(ProxyError::UpstreamUnreachable, &request_id)
                                    .await;
                            claim.keep(Some(answer)).await;
                        });
                    }
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Plain(body) => body.is_end_stream(),
            // Not over until the answer is kept, even when the body was empty.
            Inner::Keeping(keeping) => {
                keeping.claim.is_none()
                    && keeping.settling.is_none()
                    && keeping.body.as_ref().is_none_or(Body::is_end_stream)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Plain(body) => body.size_hint(),
            Inner::Keeping(keeping) => keeping
                .body
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), Body::size_hint),
        }
    }
}

impl Drop for Keeping {
    fn drop(&mut self) {
        // A write already under way finishes.
        if let Some((settling, _)) = self.settling.take() {
            spawn(settling);
        }
    }
}

impl Drop for KeptBody {
    /// The client left before the end: the rest is read and kept in the background.
    fn drop(&mut self) {
        let Inner::Keeping(keeping) = &mut self.0 else {
            return;
        };
        let (Some(claim), Some(body)) = (keeping.claim.take(), keeping.body.take()) else {
            return;
        };
        let status = keeping.status;
        let headers = std::mem::take(&mut keeping.headers);
        let copy = std::mem::take(&mut keeping.copy);
        let max_response = keeping.max_response;
        let request_id = keeping.request_id.clone();
        spawn(async move {
            let mut body = body;
            let mut copy = copy;
            let read = async {
                while let Some(frame) = body.frame().await {
                    if let Some(data) = frame?.data_ref() {
                        if copy.len() + data.len() > max_response {
                            return Ok(None);
                        }
                        copy.extend_from_slice(data);
                    }
                }
                Ok::<_, hyper::Error>(Some(copy))
            };
            match tokio::time::timeout(DRAIN_LIMIT, read).await {
                Ok(Ok(Some(copy))) => {
                    claim
                        .keep(Some(Answer::new(status, headers, copy.freeze())))
                        .await;
                }
                Ok(Ok(None)) => claim.keep(None).await,
                Ok(Err(_)) | Err(_) => {
                    let answer =
                        Answer::of_error(ProxyError::UpstreamUnreachable, &request_id).await;
                    claim.keep(Some(answer)).await;
                }
            }
        });
    }
}

/// Spawns `task` on the current runtime, if there is one (a drop during a runtime's
/// own shutdown has none: the in-flight marker then expires on its own).
pub(super) fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(task);
    }
}
