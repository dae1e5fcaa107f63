//! Listeners, the request pipeline around the forwarding handler, load shedding and
//! graceful shutdown.
//!
//! [`serve`] takes bound listeners and a shutdown future, so tests bind `127.0.0.1:0`
//! and run everything in process; [`run`] adds what a process needs (binding, signals).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Uri, header};
use http_body::{Frame, SizeHint};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::access::{self, Access, AccessError};
use crate::config::Config;
use crate::error::ProxyError;
use crate::proxy::{self, ClientError, Limits};
use crate::request_id::RequestId;
use crate::route::{Route, RouteTable};
use crate::telemetry::{self, RouteMetrics};

/// Largest request head (request line + headers) a client may send, in bytes.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Shared by every proxy worker and the admin listener.
#[derive(Debug)]
pub struct AppState {
    pub(crate) routes: RouteTable,
    pub(crate) shutting_down: AtomicBool,
    limits: Limits,
    access: Access,
    /// One permit per request in flight; none left → `503 overloaded`.
    inflight: Arc<Semaphore>,
}

/// The two bound listeners.
#[derive(Debug)]
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `server.listen` and `server.admin_listen`.
    pub async fn bind(config: &Config) -> Result<Self, ServeError> {
        let bind = |addr: SocketAddr, key: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { key, addr, source })
        };
        Ok(Self {
            proxy: bind(config.server.listen, "server.listen").await?,
            admin: bind(config.server.admin_listen, "server.admin_listen").await?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{key} {addr}: cannot listen: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("cannot start a proxy worker: {0}")]
    Worker(std::io::Error),
}

impl ServeError {
    /// The configuration names something unusable (a keys file, a CA file): exit 2
    /// like any other configuration error.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            Self::Access(_) | Self::Client(ClientError::CaFile { .. })
        )
    }
}

/// Binds the listeners, serves until SIGTERM or SIGINT, drains, returns.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let listeners = Listeners::bind(&config).await?;
    serve(config, listeners, shutdown_signal()).await
}

/// Serves the proxy and admin listeners until `shutdown` resolves, then: readiness
/// turns 503 at once, the proxy listener closes, in-flight requests finish (up to
/// `shutdown_grace`), and the function returns.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    // Installed before the first request so that no early metric is lost.
    let _ = telemetry::metrics_handle();
    let _metrics_upkeep = telemetry::start_upkeep();
    let login_client = proxy::build_login_client(&config.upstream)?;
    let access = Access::new(&config.access)?;
    let routes = RouteTable::build(&config, &login_client);
    let state = Arc::new(AppState {
        routes,
        shutting_down: AtomicBool::new(false),
        limits: Limits::from_config(&config),
        access,
        inflight: Arc::new(Semaphore::new(config.server.max_concurrency)),
    });
    let _refreshers = state.routes.start();
    let _keys_watch = state.access.watch_keys_file();
    let admin_app = crate::admin::router(Arc::clone(&state));

    let (proxy_stage, proxy_stage_rx) = watch::channel(Stage::Serving);
    let (admin_stage, admin_stage_rx) = watch::channel(Stage::Serving);
    let header_read_timeout = config.server.header_read_timeout;
    let workers = worker_count();
    tracing::info!(
        proxy = %local_addr(&listeners.proxy),
        admin = %local_addr(&listeners.admin),
        routes = config.routes.len(),
        workers,
        "listening"
    );
    let proxy_listener = listeners.proxy.into_std().map_err(ServeError::Worker)?;
    let mut drained = Vec::with_capacity(workers);
    for index in 0..workers {
        let worker = Worker {
            app: Arc::clone(&state),
            client: proxy::build_client(&config.upstream)?,
        };
        let socket = proxy_listener.try_clone().map_err(ServeError::Worker)?;
        drained.push(worker.start(index, socket, proxy_stage_rx.clone(), header_read_timeout)?);
    }
    // Only the workers' copies remain: when they stop accepting, the port closes.
    drop(proxy_listener);
    let admin_task = tokio::spawn(accept_loop(
        listeners.admin,
        admin_app,
        admin_stage_rx,
        header_read_timeout,
    ));

    shutdown.await;
    let deadline = tokio::time::Instant::now() + config.server.shutdown_grace;
    state.shutting_down.store(true, Ordering::SeqCst);
    tracing::info!(
        grace_ms = config.server.shutdown_grace.as_millis() as u64,
        "shutting down: readiness is 503, draining in-flight requests"
    );
    // Draining: no new connections; open ones stay open, so that a request arriving
    // on one is answered `503 shutting_down` + `Connection: close` instead of meeting
    // a closed socket. It ends when every in-flight request has finished, which
    // taking every permit waits for.
    let _ = proxy_stage.send(Stage::Draining);
    let permits = u32::try_from(config.server.max_concurrency).unwrap_or(u32::MAX);
    let in_flight_done = Arc::clone(&state.inflight).acquire_many_owned(permits);
    let drained_in_time = tokio::time::timeout_at(deadline, in_flight_done)
        .await
        .is_ok();
    // Closing: idle connections close now, busy ones after their response.
    let _ = proxy_stage.send(Stage::Closing);
    let closed = futures_util::future::join_all(drained);
    let closed_in_time = tokio::time::timeout_at(deadline, closed).await.is_ok();
    if drained_in_time && closed_in_time {
        tracing::info!("drained");
    } else {
        tracing::warn!("shutdown_grace elapsed with requests still in flight");
    }
    let _ = admin_stage.send(Stage::Closing);
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
    Ok(())
}

