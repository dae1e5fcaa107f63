//! The upstream response body. For HTTP/1.1 it carries its connection and drives it
//! while the body streams (the driver reads what the body yields); when the last
//! frame is out, the connection goes back to the idle list, in the same poll, with no
//! task spawned. Dropped before its end (the client went away, a timeout, a retry),
//! it closes the connection: a half-read exchange never reaches the idle list.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::connection::Http1;
use super::idle;

/// An upstream response body, streamed as it arrives.
#[derive(Debug)]
pub struct ResponseBody {
    incoming: Incoming,
    /// The HTTP/1.1 connection the body arrives on, until the body ends.
    connection: Option<Http1>,
}

impl ResponseBody {
    pub(super) fn http1(incoming: Incoming, connection: Http1) -> Self {
        Self {
            incoming,
            connection: Some(connection),
        }
    }

    /// An HTTP/1.1 body that was over with its head (HEAD, 204, 304,
    /// `Content-Length: 0`): its connection goes back to the idle list now when
    /// `reusable` (hyper was done with it when the head came in), else it is closed.
    pub(super) fn http1_ended(incoming: Incoming, connection: Http1, reusable: bool) -> Self {
        if reusable {
            idle::release(connection);
        }
        Self::detached(incoming)
    }

    /// A body that needs no driving: HTTP/2 (the connection has its own task), or
    /// an HTTP/1.1 body that was over with the head.
    pub(super) fn detached(incoming: Incoming) -> Self {
        Self {
            incoming,
            connection: None,
        }
    }

    /// The body is complete: the connection goes back if hyper is done with it.
    fn finish(&mut self) {
        if let Some(mut connection) = self.connection.take()
            && connection.is_reusable()
        {
            idle::release(connection);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.connection {
            // HTTP/2, or the driver is gone: the body has its own wake-ups.
            None => Pin::new(&mut this.incoming).poll_frame(cx),
            // Only the driver fills the body: it registers this task's waker (on the
            // socket), and the body is polled with a waker that wakes no one, before
            // and after the driver ran, so that handing a chunk over wakes no one.
            Some(connection) => {
                let mut unwoken = Context::from_waker(Waker::noop());
                let polled = Pin::new(&mut this.incoming).poll_frame(&mut unwoken);
                if polled.is_pending() {
                    // Whether or not the driver is still running afterwards, what it
                    // read is in the body's channel.
                    let running = connection.drive(cx);
                    let polled = Pin::new(&mut this.incoming).poll_frame(&mut unwoken);
                    if !running {
                        this.connection = None;
                        if polled.is_pending() {
                            // Nothing more will come from the driver: wait on the body
                            // itself (its sender is gone, so it ends at once).
                            return Pin::new(&mut this.incoming).poll_frame(cx);
                        }
                    }
                    polled
                } else {
                    polled
                }
            }
        };
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if this.incoming.is_end_stream() => this.finish(),
            Poll::Ready(Some(Err(_))) => this.connection = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
