//! A proxy worker (its thread, runtime and accept loop) and the loop that serves one
//! accepted connection within the bounds of [`ClientLimits`].

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::ServeError;
use crate::inbound::{ClientBody, ClientLimits, ConnectionWatch, Verdict, WatchedBody};
use crate::pipeline::Pipeline;
use crate::proxy;
use crate::shutdown::{Stage, reached};

/// Largest request head (request line + headers) a client may send, in bytes.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Streams an HTTP/2 client may have open at once on one connection: the least RFC
/// 9113 advises, and what each connection can cost in slots and buffers.
const MAX_H2_STREAMS: u32 = 100;

/// How long a connection closed for idling may take to say goodbye (HTTP/2 GOAWAY, an
/// HTTP/1 head already under way) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// One proxy worker per CPU the process may use (cgroup quotas included).
pub(super) fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A proxy worker: its own thread with a single-threaded runtime, its own upstream
/// connection pool, and its own accept loop on the shared listening socket, like an
/// nginx worker process. A connection, its requests and their upstream connections
/// stay on one thread: no work stealing, no cross-thread wake-ups on the hot path.
/// Token state, limits and metrics are shared (atomics and `ArcSwap`).
pub(super) struct Worker {
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) client: proxy::UpstreamClient,
}

impl Worker {
    /// Starts the worker's thread; the receiver resolves when it has drained.
    pub(super) fn start(
        self,
        index: usize,
        socket: std::net::TcpListener,
        stage: watch::Receiver<Stage>,
        limits: ClientLimits,
    ) -> Result<oneshot::Receiver<()>, ServeError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServeError::Worker)?;
        // The proxy answers every path the same way: a plain service, no router.
        let worker = Arc::new(self);
        let app = tower::service_fn(move |request: http::Request<ClientBody>| {
            let worker = Arc::clone(&worker);
            // Boxed once, here: the request's whole state machine is several KiB, and
            // hyper moves the service's future (into its in-flight slot, out of the
            // call) by value; a pointer is what it moves instead.
            Box::pin(async move {
                Ok::<_, Infallible>(worker.pipeline.handle(&worker.client, request).await)
            })
        });
        let (drained, done) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("ipproxy-worker-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => accept_loop(listener, app, stage, limits).await,
                        Err(error) => tracing::error!(cause = %error, "worker cannot listen"),
                    }
                });
                let _ = drained.send(());
            })
            .map_err(ServeError::Worker)?;
        Ok(done)
    }
}

/// Accepts connections until the stage is `Draining`; keeps serving the open ones
/// until it is `Closing`, then closes each gracefully (hyper closes idle keep-alive
/// connections and sends `Connection: close` on the last response of busy ones) and
/// waits for them to finish.
pub(super) async fn accept_loop<S, B>(
    listener: TcpListener,
    app: S,
    mut stage: watch::Receiver<Stage>,
    limits: ClientLimits,
) where
    S: tower::Service<http::Request<ClientBody>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Off: the connection watch already closes a connection with no request in
        // progress at `header_read_timeout` (from accept and from each idle start,
        // which covers a partial head), while hyper's own would arm, reset and drop a
        // timer for every request head on the hot path.
        .header_read_timeout(None)
        .max_buf_size(MAX_REQUEST_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(MAX_REQUEST_HEAD as u32);
    let builder = Arc::new(builder);
    // Every connection task holds a sender: when all are gone, every connection is.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off briefly
                        // instead of spinning.
                        tracing::warn!(cause = %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(
                    Arc::clone(&builder),
                    stream,
                    app.clone(),
                    limits,
                    stage.clone(),
                    open.clone(),
                ));
            }
            () = reached(&mut stage, Stage::Draining) => break,
        }
    }
    drop(listener);
    drop(open);
    let _ = all_closed.recv().await;
}

/// Serves one connection until it ends, the server closes it, or it breaks a bound of
/// [`ClientLimits`]: idle (no request in progress) for `header_read_timeout` → closed
/// gracefully, dropped if that takes longer than [`IDLE_CLOSE_GRACE`]; a request body
/// stalled → that request answers `408` and the connection closes after it; a
/// response chunk not taken for `client_timeout` → dropped at once, which cancels its
/// upstream request and frees its slot.
async fn serve_connection<S, B>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: tokio::net::TcpStream,
    app: S,
    limits: ClientLimits,
    mut stage: watch::Receiver<Stage>,
    _open: mpsc::Sender<()>,
) where
    S: tower::Service<http::Request<ClientBody>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let watch = ConnectionWatch::new(limits);
    let service = {
        let watch = Arc::clone(&watch);
        hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let slot = watch.begin();
            let request = request.map(|body| ClientBody::new(body, slot.handle()));
            let call = app.clone().oneshot(request);
            async move {
                let response = call.await?;
                Ok::<_, Infallible>(response.map(|body| WatchedBody::new(body, slot)))
            }
        })
    };
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let mut check_at = Instant::now() + watch.check_interval();
    let mut closing_idle: Option<Instant> = None;
    let mut server_closing = false;
    loop {
        let wake_at = closing_idle.map_or(check_at, |since| check_at.min(since + IDLE_CLOSE_GRACE));
        tokio::select! {
            // Errors here are client-side (reset, malformed request): hyper already
            // answered what it could.
            _ = connection.as_mut() => return,
            () = tokio::time::sleep_until(wake_at) => {
                let now = Instant::now();
                let (verdict, next) = watch.check(now);
                check_at = next;
                match verdict {
                    Verdict::InTime => closing_idle = None,
                    Verdict::BodyStalled => connection.as_mut().graceful_shutdown(),
                    Verdict::Idle => match closing_idle {
                        None => {
                            connection.as_mut().graceful_shutdown();
                            closing_idle = Some(now);
                        }
                        Some(since) if now >= since + IDLE_CLOSE_GRACE => return,
                        Some(_) => {}
                    },
                    Verdict::ResponseStalled => return,
                }
            }
            () = reached(&mut stage, Stage::Closing), if !server_closing => {
                server_closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}
