//! Trace collectors for the tests: an OTLP/HTTP receiver on `127.0.0.1:0` that decodes
//! every `ExportTraceServiceRequest` with the OpenTelemetry protobuf messages (the
//! real wire format, not a stand-in), and a black hole that takes connections and
//! never answers (a collector that hangs).

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message as _;
use tokio::sync::{oneshot, watch};

/// One received span, flattened: ids in hex, attribute values as text.
#[derive(Debug, Clone)]
pub(crate) struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP's `SpanKind`: 2 server, 3 client, 1 internal.
    pub kind: i32,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub attributes: BTreeMap<String, String>,
    /// `service.name` of the resource the span came with.
    pub service_name: String,
}

impl ReceivedSpan {
    pub(crate) fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

pub(crate) const SPAN_KIND_INTERNAL: i32 = 1;
pub(crate) const SPAN_KIND_SERVER: i32 = 2;
pub(crate) const SPAN_KIND_CLIENT: i32 = 3;
pub(crate) const STATUS_ERROR: i32 = 2;

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    /// Every request as decoded, for a scan of everything that was sent.
    requests: Vec<ExportTraceServiceRequest>,
}

/// A running OTLP/HTTP receiver.
pub(crate) struct Receiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    /// Counts decoded requests; waiters watch it.
    batches: watch::Receiver<u64>,
    _stop: oneshot::Sender<()>,
}

impl Receiver {
    pub(crate) async fn start() -> Self {
        let received = Arc::new(Mutex::new(Received::default()));
        let (count, batches) = watch::channel(0u64);
        let store = Arc::clone(&received);
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let store = Arc::clone(&store);
                let count = count.clone();
                async move {
                    let protobuf = headers
                        .get("content-type")
                        .is_some_and(|value| value == "application/x-protobuf");
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return (StatusCode::BAD_REQUEST, Vec::new());
                    };
                    if !protobuf {
                        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
                    }
                    {
                        let mut received = store.lock().expect("received");
                        received.spans.extend(flatten(&request));
                        received.requests.push(request);
                    }
                    count.send_modify(|count| *count += 1);
                    (
                        StatusCode::OK,
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let (addr, stop) = super::serve_app(app).await;
        Self {
            addr,
            received,
            batches,
            _stop: stop,
        }
    }

    /// The base URL for `[tracing] otlp_endpoint`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().expect("received").spans.clone()
    }

    /// Every decoded request, as text (names, attributes, resources, everything).
    pub(crate) fn everything_received(&self) -> String {
        format!("{:?}", self.received.lock().expect("received").requests)
    }

    /// Waits until `done` holds for the spans received so far, at most `limit`, as
    /// each batch arrives; panics with what arrived when it does not.
    pub(crate) async fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut batches = self.batches.clone();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            match tokio::time::timeout_at(deadline, batches.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!("the spans awaited did not arrive within {limit:?}: {spans:#?}"),
            }
        }
    }
}

/// A collector that accepts connections and never answers: exports hang until the
/// exporter's timeout.
pub(crate) struct BlackHole {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl BlackHole {
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind black hole");
        let addr = listener.local_addr().expect("addr");
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => held.push(stream),
                        Err(_) => break,
                    },
                    _ = &mut stopped => break,
                }
            }
        });
        Self { addr, _stop: stop }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn flatten(request: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in &request.resource_spans {
        let service_name = resource_spans
            .resource
            .as_ref()
            .and_then(|resource| {
                resource
                    .attributes
                    .iter()
                    .find(|attribute| attribute.key == "service.name")
            })
            .map(|attribute| text(attribute.value.as_ref()))
            .unwrap_or_default();
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                spans.push(ReceivedSpan {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    status: span.status.as_ref().map_or(0, |status| status.code),
                    attributes: attributes(&span.attributes),
                    service_name: service_name.clone(),
                });
            }
        }
    }
    spans
}

fn attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|attribute| (attribute.key.clone(), text(attribute.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
