//! The server: [`serve`] wires the parts together, starts the workers and the admin
//! listener, and hands the shutdown to [`shutdown::Stages::drain`].
//!
//! - `worker`: a proxy worker's thread, runtime and accept loop, and the loop that
//!   serves one accepted connection under [`crate::inbound`]'s bounds.
//!
//! [`serve`] takes bound listeners and a shutdown future, so tests bind `127.0.0.1:0`
//! and run everything in process; [`run`] adds what a process needs (binding, signals).

mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::access::{Access, AccessError};
use crate::config::Config;
use crate::inbound::ClientLimits;
use crate::pipeline::Pipeline;
use crate::proxy::{self, ClientError, Limits};
use crate::reload::Reloader;
use crate::route::RouteTable;
use crate::shutdown::{self, ShutdownFlag};
use crate::task::BackgroundTask;
use crate::telemetry;
use crate::token::Registry;
use crate::token::store::{Store, StoreConfigError};
use worker::{Worker, accept_loop, worker_count};

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
                .map_err(|cause| ServeError::Bind { key, addr, cause })
        };
        Ok(Self {
            proxy: bind(config.server.listen, "server.listen").await?,
            admin: bind(config.server.admin_listen, "server.admin_listen").await?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The cause is in the message, not a `source()`: an error chain would say it twice.
    #[error("{key} {addr}: cannot listen: {cause}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        cause: std::io::Error,
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

/// Serves the proxy and admin listeners until `shutdown` resolves, then drains (see
/// [`shutdown::Stages::drain`]) and returns.
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
        // The address actually bound (a test binds port 0 elsewhere than the config).
        Access::new(&config.access)?
            .listening_on(listeners.proxy.local_addr().unwrap_or(config.server.listen)),
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

    let (stages, proxy_stage, admin_stage) = shutdown::Stages::new();
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
        drained.push(worker.start(index, socket, proxy_stage.clone(), limits)?);
    }
    // Only the workers' copies remain: when they stop accepting, the port closes.
    drop(proxy_listener);
    let admin_task = tokio::spawn(accept_loop(listeners.admin, admin_app, admin_stage, limits));

    shutdown.await;
    stages
        .drain(
            &flag,
            config.server.shutdown_grace,
            pipeline.idle(),
            futures_util::future::join_all(drained),
            admin_task,
        )
        .await;
    Ok(())
}

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |addr| addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::ServeError;

    /// Exit 2 is for what the configuration names; a port in use or a worker that
    /// cannot start is the machine's trouble (exit 1), which `tests/operations.rs`
    /// does not provoke.
    #[test]
    fn only_what_the_configuration_names_is_a_configuration_error() {
        let bind = ServeError::Bind {
            key: "server.listen",
            addr: ([127, 0, 0, 1], 8080).into(),
            cause: std::io::ErrorKind::AddrInUse.into(),
        };
        assert!(!bind.is_configuration());
        let worker = ServeError::Worker(std::io::Error::other("no thread"));
        assert!(!worker.is_configuration());
    }
}
