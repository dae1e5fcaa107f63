//! Signals and the stages of a shutdown.
//!
//! SIGHUP re-reads the secret files (see `reload`). SIGTERM or SIGINT starts the
//! drain; a second one exits at once. The drain has two
//! stages (see [`Stage`]): open connections keep being answered (`503 shutting_down`
//! with `Connection: close`) until nothing is in flight, then they close. The
//! [`ShutdownFlag`] is what readiness and the pipeline read; [`Stages::drain`] runs the
//! sequence.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::telemetry;

/// Set once, when shutdown starts: readiness turns 503 and new requests are refused.
#[derive(Debug, Clone, Default)]
pub struct ShutdownFlag(Arc<AtomicBool>);

impl ShutdownFlag {
    /// Marks the process as shutting down.
    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once shutdown has started.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where a listener is in its life: shutdown goes `Serving` → `Draining` (no new
/// connections, open ones still answered) → `Closing` (connections close once idle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Serving,
    Draining,
    Closing,
}

/// How long the admin listener may take to close once the proxy has drained.
const ADMIN_CLOSE: Duration = Duration::from_secs(1);

/// The stages of the two listeners, set by the drain.
#[derive(Debug)]
pub struct Stages {
    proxy: watch::Sender<Stage>,
    admin: watch::Sender<Stage>,
}

impl Stages {
    /// Both listeners `Serving`; the receivers go to the proxy's workers and to the
    /// admin listener.
    pub fn new() -> (Self, watch::Receiver<Stage>, watch::Receiver<Stage>) {
        let (proxy, proxy_stage) = watch::channel(Stage::Serving);
        let (admin, admin_stage) = watch::channel(Stage::Serving);
        (Self { proxy, admin }, proxy_stage, admin_stage)
    }

    /// The drain: readiness turns 503 at once (`flag`); the proxy listener stops
    /// accepting while open connections stay open, so a request arriving on one is
    /// answered `503 shutting_down` + `Connection: close` instead of meeting a closed
    /// socket; once nothing is in flight (`in_flight_done`), connections close (idle
    /// ones at once, busy ones after their response) until `workers_closed`; then the
    /// admin listener closes. The proxy's stages share one `grace` deadline.
    pub async fn drain(
        self,
        flag: &ShutdownFlag,
        grace: Duration,
        in_flight_done: impl Future<Output = ()>,
        workers_closed: impl Future,
        admin_closed: impl Future,
    ) {
        let deadline = tokio::time::Instant::now() + grace;
        flag.start();
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutting down: readiness is 503, draining in-flight requests"
        );
        let _ = self.proxy.send(Stage::Draining);
        let drained_in_time = tokio::time::timeout_at(deadline, in_flight_done)
            .await
            .is_ok();
        let _ = self.proxy.send(Stage::Closing);
        let closed_in_time = tokio::time::timeout_at(deadline, workers_closed)
            .await
            .is_ok();
        if drained_in_time && closed_in_time {
            tracing::info!("drained");
        } else {
            tracing::warn!("shutdown_grace elapsed with requests still in flight");
        }
        let _ = self.admin.send(Stage::Closing);
        let _ = tokio::time::timeout(ADMIN_CLOSE, admin_closed).await;
    }
}

/// Resolves once `stage` is at `wanted` or later (or its sender is gone).
pub async fn reached(stage: &mut watch::Receiver<Stage>, wanted: Stage) {
    let _ = stage.wait_for(|stage| *stage >= wanted).await.map(|_| ());
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

/// Runs `reload` on every `SIGHUP` (never on other platforms), until dropped.
pub async fn on_sighup(reload: impl Fn() + Send + 'static) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!(
                "cannot listen for SIGHUP: secret files are re-read only when they change"
            );
            return;
        };
        while hangups.recv().await.is_some() {
            reload();
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        std::future::pending::<()>().await;
    }
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
