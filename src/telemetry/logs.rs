//! Log lines: the `tracing` subscriber (JSON or text) writing to stdout from a writer
//! thread, and, when `[tracing]` names a collector, the OpenTelemetry layer beside it.

use std::io::{BufWriter, IsTerminal as _};
use std::sync::Mutex;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

#[cfg(feature = "otel")]
use super::otel;
#[cfg(feature = "otel")]
use super::trace;
use crate::config::{LogConfig, LogFormat, TracingConfig};

/// Log lines that may wait in memory for the writer thread (~2 MiB of request
/// lines); beyond this, loggers wait (no line is dropped).
const LOG_BUFFER_LINES: usize = 8 * 1024;

/// The log writer thread of the installed subscriber; dropping it writes out what is
/// still buffered. Global so that [`exit_now`] can flush too.
static LOG_WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Writes out buffered log lines when dropped (at the end of `main`).
#[must_use = "dropping the guard flushes and stops the log writer"]
#[derive(Debug)]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush_logs();
    }
}

fn flush_logs() {
    let writer = LOG_WRITER.lock().map(|mut writer| writer.take());
    drop(writer);
}

/// Exits the process at once with `code`, after writing out buffered log lines.
pub fn exit_now(code: i32) -> ! {
    flush_logs();
    std::process::exit(code)
}

/// Installs the global `tracing` subscriber. `RUST_LOG`, when set, overrides the
/// configured level. Logs go to stdout from a writer thread, in batches: a request
/// worker formats its line and goes on, instead of making one `write(2)` per line.
pub fn init_logging(config: &LogConfig) -> LogGuard {
    let (lines, guard) = log_lines(config);
    let installed = tracing_subscriber::registry()
        .with(lines.with_filter(log_filter(config)))
        .try_init();
    // Already installed (several servers in one test process): keep the first, and
    // its writer.
    if installed.is_ok() {
        keep_writer(guard);
    }
    LogGuard(())
}

/// The log line layer in `config.format`, and its writer thread.
fn log_lines(config: &LogConfig) -> (Box<dyn Layer<Registry> + Send + Sync>, WorkerGuard) {
    let (writer, guard) = log_writer();
    let ansi = std::io::stdout().is_terminal();
    let lines = match config.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .boxed(),
    };
    (lines, guard)
}

/// The installed subscriber's writer thread, flushed at exit.
fn keep_writer(guard: WorkerGuard) {
    if let Ok(mut writer) = LOG_WRITER.lock() {
        *writer = Some(guard);
    }
}

/// The level filter of the log lines: `RUST_LOG` when set, else `log.level`.
fn log_filter(config: &LogConfig) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Stdout behind the log writer thread.
fn log_writer() -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("ipproxy-log")
        .finish(BufWriter::new(std::io::stdout()))
}

/// Logs, and traces when `[tracing]` names a collector. Dropping the guard (at the
/// end of `main`, after the drain) sends the spans still queued, within a bound,
/// then writes out the buffered log lines.
#[must_use = "dropping the guard flushes spans and logs"]
#[derive(Debug)]
pub struct TelemetryGuard {
    #[cfg(feature = "otel")]
    spans: Option<otel::Exporting>,
    _logs: LogGuard,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(spans) = self.spans.take() {
            spans.shutdown();
        }
    }
}

/// Installs the global subscriber for `ipproxy run`: [`init_logging`]'s alone when
/// tracing is off (the hot path is then what it was before tracing existed), else the
/// same log lines plus the OpenTelemetry layer, which sees only [`trace::TARGET`]'s
/// spans (and the log layer never sees those).
pub fn init(log: &LogConfig, tracing: &TracingConfig) -> TelemetryGuard {
    if !tracing.is_on() {
        return TelemetryGuard {
            #[cfg(feature = "otel")]
            spans: None,
            _logs: init_logging(log),
        };
    }
    #[cfg(feature = "otel")]
    {
        init_with_traces(log, tracing)
    }
    #[cfg(not(feature = "otel"))]
    {
        let logs = init_logging(log);
        ::tracing::warn!(
            key = "tracing.otlp_endpoint",
            "this build has no tracing (built without the \"otel\" feature): no spans are exported"
        );
        TelemetryGuard { _logs: logs }
    }
}

#[cfg(feature = "otel")]
fn init_with_traces(log: &LogConfig, tracing: &TracingConfig) -> TelemetryGuard {
    use tracing_subscriber::filter::{FilterExt as _, filter_fn};

    let (exporting, tracer) = match otel::start(tracing) {
        Ok(started) => started,
        Err(error) => {
            let logs = init_logging(log);
            ::tracing::error!(cause = %error, "tracing is off: the exporter cannot start");
            return TelemetryGuard {
                spans: None,
                _logs: logs,
            };
        }
    };
    let (lines, guard) = log_lines(log);
    // The log lines never show the trace spans (a text line would otherwise carry
    // their fields), and the spans never take events (a log line is not a span event).
    let not_a_trace_span = filter_fn(|meta| !(meta.is_span() && meta.target() == trace::TARGET));
    let only_trace_spans = filter_fn(|meta| meta.is_span() && meta.target() == trace::TARGET);
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false);
    let installed = tracing_subscriber::registry()
        .with(lines.with_filter(log_filter(log).and(not_a_trace_span)))
        .with(spans.with_filter(only_trace_spans))
        .try_init();
    if installed.is_err() {
        // Another subscriber came first (several servers in one test process): it
        // stays, without traces.
        exporting.shutdown();
        return TelemetryGuard {
            spans: None,
            _logs: LogGuard(()),
        };
    }
    keep_writer(guard);
    otel::mark_installed();
    TelemetryGuard {
        spans: Some(exporting),
        _logs: LogGuard(()),
    }
}
