//! Listeners, worker runtimes and the accept loop; [`serve`] wires the parts together
//! and runs the shutdown stages.
//!
//! [`serve`] takes bound listeners and a shutdown future, so tests bind `127.0.0.1:0`
//! and run everything in process; [`run`] adds what a process needs (binding, signals).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
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

use crate::access::{Access, AccessError};
use crate::config::Config;
use crate::connection::{ClientBody, ClientLimits, ConnectionWatch, Verdict, WatchedBody};
use crate::proxy::{self, ClientError, Limits, Pipeline};
use crate::reload::Reloader;
use crate::route::RouteTable;
use crate::shutdown::{self, ShutdownFlag, Stage, reached};
use crate::task::BackgroundTask;
use crate::telemetry;
use crate::token::Registry;
use crate::token::store::{Store, StoreConfigError};

/// Largest request head (request line + headers) a client may send, in bytes.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Streams an HTTP/2 client may have open at once on one connection: the least RFC
/// 9113 advises, and what each connection can cost in slots and buffers.
const MAX_H2_STREAMS: u32 = 100;

/// How long a connection closed for idling may take to say goodbye (HTTP/2 GOAWAY, an
/// HTTP/1 head already under way) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

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
    #[error(transparent)]
    Store(#[from] StoreConfigError),
}

impl ServeError {
    /// The configuration names something unusable (a keys file, a CA file): exit 2
    /// like any other configuration error.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            Self::Access(_) | Self::Client(ClientError::CaFile { .. }) | Self::Store(_)
        )
    }
}

/// Binds the listeners, serves until SIGTERM or SIGINT, drains, returns.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let listeners = Listeners::bind(&config).await?;
    serve(config, listeners, shutdown::shutdown_signal()).await
}

/// Serves the proxy and admin listeners until `shutdown` resolves, then: readiness
/// turns 503 at once, the proxy listener closes, in-flight requests finish (up to
/// `shutdown_grace`), and the function returns.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    for warning in &config.warnings {
        tracing::warn!(key = warning.key, "configuration: {}", warning.message);
    }
    // Installed before the first request so that no early metric is lost.
    let metrics = telemetry::metrics_handle();
    let _metrics_upkeep = telemetry::start_upkeep();
    let login = proxy::build_login_client(&config.upstream)?;
    let store = Store::from_config(&config.store)?;
    let _store_probe = store.start_probe();
    let (credentials, route_tokens) = Registry::build(&config, &login, &store);
    let flag = ShutdownFlag::default();
    let pipeline = Arc::new(Pipeline::new(
        RouteTable::build(&config, route_tokens),
        Access::new(&config.access)?,
        Limits::from_config(&config),
        config.server.max_concurrency,
        flag.clone(),
        crate::idempotency::Idempotency::new(
            &config.idempotency,
            config.server.request_timeout,
            &store,
        ),
    ));
    let _refreshers = credentials.start();
    let reloader = Reloader::new(
        &config,
        credentials.clone(),
        pipeline.access().keys().cloned(),
        store.clone(),
    );
    let _file_watch = reloader.watch_files();
    let _sighup = BackgroundTask::spawn(shutdown::on_sighup(move || reloader.reload_all()));
    let admin_app = crate::admin::router(crate::admin::Handles {
        credentials,
        store,
        shutdown: flag.clone(),
        metrics,
    });

    let (proxy_stage, proxy_stage_rx) = watch::channel(Stage::Serving);
    let (admin_stage, admin_stage_rx) = watch::channel(Stage::Serving);
    let limits = ClientLimits {
        header_read_timeout: config.server.header_read_timeout,
        client_timeout: config.server.client_timeout,
    };
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
            pipeline: Arc::clone(&pipeline),
            client: proxy::build_client(&config.upstream)?,
        };
        let socket = proxy_listener.try_clone().map_err(ServeError::Worker)?;
        drained.push(worker.start(index, socket, proxy_stage_rx.clone(), limits)?);
    }
    // Only the workers' copies remain: when they stop accepting, the port closes.
    drop(proxy_listener);
    let admin_task = tokio::spawn(accept_loop(
        listeners.admin,
        admin_app,
        admin_stage_rx,
        limits,
    ));

    shutdown.await;
    let deadline = tokio::time::Instant::now() + config.server.shutdown_grace;
    flag.start();
    tracing::info!(
        grace_ms = config.server.shutdown_grace.as_millis() as u64,
        "shutting down: readiness is 503, draining in-flight requests"
    );
    // Draining: no new connections; open ones stay open, so that a request arriving
    // on one is answered `503 shutting_down` + `Connection: close` instead of meeting
    // a closed socket. It ends when every in-flight request has finished, which
    // taking every permit waits for.
    let _ = proxy_stage.send(Stage::Draining);
    let drained_in_time = tokio::time::timeout_at(deadline, pipeline.idle())
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
    pipeline: Arc<Pipeline>,
    client: proxy::UpstreamClient,
}

impl Worker {
    /// Starts the worker's thread; the receiver resolves when it has drained.
    fn start(
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
            async move { Ok::<_, Infallible>(worker.pipeline.handle(&worker.client, request).await) }
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

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |addr| addr.to_string())
}

/// Accepts connections until the stage is `Draining`; keeps serving the open ones
/// until it is `Closing`, then closes each gracefully (hyper closes idle keep-alive
/// connections and sends `Connection: close` on the last response of busy ones) and
/// waits for them to finish.
async fn accept_loop<S, B>(
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
        // Also enforced from accept by the connection watch; hyper's own timer runs
        // from the first read of each head and answers `408` when it fires first.
        .header_read_timeout(limits.header_read_timeout)
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
                    Verdict::Fine => closing_idle = None,
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
