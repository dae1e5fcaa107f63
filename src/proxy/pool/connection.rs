//! One upstream connection: opened over the outbound stack (TCP or the egress tunnel,
//! then rustls for `https`), HTTP/1.1 or HTTP/2 as ALPN decides.
//!
//! An HTTP/1.1 connection ([`Http1`]) has no task of its own: its hyper driver (the
//! `Connection` future that does all reading and writing) is polled by whoever holds
//! it, the request's own task, first while the request goes out and the response head
//! comes back ([`Http1::send`]), then by the response body ([`super::ResponseBody`]).
//! So a request never crosses tasks, and a connection is always in exactly one place:
//! in a request, in the idle list, or dropped (closed).
//!
//! An HTTP/2 connection multiplexes many requests, which no single request's task can
//! drive: its driver is spawned once, when the connection is made, and requests share
//! a [`Http2`] handle to it.

use std::future::Future as _;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use http::uri::{Authority, Parts, Scheme};
use http::{Request, Response, Uri};
use http_body::Body as _;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower::ServiceExt as _;

use super::super::body::UpstreamBody;
use super::super::egress::EgressConnector;
use super::{ClientId, PoolSettings, SendError};

/// Where a connection goes: the pool key, together with the client it belongs to.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl Origin {
    pub(super) fn matches(&self, scheme: &Scheme, authority: &Authority) -> bool {
        self.authority == *authority && self.scheme == *scheme
    }
}

/// What a connection needs to find its way back to its idle list.
#[derive(Debug, Clone)]
pub(super) struct PoolKey {
    pub client: ClientId,
    pub origin: Origin,
    pub settings: PoolSettings,
}

/// A freshly opened connection.
pub(super) enum Opened {
    Http1(Http1),
    Http2(Http2),
}

/// Opens a connection to `origin`: TCP (or a `CONNECT` tunnel through the egress
/// proxy), then TLS for `https`, offering HTTP/2 and HTTP/1.1 by ALPN.
pub(super) async fn open(
    egress: &EgressConnector,
    tls: &Arc<rustls::ClientConfig>,
    home: PoolKey,
) -> Result<Opened, SendError> {
    let PoolKey { origin, .. } = &home;
    let target = Uri::from_parts({
        let mut parts = Parts::default();
        parts.scheme = Some(origin.scheme.clone());
        parts.authority = Some(origin.authority.clone());
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        parts
    })
    .map_err(|error| SendError::Connect(Box::new(error)))?;
    let tcp = egress
        .clone()
        .oneshot(target)
        .await
        .map_err(SendError::Connect)?
        .into_inner();
    let (stream, http2) = if origin.scheme == Scheme::HTTPS {
        let name = server_name(&origin.authority)?;
        let tls = TlsConnector::from(Arc::clone(tls))
            .connect(name, tcp)
            .await
            .map_err(|error| SendError::Connect(Box::new(error)))?;
        let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        (Stream::Tls(Box::new(tls)), http2)
    } else {
        (Stream::Plain(tcp), false)
    };
    let received = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(CountingStream {
        stream,
        received: Arc::clone(&received),
    });
    if http2 {
        let (sender, driver) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake::<_, UpstreamBody>(io)
            .await
            .map_err(SendError::Request)?;
        // The one task of an HTTP/2 connection; it ends when the connection closes
        // (the peer's GOAWAY, an error, or the last handle dropped by the pool).
        tokio::spawn(async move {
            if let Err(error) = driver.await {
                tracing::debug!(cause = %error, "upstream HTTP/2 connection ended");
            }
        });
        Ok(Opened::Http2(Http2 { sender, home }))
    } else {
        let (sender, driver) = http1::Builder::new()
            .handshake::<_, UpstreamBody>(io)
            .await
            .map_err(SendError::Request)?;
        Ok(Opened::Http1(Http1 {
            sender,
            driver: Some(Box::new(driver)),
            received,
            home,
        }))
    }
}

/// The TLS server name for an authority: its host, without the brackets of an IPv6
/// literal.
fn server_name(authority: &Authority) -> Result<ServerName<'static>, SendError> {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|error| SendError::Connect(Box::new(error)))
}

/// Why a request did not get its response head.
pub(super) enum Failure {
    /// The connection ended before the request was taken off the queue: nothing of it
    /// left the proxy, so it can go on another connection as it is.
    NotSent {
        /// Boxed: the rare path should not make every result large.
        request: Box<Request<UpstreamBody>>,
        error: hyper::Error,
    },
    /// The request (or part of it) may have reached the upstream.
    Sent {
        error: hyper::Error,
        /// At least one byte of a response arrived before the failure.
        response_started: bool,
    },
}

/// An HTTP/1.1 connection, driven by whoever holds it.
pub(super) struct Http1 {
    sender: http1::SendRequest<UpstreamBody>,
    /// `None` once the driver has finished: the connection is closed. Boxed (hyper's
    /// state and buffers, ~800 bytes) so that checkout and return move a small value.
    driver: Option<Box<http1::Connection<TokioIo<CountingStream>, UpstreamBody>>>,
    /// Bytes read from the upstream on this connection so far.
    received: Arc<AtomicU64>,
    pub home: PoolKey,
}

impl std::fmt::Debug for Http1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1")
            .field("origin", &self.home.origin)
            .field("open", &self.driver.is_some())
            .finish_non_exhaustive()
    }
}