/// Where a listener is in its life: shutdown goes `Serving` → `Draining` (no new
/// connections, open ones still answered) → `Closing` (connections close once idle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Serving,
    Draining,
    Closing,
}

/// One proxy worker per CPU the process may use (cgroup quotas included).
fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A proxy worker: its own thread with a single-threaded runtime, its own upstream
/// connection pool, and its own accept loop on the shared listening socket, like an
/// nginx worker process. A connection, its requests and their upstream connections
/// stay on one thread: no work stealing, no cross-thread wake-ups on the hot path.
/// Token state, limits and metrics are shared (atomics and `ArcSwap`).
struct Worker {
    app: Arc<AppState>,
    client: proxy::UpstreamClient,
}

impl Worker {
    /// Starts the worker's thread; the receiver resolves when it has drained.
    fn start(
        self,
        index: usize,
        socket: std::net::TcpListener,
        stage: watch::Receiver<Stage>,
        header_read_timeout: Duration,
    ) -> Result<oneshot::Receiver<()>, ServeError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServeError::Worker)?;
        // The proxy answers every path the same way: a plain service, no router.
        let worker = Arc::new(self);
        let app = tower::ServiceBuilder::new()
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
                header::PROXY_AUTHORIZATION,
            ]))
            .service(tower::service_fn(
                move |request: http::Request<Incoming>| {
                    let worker = Arc::clone(&worker);
                    async move { Ok::<_, Infallible>(handle(worker, request).await) }
                },
            ));
        let (drained, done) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("ipproxy-worker-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => {
                            accept_loop(listener, app, stage, header_read_timeout).await
                        }
                        Err(error) => tracing::error!(cause = %error, "worker cannot listen"),
                    }
                });
                let _ = drained.send(());
            })
            .map_err(ServeError::Worker)?;
        Ok(done)
    }
}

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |addr| addr.to_string())
}

/// Accepts connections until the stage is `Draining`; keeps serving the open ones
/// until it is `Closing`, then waits for them to finish their in-flight requests
/// (hyper closes idle keep-alive connections and sends `Connection: close` on the
/// last response of busy ones).
async fn accept_loop<S, B>(
    listener: TcpListener,
    app: S,
    mut stage: watch::Receiver<Stage>,
    header_read_timeout: Duration,
) where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_REQUEST_HEAD as u32);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
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
                let service = TowerToHyperService::new(app.clone());
                let builder = Arc::clone(&builder);
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    // Errors here are client-side (reset, malformed request): hyper
                    // already answered what it could.
                    let _ = watcher.watch(connection).await;
                });
            }
            () = reached(&mut stage, Stage::Draining) => break,
        }
    }
    drop(listener);
    reached(&mut stage, Stage::Closing).await;
    graceful.shutdown().await;
}

/// Resolves once `stage` is at `wanted` or later (or its sender is gone).
async fn reached(stage: &mut watch::Receiver<Stage>, wanted: Stage) {
    let _ = stage.wait_for(|stage| *stage >= wanted).await.map(|_| ());
}

