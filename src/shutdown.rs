//! Signals and the stages of a shutdown.
//!
//! SIGHUP re-reads the secret files (see `reload`). SIGTERM or SIGINT starts the
//! drain; a second one exits at once. The drain has two
//! stages (see [`Stage`]): open connections keep being answered (`503 shutting_down`
//! with `Connection: close`) until nothing is in flight, then they close. The
//! [`ShutdownFlag`] is what readiness and the pipeline read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
