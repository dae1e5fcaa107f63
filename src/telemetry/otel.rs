//! OpenTelemetry export (feature `otel`): the SDK's batch span processor behind a
//! bounded, counted queue, the OTLP/HTTP (protobuf) exporter on hyper, and the
//! `tracing-opentelemetry` layer that turns [`super::trace`]'s spans into exported ones.
//!
//! Export never touches a request: a finished span is handed to a bounded queue
//! without blocking (a full queue drops it, counted); a background thread batches
//! the queue to the collector; the HTTP requests run on a runtime of their own, so a
//! slow or down collector slows nothing but that thread. The collector is reached
//! directly (never through the egress proxy), with TLS verified against the standard
//! web roots for `https://`.
//!
//! Must not: put anything in a span that [`super::trace`] did not choose; read the
//! process environment (the configuration did, from its list of variables).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use hyper_rustls::HttpsConnectorBuilder;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter, SpanProcessor,
};
use tokio::runtime::Handle;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::config::TracingConfig;

/// Finished spans that may wait for export. Beyond it a span is dropped (and counted)
/// instead of waiting: about 2 MiB of spans, a few seconds of heavy traffic while the
/// collector is slow.
pub(super) const MAX_QUEUED_SPANS: usize = 2048;
/// Spans per OTLP request; a full batch is sent at once, without waiting for
/// [`EXPORT_INTERVAL`].
const MAX_EXPORT_BATCH: usize = 512;
/// How often a partial batch is sent: spans reach the collector within about this.
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// One OTLP request, connection included. A collector slower than this loses the
/// batch (counted), and the queue fills meanwhile instead of anything waiting.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// At shutdown, after the drain: how long the last spans may take to reach the
/// collector before the process exits without them.
pub(super) const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
/// After a failed export, batches are dropped (counted) without being encoded or sent
/// for this long: a collector that is down costs one connection attempt a second, not
/// the encoding of every span. Also the most spans lost after it comes back.
const COLLECTOR_RETRY: Duration = Duration::from_secs(1);
/// How long the exporter's runtime may take to stop once the flush has returned.
const RUNTIME_STOP: Duration = Duration::from_millis(100);

/// Set once the exporter and its layer are installed as the global subscriber.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// See [`super::trace::enabled`].
#[inline]
pub(super) fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

pub(super) fn mark_installed() {
    INSTALLED.store(true, Ordering::Relaxed);
}

/// The running export: flushed (bounded by [`SHUTDOWN_FLUSH`]) and stopped by
/// [`Exporting::shutdown`].
#[derive(Debug)]
pub(super) struct Exporting {
    provider: SdkTracerProvider,
    runtime: tokio::runtime::Runtime,
}

impl Exporting {
    /// Sends what is still queued, waiting at most [`SHUTDOWN_FLUSH`], then stops.
    /// Blocks: call it off any async runtime (at the end of `main`).
    pub(super) fn shutdown(self) {
        if let Err(error) = self.provider.shutdown_with_timeout(SHUTDOWN_FLUSH) {
            tracing::warn!(cause = %error, "spans still queued at exit were not all exported");
        }
        self.runtime.shutdown_timeout(RUNTIME_STOP);
    }
}

/// Builds the exporter for `config` (which has an endpoint) and the tracer the layer
/// uses. Nothing is sent until a span ends.
pub(super) fn start(config: &TracingConfig) -> Result<(Exporting, SdkTracer), String> {
    let endpoint = config
        .otlp_endpoint
        .as_ref()
        .ok_or("no tracing.otlp_endpoint")?;
    // The drop counter records into the Prometheus recorder: install it first.
    let _ = super::metrics_handle();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ipproxy-otlp")
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the exporter's runtime: {error}"))?;
    let client = {
        let _inside = runtime.enter();
        HyperClient::new(collector_connector()?, EXPORT_TIMEOUT, None)
    };
    let otlp = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.traces_url())
        .with_timeout(EXPORT_TIMEOUT)
        // A failed batch is counted as dropped at once; retrying would only hold the
        // queue longer behind a collector that is down.
        .with_retry_policy(RetryPolicy::disabled())
        .build()
        .map_err(|error| format!("cannot build the OTLP exporter: {error}"))?;
    let queue = Arc::new(Queue::default());
    let exporter = CountingExporter {
        inner: Arc::new(otlp),
        runtime: runtime.handle().clone(),
        queue: Arc::clone(&queue),
        collector: endpoint.to_string(),
        reachable: Arc::new(AtomicBool::new(true)),
        retry_at: Arc::new(Mutex::new(None)),
    };
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUED_SPANS)
                .with_max_export_batch_size(MAX_EXPORT_BATCH)
                .with_scheduled_delay(EXPORT_INTERVAL)
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BoundedProcessor {
            inner: batches,
            queue,
        })
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(
            Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    let tracer = provider.tracer("ipproxy");
    Ok((Exporting { provider, runtime }, tracer))
}

