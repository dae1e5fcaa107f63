//! The upstream connection pool of one worker: HTTP/1.1 connections driven by the
//! request that holds them, and a shared HTTP/2 connection where ALPN picks h2.
//!
//! - `connection`: opening a connection (TCP or the egress tunnel, rustls, ALPN) and
//!   exchanging one request on it.
//! - `idle`: the worker's idle connections (thread-local: no lock), their bound and
//!   their expiry.
//! - `response`: the response body, which drives its HTTP/1.1 connection and puts it
//!   back when the body is complete.
//!
//! What this replaces: hyper-util's legacy client ran every connection as its own task,
//! so each request crossed tasks over channels both ways, and paid a pool mutex and a
//! spawned return-to-pool future. Here the request's task does the I/O itself.
//!
//! **Stale connections.** A kept-alive connection may have been closed by the
//! upstream while idle. Checkout does not poll it (`Http1::is_idle` only asks whether
//! its sender is ready): the close is met by the next send, which reads before it
//! writes and gives the request back unsent, and the request then goes on a fresh
//! connection as it is. A close that races a request already written is handled by
//! what hyper reports: one that may have reached the upstream is sent again
//! on a fresh connection only if its body is buffered (a streamed body is gone) and
//! either its method is idempotent (RFC 9110 §9.2.2) or no byte of a response had
//! arrived. A failure on a fresh connection is final.

mod connection;
mod idle;
mod response;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{Either, Full};

use super::body::UpstreamBody;
use super::egress::{EgressConnector, EgressError};
use crate::error;
use connection::{Failure, Opened, Origin, PoolKey};
use idle::Pooled;
pub use response::ResponseBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle upstream connections are kept this long (IntelePeer is one host per route).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections a worker keeps per upstream. A sidecar serves one app, whose
/// sustained concurrency towards IntelePeer is rarely above a few hundred; below the
/// bound every such request finds a warm connection (no TCP and TLS handshake per
/// request), above it the extra connections of a burst close when their response is
/// done instead of holding a socket and their buffers for [`IDLE_TIMEOUT`].
pub const MAX_IDLE_PER_UPSTREAM: usize = 256;

/// How the pool keeps idle connections.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
    /// Idle connections kept per upstream; the oldest beyond it is closed.
    pub max_idle: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            idle_timeout: IDLE_TIMEOUT,
            max_idle: MAX_IDLE_PER_UPSTREAM,
        }
    }
}

/// Which client a connection belongs to: clients differ in trusted roots and egress,
/// so they never share connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientId(u64);

impl ClientId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// The upstream client of one worker. Its idle connections belong to the thread that
/// parked them (see `idle`); cloning it shares them.
#[derive(Clone)]
pub struct UpstreamClient {
    id: ClientId,
    egress: EgressConnector,
    /// rustls with the roots of the outbound stack, ALPN h2 and http/1.1, and the
    /// default in-memory session cache, so new connections resume TLS sessions.
    tls: Arc<rustls::ClientConfig>,
    settings: PoolSettings,
}

impl fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("id", &self.id)
            .field("egress", &self.egress)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// A client on `egress` and `tls` (whose ALPN list it sets).
    pub fn new(
        egress: EgressConnector,
        mut tls: rustls::ClientConfig,
        settings: PoolSettings,
    ) -> Self {
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self {
            id: ClientId::next(),
            egress,
            tls: Arc::new(tls),
            settings,
        }
    }

    /// Sends `request` (absolute URI; `Host` set by the caller) on an idle connection
    /// to its origin, or a new one. When a kept-alive connection turns out to be
    /// closed, the request goes again on a fresh connection as the module comment
    /// says: as it is if it was not written, otherwise rebuilt by `rebuild` from the
    /// buffered body (`None` from `rebuild`: not sent again).
    pub async fn send<R>(
        &self,
        request: Request<UpstreamBody>,
        rebuild: R,
    ) -> Result<Response<ResponseBody>, SendError>
    where
        R: FnOnce(UpstreamBody) -> Option<Request<UpstreamBody>>,
    {
        let pooled = {
            let uri = request.uri();
            let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
                return Err(SendError::NoOrigin);
            };
            idle::checkout(self.id, scheme, authority)
        };
        let request = match pooled {
            None => request,
            Some(pooled) => {
                let replay = Replay::of(&request);
                let sent = match pooled {
                    Pooled::Http1(connection) => connection.send(request).await,
                    Pooled::Http2(connection) => connection.send(request).await,
                };
                match sent {
                    Ok(response) => return Ok(response),
                    Err(Failure::NotSent { request, .. }) => *request,
                    Err(Failure::Sent {
                        error,
                        response_started,
                    }) => match replay.body(response_started).and_then(rebuild) {
                        Some(request) => {
                            tracing::debug!(
                                cause = %error,
                                response_started,
                                "kept-alive upstream connection failed; sending again on a new one"
                            );
                            request
                        }
                        None => return Err(SendError::Request(error)),
                    },
                }
            }
        };
        let home = self.home_for(&request)?;
        // Boxed: opening a connection (TCP, the egress tunnel, TLS) is the rare path,
        // and its state would otherwise enlarge every request's future.
        let sent = match Box::pin(connection::open(&self.egress, &self.tls, home)).await? {
            Opened::Http1(connection) => connection.send(request).await,
            Opened::Http2(connection) => {
                idle::share(&connection);
                connection.send(request).await
            }
        };
        sent.map_err(|failure| match failure {
            Failure::NotSent { error, .. } | Failure::Sent { error, .. } => {
                SendError::Request(error)
            }
        })
    }

    /// Idle connections this thread holds for `origin` (`scheme://authority`), for
    /// tests and diagnostics.
    pub fn idle_connections(&self, origin: &http::Uri) -> usize {
        match (origin.scheme(), origin.authority()) {
            (Some(scheme), Some(authority)) => idle::count(self.id, scheme, authority),
            _ => 0,
        }
    }

    fn home_for(&self, request: &Request<UpstreamBody>) -> Result<PoolKey, SendError> {
        let uri = request.uri();
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(SendError::NoOrigin);
        };
        Ok(PoolKey {
            client: self.id,
            origin: Origin {
                scheme: scheme.clone(),
                authority: authority.clone(),
            },
            settings: self.settings,
        })
    }
}