impl Http1 {
    /// Lets the driver do what it can (read, write, notice a close). False when the
    /// connection has ended.
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(driver) = &mut self.driver else {
            return false;
        };
        match Pin::new(driver).poll(cx) {
            Poll::Pending => true,
            Poll::Ready(result) => {
                if let Err(error) = result {
                    tracing::debug!(cause = %error, "upstream connection ended");
                }
                self.driver = None;
                false
            }
        }
    }

    /// Whether the connection can take a request as it is: still open, and hyper
    /// wants the next request (the exchange before it is over). Does not poll: a close
    /// the upstream sent while the connection was idle is met by the next send, which
    /// reads before it writes and then gives the request back unsent.
    pub(super) fn is_idle(&self) -> bool {
        self.driver.is_some() && self.sender.is_ready()
    }

    /// [`Http1::is_idle`], after letting the driver finish the exchange if it has not
    /// yet: usually the poll that delivered the last byte of the answer already did,
    /// and no poll is needed. The driver is polled with a waker that wakes no one:
    /// nobody waits on a connection between two requests, and the next holder polls it
    /// with its own. (The task's own waker would have it woken in vain by the next
    /// request's send, or by whichever task holds the connection next.)
    pub(super) fn is_reusable(&mut self) -> bool {
        self.is_idle()
            || (self.drive(&mut Context::from_waker(Waker::noop())) && self.sender.is_ready())
    }

    /// Sends `request` and drives the connection until the response head is in.
    /// `request` has an absolute URI; HTTP/1.1 sends the origin form (path and query).
    pub(super) async fn send(
        mut self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<super::ResponseBody>, Failure> {
        let (mut parts, body) = request.into_parts();
        let absolute = std::mem::take(&mut parts.uri).into_parts();
        let mut origin_form = Parts::default();
        origin_form.path_and_query = absolute.path_and_query;
        parts.uri = Uri::from_parts(origin_form).unwrap_or_default();
        let received_before = self.received.load(Ordering::Relaxed);
        let mut response = pin!(
            self.sender
                .try_send_request(Request::from_parts(parts, body))
        );
        // Set when the response has no body to drive (HEAD, 204, 304,
        // `Content-Length: 0`) and the connection is free for the next request at once.
        let mut free_at_head = false;
        // Only the driver makes the answer ready, and only the driver registers this
        // task's waker (on the socket, on the request body): the answer itself is
        // polled with a waker that wakes no one, so that the driver handing it over
        // does not wake this task once more for nothing.
        let result = std::future::poll_fn(|cx| {
            self.drive(cx);
            let polled = response
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
            if let Poll::Ready(result) = &polled {
                free_at_head =
                    result.as_ref().is_ok_and(|r| r.body().is_end_stream()) && self.is_reusable();
            }
            polled
        })
        .await;
        match result {
            Ok(response) => Ok(response.map(|incoming| {
                if incoming.is_end_stream() {
                    super::ResponseBody::http1_ended(incoming, self, free_at_head)
                } else {
                    super::ResponseBody::http1(incoming, self)
                }
            })),
            Err(mut error) => match error.take_message() {
                Some(mut request) => {
                    // Nothing was written: back to the absolute form for another
                    // connection.
                    let mut restored = std::mem::take(request.uri_mut()).into_parts();
                    restored.scheme = absolute.scheme;
                    restored.authority = absolute.authority;
                    *request.uri_mut() = Uri::from_parts(restored).unwrap_or_default();
                    Err(Failure::NotSent {
                        request: Box::new(request),
                        error: error.into_error(),
                    })
                }
                None => Err(Failure::Sent {
                    error: error.into_error(),
                    response_started: self.received.load(Ordering::Relaxed) != received_before,
                }),
            },
        }
    }
}

/// A handle to a shared HTTP/2 connection (its driver is its own task).
#[derive(Clone)]
pub(super) struct Http2 {
    sender: http2::SendRequest<UpstreamBody>,
    pub home: PoolKey,
}

impl std::fmt::Debug for Http2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2")
            .field("origin", &self.home.origin)
            .field("closed", &self.sender.is_closed())
            .finish_non_exhaustive()
    }
}

impl Http2 {
    pub(super) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends `request` (absolute URI: HTTP/2 sends scheme and authority) on the shared
    /// connection.
    pub(super) async fn send(
        mut self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<super::ResponseBody>, Failure> {
        match self.sender.try_send_request(request).await {
            Ok(response) => Ok(response.map(super::ResponseBody::detached)),
            Err(mut error) => match error.take_message() {
                Some(request) => Err(Failure::NotSent {
                    request: Box::new(request),
                    error: error.into_error(),
                }),
                // Streams share the connection: which bytes were this response's is
                // not known, so count it as started.
                None => Err(Failure::Sent {
                    error: error.into_error(),
                    response_started: true,
                }),
            },
        }
    }
}

/// The byte stream under hyper: plain TCP or TLS over it, counting what it reads so
/// that a failed exchange can tell whether any of the response had arrived.
pub(super) struct CountingStream {
    stream: Stream,
    received: Arc<AtomicU64>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for CountingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.stream {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        };
        let read = buf.filled().len() - before;
        if read > 0 {
            // One writer (this stream): a load and a store, no read-modify-write.
            let so_far = this.received.load(Ordering::Relaxed);
            this.received
                .store(so_far.wrapping_add(read as u64), Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
pub(super) mod testing;
#[cfg(test)]
mod tests;