/// HTTP/1.1 to the collector, plain or TLS (verified, standard web roots, ring as
/// everywhere else), never through the egress proxy.
fn collector_connector()
-> Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, String>
{
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS for the collector: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build())
}

/// Continues the trace of a client's valid `traceparent`/`tracestate` in `span`.
pub(super) fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Replaces `traceparent`/`tracestate` in `headers` with `span`'s context.
pub(super) fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    headers.remove("traceparent");
    headers.remove("tracestate");
    let context: Context = span.context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// `span`'s trace id, when it has a valid one.
pub(super) fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Spans handed to the batch processor and not yet taken for export. Kept here
/// because the SDK keeps its own count of queue-full drops to itself: admitting at
/// most [`MAX_QUEUED_SPANS`] (the SDK queue's own bound) means the SDK never drops
/// one, and every drop is counted here.
#[derive(Debug, Default)]
struct Queue {
    waiting: AtomicUsize,
}

impl Queue {
    /// Takes a place for one span; false when the queue is full.
    fn admit(&self) -> bool {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < MAX_QUEUED_SPANS).then_some(waiting + 1)
            })
            .is_ok()
    }

    /// `count` spans left the queue for an export.
    fn taken(&self, count: usize) {
        let _ = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                Some(waiting.saturating_sub(count))
            });
    }
}

/// The SDK's batch processor behind [`Queue`]: a span that finds the queue full is
/// dropped and counted (`ipproxy_trace_spans_dropped_total{reason="queue_full"}`);
/// nothing ever waits.
#[derive(Debug)]
struct BoundedProcessor<P> {
    inner: P,
    queue: Arc<Queue>,
}