/// What the proxy answers: an upstream response streamed through, or its own.
type ProxyResponse = http::Response<Either<Guarded, Body>>;

/// The proxy pipeline: request id → shutdown and load checks → access → route →
/// forward, then one log line and the request metrics.
async fn handle(worker: Arc<Worker>, request: http::Request<Incoming>) -> ProxyResponse {
    let started = Instant::now();
    let request_id = RequestId::from_headers(request.headers());
    let method = request.method().clone();
    // The log line names the path after the request has moved on; the copy is only
    // made when that line is written.
    let uri = tracing::enabled!(tracing::Level::INFO).then(|| request.uri().clone());
    let result = admit_and_forward(&worker, request, &request_id).await;
    let (response, route, retried) = match result {
        Ok((response, route, outcome)) => (response, Some(route), outcome.retried),
        Err((error, route)) => {
            let response = error.into_response_for(&request_id).map(Either::Right);
            (response, route, false)
        }
    };
    let status = response.status();
    let duration = started.elapsed();
    let metrics = match route {
        Some(route) => &route.metrics,
        None => RouteMetrics::unrouted(),
    };
    metrics.request_finished(&method, status, duration, retried);
    let route_label = route.map_or("-", |route| &*route.name);
    tracing::info!(
        request_id = request_id.as_str(),
        method = method.as_str(),
        route = route_label,
        path = uri.as_ref().map(Uri::path),
        status = status.as_u16(),
        duration_ms = duration.as_secs_f64() * 1000.0,
        retried,
        "request"
    );
    response
}

/// A request counted against `max_concurrency` and `ipproxy_inflight_requests`, from
/// admission until its response body has been sent (or dropped): a slow download
/// holds an upstream connection and memory just as a slow upstream does.
struct InFlight {
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    fn admit(state: &AppState) -> Option<Self> {
        let permit = Arc::clone(&state.inflight).try_acquire_owned().ok()?;
        telemetry::inflight(1.0);
        Some(Self { _permit: permit })
    }

    /// Moves the count into `response`'s body, released when the body is done.
    fn hold_until_sent(self, response: http::Response<Incoming>) -> ProxyResponse {
        response.map(|body| {
            Either::Left(Guarded {
                body,
                _in_flight: self,
            })
        })
    }
}

/// An upstream response body holding its request's [`InFlight`] count.
struct Guarded {
    body: Incoming,
    _in_flight: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        telemetry::inflight(-1.0);
    }
}

type Admitted<'a> = (ProxyResponse, &'a Route, proxy::Outcome);

async fn admit_and_forward<'a>(
    worker: &'a Worker,
    request: http::Request<Incoming>,
    request_id: &RequestId,
) -> Result<Admitted<'a>, (ProxyError, Option<&'a Route>)> {
    let state = worker.app.as_ref();
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err((ProxyError::ShuttingDown, None));
    }
    // The key first: a caller without one learns nothing about paths or load.
    state
        .access
        .check_key(request.headers())
        .map_err(|error| (error, None))?;
    let Some(in_flight) = InFlight::admit(state) else {
        return Err((ProxyError::Overloaded, None));
    };
    let path = request.uri().path();
    access::check_path(path).map_err(|error| (error, None))?;
    state
        .access
        .check_allowed(request.method(), path)
        .map_err(|error| (error, None))?;
    let route = state.routes.find(path).ok_or((ProxyError::NoRoute, None))?;
    match proxy::forward(&worker.client, &state.limits, route, request, request_id).await {
        Ok((response, outcome)) => Ok((in_flight.hold_until_sent(response), route, outcome)),
        Err(error) => Err((error, Some(route))),
    }
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits the process at once.
///
/// The signal streams are created once, before the first wait, and kept for the
/// second: a second signal that arrives before the task watching for it first runs is
/// still seen.
pub async fn shutdown_signal() {
    let mut signals = Signals::new();
    signals.recv().await;
    tokio::spawn(async move {
        signals.recv().await;
        tracing::warn!("second signal: exiting now");
        telemetry::exit_now(130);
    });
}

/// SIGTERM and SIGINT (only Ctrl-C off Unix).
struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                terminate: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(self.terminate.as_mut()) => {}
                () = next(self.interrupt.as_mut()) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