/// What a request allows if its kept-alive connection fails after it was written.
struct Replay {
    /// A copy of the buffered body (a `Bytes` handle, not the bytes); `None` for a
    /// streamed body, which cannot be sent twice.
    body: Option<Full<Bytes>>,
    idempotent: bool,
}

impl Replay {
    fn of(request: &Request<UpstreamBody>) -> Self {
        Self {
            body: match request.body() {
                Either::Left(buffered) => Some(buffered.clone()),
                Either::Right(_) => None,
            },
            idempotent: is_idempotent(request.method()),
        }
    }

    /// The body to send again, if the request may be sent again.
    fn body(self, response_started: bool) -> Option<UpstreamBody> {
        let body = self.body?;
        (self.idempotent || !response_started).then_some(Either::Left(body))
    }
}

/// The idempotent methods of RFC 9110 §9.2.2 that the proxy forwards (`TRACE` is
/// never forwarded).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// Why an upstream request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened (TCP, the egress tunnel, TLS).
    Connect(BoxError),
    /// The exchange failed on an open connection.
    Request(hyper::Error),
    /// The request has no absolute URI (a bug in the caller).
    NoOrigin,
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }

    /// The egress proxy's failure, when the tunnel is what broke.
    pub fn egress(&self) -> Option<&EgressError> {
        match self {
            Self::Connect(error) => EgressError::find(error.as_ref()),
            _ => None,
        }
    }
}

impl fmt::Display for SendError {
    /// The category and the underlying causes, without the URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(error) => match EgressError::find(error.as_ref()) {
                Some(egress) => write!(f, "{egress}"),
                None => write!(f, "connection failed: {}", error::chain(error.as_ref())),
            },
            Self::Request(error) => write!(f, "request failed: {}", error::chain(error)),
            Self::NoOrigin => f.write_str("the upstream request has no absolute URI"),
        }
    }
}

impl std::error::Error for SendError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, body: UpstreamBody) -> Request<UpstreamBody> {
        let mut request = Request::new(body);
        *request.method_mut() = method;
        request
    }

    fn buffered() -> UpstreamBody {
        Either::Left(Full::new(Bytes::from_static(b"{}")))
    }

    fn streamed() -> UpstreamBody {
        Either::Right(axum::body::Body::empty())
    }

    #[test]
    fn a_buffered_post_is_sent_again_only_when_no_response_byte_came() {
        let post = || Replay::of(&request(Method::POST, buffered()));
        assert!(post().body(false).is_some());
        assert!(post().body(true).is_none());
    }

    #[test]
    fn an_idempotent_buffered_request_is_sent_again_even_after_response_bytes() {
        for method in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(
                Replay::of(&request(method.clone(), buffered()))
                    .body(true)
                    .is_some(),
                "{method}"
            );
        }
        assert!(
            Replay::of(&request(Method::PATCH, buffered()))
                .body(true)
                .is_none()
        );
    }

    #[test]
    fn a_streamed_body_is_never_sent_again() {
        assert!(
            Replay::of(&request(Method::PUT, streamed()))
                .body(false)
                .is_none()
        );
        assert!(
            Replay::of(&request(Method::POST, streamed()))
                .body(false)
                .is_none()
        );
    }

    #[test]
    fn a_send_error_names_its_category_and_finds_an_egress_failure() {
        let refused = SendError::Connect(Box::new(std::io::Error::other("refused")));
        assert!(refused.is_connect());
        assert!(refused.egress().is_none());
        assert_eq!(refused.to_string(), "connection failed: refused");

        let tunnel = SendError::Connect(Box::new(EgressError {
            proxy: "egress.corp:3128".to_owned(),
            reason: "could not be reached".to_owned(),
        }));
        assert!(tunnel.is_connect());
        assert_eq!(
            tunnel.egress().map(|egress| egress.proxy.as_str()),
            Some("egress.corp:3128")
        );
        assert_eq!(
            tunnel.to_string(),
            "the egress proxy egress.corp:3128 could not be reached"
        );

        assert!(!SendError::NoOrigin.is_connect());
        assert!(SendError::NoOrigin.egress().is_none());
    }
}