impl<P: SpanProcessor> SpanProcessor for BoundedProcessor<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queue.admit() {
            self.inner.on_end(span);
        } else {
            super::trace_spans_dropped("queue_full", 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, run on the exporter's own runtime, counting what it sends and
/// what it loses (`reason="export_failed"`), and logging once when the collector
/// stops answering and once when it answers again.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: Arc<E>,
    runtime: Handle,
    queue: Arc<Queue>,
    /// The base URL, for the two log lines.
    collector: String,
    reachable: Arc<AtomicBool>,
    /// Set after a failed export: until then batches are dropped unsent.
    retry_at: Arc<Mutex<Option<Instant>>>,
}

impl<E> CountingExporter<E> {
    /// True while a recent failure says the collector is down.
    fn holding_off(&self) -> bool {
        let retry_at = *self
            .retry_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        retry_at.is_some_and(|at| Instant::now() < at)
    }
}

impl<E: SpanExporter + 'static> SpanExporter for CountingExporter<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let count = batch.len();
        self.queue.taken(count);
        let sent = (!self.holding_off()).then(|| {
            let inner = Arc::clone(&self.inner);
            self.runtime.spawn(async move { inner.export(batch).await })
        });
        let reachable = Arc::clone(&self.reachable);
        let retry_at = Arc::clone(&self.retry_at);
        let collector = self.collector.clone();
        async move {
            let Some(sent) = sent else {
                super::trace_spans_dropped("export_failed", count);
                return Err(OTelSdkError::InternalFailure(
                    "the collector failed the last export: holding off".to_owned(),
                ));
            };
            let result = sent.await.unwrap_or_else(|error| {
                Err(OTelSdkError::InternalFailure(format!(
                    "the export task ended: {error}"
                )))
            });
            *retry_at
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                result.is_err().then(|| Instant::now() + COLLECTOR_RETRY);
            match &result {
                Ok(()) => {
                    super::trace_spans_exported(count);
                    if !reachable.swap(true, Ordering::AcqRel) {
                        tracing::info!(collector, "trace collector reachable again");
                    }
                }
                Err(error) => {
                    super::trace_spans_dropped("export_failed", count);
                    if reachable.swap(false, Ordering::AcqRel) {
                        tracing::warn!(
                            collector,
                            cause = %error,
                            "trace collector unreachable: spans are dropped (counted in \
                             ipproxy_trace_spans_dropped_total) until it answers"
                        );
                    }
                }
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once, when the provider is built, before any export holds a clone.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _};

    /// An exporter that records batch sizes and can be told to fail.
    #[derive(Debug, Default)]
    struct Recording {
        batches: Mutex<Vec<usize>>,
        fail: AtomicBool,
    }

    impl SpanExporter for Recording {
        fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
            self.batches.lock().expect("batches").push(batch.len());
            let fail = self.fail.load(Ordering::Relaxed);
            async move {
                if fail {
                    Err(OTelSdkError::InternalFailure("down".to_owned()))
                } else {
                    Ok(())
                }
            }
        }
    }

    #[test]
    fn the_queue_admits_up_to_its_bound_and_frees_what_export_takes() {
        let queue = Queue::default();
        for _ in 0..MAX_QUEUED_SPANS {
            assert!(queue.admit());
        }
        assert!(!queue.admit(), "full");
        queue.taken(10);
        for _ in 0..10 {
            assert!(queue.admit());
        }
        assert!(!queue.admit());
        queue.taken(usize::MAX);
        assert!(queue.admit(), "never below zero");
    }

    #[test]
    fn a_full_queue_drops_spans_without_waiting_and_counts_them() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            /// Never takes anything from the queue: a collector that is stuck.
            #[derive(Debug)]
            struct Stuck;
            impl SpanProcessor for Stuck {
                fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
                fn on_end(&self, _: SpanData) {}
                fn force_flush(&self) -> OTelSdkResult {
                    Ok(())
                }
                fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
                    Ok(())
                }
            }
            let provider = SdkTracerProvider::builder()
                .with_span_processor(BoundedProcessor {
                    inner: Stuck,
                    queue: Arc::new(Queue::default()),
                })
                .build();
            let tracer = provider.tracer("test");
            let started = std::time::Instant::now();
            for _ in 0..MAX_QUEUED_SPANS + 7 {
                tracer.start("span").end();
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no waiting");
        });
        let text = handle.render();
        assert!(
            text.contains(r#"ipproxy_trace_spans_dropped_total{reason="queue_full"} 7"#),
            "{text}"
        );
    }

    #[test]
    fn a_failed_export_counts_its_spans_as_dropped_holds_off_and_frees_the_queue() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let queue = Arc::new(Queue::default());
        let inner = Arc::new(Recording::default());
        let exporter = CountingExporter {
            inner: Arc::clone(&inner),
            runtime: runtime.handle().clone(),
            queue: Arc::clone(&queue),
            collector: "http://127.0.0.1:9".to_owned(),
            reachable: Arc::new(AtomicBool::new(true)),
            retry_at: Arc::new(Mutex::new(None)),
        };
        let batch = |count: usize| {
            (0..count)
                .map(|_| {
                    assert!(queue.admit());
                    span_data()
                })
                .collect::<Vec<_>>()
        };
        metrics::with_local_recorder(&recorder, || {
            inner.fail.store(true, Ordering::Relaxed);
            assert!(block_on(exporter.export(batch(3))).is_err());
            inner.fail.store(false, Ordering::Relaxed);
            // The failure set a hold-off; push it an hour out so that a busy machine
            // cannot let COLLECTOR_RETRY pass before the next export.
            {
                let mut retry_at = exporter.retry_at.lock().expect("retry_at");
                assert!(retry_at.is_some(), "a failed export holds off");
                *retry_at = retry_at.map(|at| at + Duration::from_secs(3600));
            }
            // Within the hold-off after a failure: dropped without being sent.
            assert!(block_on(exporter.export(batch(4))).is_err());
            *exporter.retry_at.lock().expect("retry_at") = None;
            assert!(block_on(exporter.export(batch(2))).is_ok());
        });
        assert_eq!(
            *inner.batches.lock().expect("batches"),
            [3, 2],
            "the 4 were never sent"
        );
        assert_eq!(queue.waiting.load(Ordering::Relaxed), 0);
        let text = handle.render();
        assert!(
            text.contains(r#"ipproxy_trace_spans_dropped_total{reason="export_failed"} 7"#),
            "{text}"
        );
        assert!(
            text.contains("ipproxy_trace_spans_exported_total 2"),
            "{text}"
        );
    }

    /// A minimal finished span.
    fn span_data() -> SpanData {
        SpanData {
            span_context: opentelemetry::trace::SpanContext::empty_context(),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: opentelemetry::trace::SpanKind::Internal,
            name: "span".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: opentelemetry_sdk::trace::SpanEvents::default(),
            links: opentelemetry_sdk::trace::SpanLinks::default(),
            status: opentelemetry::trace::Status::Unset,
            instrumentation_scope: opentelemetry::InstrumentationScope::default(),
        }
    }

    /// Polls `future` to completion on a thread with no runtime of its own, as the
    /// SDK's batch thread does.
    fn block_on<F: Future>(future: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(future)
    }
}
