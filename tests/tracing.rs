//! Distributed tracing with the real binary: spans over OTLP/HTTP to a receiver in the
//! test that decodes them with the OpenTelemetry protobuf messages, the client's W3C
//! trace continued through the proxy to the upstream, sampling that keeps a parent's
//! decision, and a collector that is down or hangs costing requests nothing.
#![cfg(feature = "otel")]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::child::ChildProxy;
use support::metrics::{await_above, scrape};
use support::otlp::{
    BlackHole, ReceivedSpan, Receiver, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR,
};
use support::{PATIENCE, Sim, client, closed_port, eventually};

/// Spans are sent at least once a second; this leaves room for a loaded machine.
const SPANS_ARRIVE: Duration = Duration::from_secs(15);

/// A W3C trace id and parent span id that a client's own tracer would send.
fn client_context() -> (String, String) {
    (
        hex::encode(rand::random::<[u8; 16]>()),
        hex::encode(rand::random::<[u8; 8]>()),
    )
}

fn traceparent(trace_id: &str, parent: &str, sampled: bool) -> String {
    format!(
        "00-{trace_id}-{parent}-{}",
        if sampled { "01" } else { "00" }
    )
}

fn with(vars: &[(String, String)], more: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = vars.to_vec();
    all.extend(support::vars(more));
    all
}

/// A ready proxy in front of `sim` that exports its spans to `endpoint`, with `more`
/// variables.
async fn exporting_to(sim: &Sim, endpoint: &str, more: &[(&str, &str)]) -> ChildProxy {
    let mut vars = vec![("IPPROXY_TRACING__OTLP_ENDPOINT", endpoint)];
    vars.extend_from_slice(more);
    let proxy = ChildProxy::start(&with(&sim.vars(), &vars)).await;
    proxy.until_ready().await;
    proxy
}

/// [`exporting_to`] a [`Receiver`] of its own.
async fn exporting_to_receiver(sim: &Sim, more: &[(&str, &str)]) -> (Receiver, ChildProxy) {
    let receiver = Receiver::start().await;
    let proxy = exporting_to(sim, &receiver.endpoint(), more).await;
    (receiver, proxy)
}

fn of_trace<'a>(spans: &'a [ReceivedSpan], trace_id: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|span| span.trace_id == trace_id)
        .collect()
}

fn named<'a>(spans: &[&'a ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .copied()
        .filter(|span| span.name == name)
        .collect()
}

/// The echo's view of the request the upstream received.
async fn echoed(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.expect("echo JSON")
}

/// The echo of a GET of `path` through `proxy`, sent with `traceparent` if any.
async fn get_echo(proxy: &ChildProxy, path: &str, traceparent: Option<&str>) -> Value {
    let mut request = client().get(proxy.url(path));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    echoed(request.send().await.expect("answer")).await
}

/// SIGTERM, and `proxy` exits with success within 10 s.
async fn stop_cleanly(proxy: &mut ChildProxy) {
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert!(status.success(), "{status}");
}

/// A GET of `path` through `proxy` in a new sampled trace of the client's; its trace id.
async fn get_in_new_trace(proxy: &ChildProxy, path: &str) -> String {
    let (trace_id, parent) = client_context();
    get_echo(proxy, path, Some(&traceparent(&trace_id, &parent, true))).await;
    trace_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_retried_after_a_401_and_its_login_are_spans_of_the_clients_trace() {
    let sim = Sim::default().await;
    // The standard variable works when the key is unset.
    let (receiver, proxy) =
        exporting_to_receiver(&sim, &[("OTEL_SERVICE_NAME", "ipproxy-under-test")]).await;
    // Every token revoked behind the proxy's back: the next request gets a 401, the
    // proxy logs in and retries.
    sim.sim.revoke_all();
    let logins_before = sim.counters().auth_calls;

    let (trace_id, client_span) = client_context();
    let response = client()
        .get(proxy.url("/_rest/v4/echo/traced?to=15551230000"))
        .header("traceparent", traceparent(&trace_id, &client_span, true))
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .expect("answer");
    let echo = echoed(response).await;
    assert_eq!(sim.counters().auth_calls, logins_before + 1, "one login");

    // The upstream saw the client's trace with the proxy's span as its parent.
    let upstream_traceparent = echo["headers"]["traceparent"]
        .as_str()
        .expect("traceparent");
    let parts: Vec<&str> = upstream_traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{upstream_traceparent}");
    assert_eq!(parts[1], trace_id, "the client's trace id");
    assert_ne!(
        parts[2], client_span,
        "the client's own traceparent is replaced"
    );
    assert_eq!(parts[3], "01", "sampled");
    assert_eq!(echo["headers"]["tracestate"], "vendor=opaque");

    let spans = receiver
        .wait_for(SPANS_ARRIVE, |spans| {
            let trace = of_trace(spans, &trace_id);
            named(&trace, "ipproxy.request").len() == 1
                && named(&trace, "ipproxy.upstream").len() == 2
                && named(&trace, "ipproxy.login").len() == 1
                && named(&trace, "ipproxy.token_refresh").len() == 1
        })
        .await;
    let trace = of_trace(&spans, &trace_id);
    for span in &trace {
        assert_eq!(span.service_name, "ipproxy-under-test", "{span:?}");
    }

    let request = named(&trace, "ipproxy.request")[0];
    assert_eq!(request.kind, SPAN_KIND_SERVER);
    assert_eq!(
        request.parent_span_id, client_span,
        "continues the client's span"
    );
    assert_eq!(request.attribute("http.request.method"), Some("GET"));
    assert_eq!(request.attribute("url.path"), Some("/_rest/v4/echo/traced"));
    assert_eq!(request.attribute("http.response.status_code"), Some("200"));
    assert_eq!(request.attribute("ipproxy.retried"), Some("true"));
    assert_eq!(request.attribute("ipproxy.route"), Some("/"));
    let request_id = request.attribute("ipproxy.request_id").expect("request id");
    assert_eq!(echo["headers"]["x-request-id"], request_id);

    let mut attempts = named(&trace, "ipproxy.upstream");
    attempts.sort_by_key(|span| span.attribute("ipproxy.attempt").map(str::to_owned));
    let (first, second) = (attempts[0], attempts[1]);
    for (attempt, number, status) in [(first, "1", "401"), (second, "2", "200")] {
        assert_eq!(attempt.kind, SPAN_KIND_CLIENT);
        assert_eq!(attempt.parent_span_id, request.span_id);
        assert_eq!(attempt.attribute("ipproxy.attempt"), Some(number));
        assert_eq!(attempt.attribute("http.response.status_code"), Some(status));
        assert_eq!(attempt.attribute("url.path"), Some("/_rest/v4/echo/traced"));
    }
    assert_eq!(first.status, STATUS_ERROR, "the 401 is the attempt's error");
    assert_eq!(
        parts[2], second.span_id,
        "the upstream's parent is the exported client span of the attempt it received"
    );

    let refresh = named(&trace, "ipproxy.token_refresh")[0];
    assert_eq!(
        refresh.parent_span_id, request.span_id,
        "caused by the request"
    );
    assert_eq!(refresh.attribute("ipproxy.credential"), Some("default"));
    assert_eq!(refresh.attribute("ipproxy.refresh.reason"), Some("401"));
    assert_eq!(refresh.attribute("ipproxy.refresh.result"), Some("login"));
    let login = named(&trace, "ipproxy.login")[0];
    assert_eq!(login.parent_span_id, refresh.span_id);
    assert_eq!(login.attribute("ipproxy.login.result"), Some("ok"));
    assert_eq!(login.attribute("ipproxy.refresh.reason"), Some("401"));

    // The start-up login is a trace of its own.
    let startup = spans
        .iter()
        .find(|span| {
            span.name == "ipproxy.token_refresh"
                && span.attribute("ipproxy.refresh.reason") == Some("startup")
        })
        .expect("the start-up refresh");
    assert!(startup.parent_span_id.is_empty(), "a root: {startup:?}");

    // The request log line carries the trace id.
    let logged = eventually(PATIENCE, || async {
        proxy.lines().iter().any(|line| {
            serde_json::from_str::<Value>(line).is_ok_and(|line| {
                line["message"] == "request"
                    && line["path"] == "/_rest/v4/echo/traced"
                    && line["trace_id"] == trace_id.as_str()
            })
        })
    })
    .await;
    assert!(logged, "trace_id on the request line: {:#?}", proxy.lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parents_sampling_decision_is_kept_and_sample_ratio_applies_to_new_traces() {
    let sim = Sim::default().await;
    let (receiver, proxy) =
        exporting_to_receiver(&sim, &[("IPPROXY_TRACING__SAMPLE_RATIO", "0")]).await;

    // An unsampled parent stays unsampled: nothing exported, and the upstream is told.
    let (unsampled, parent) = client_context();
    let echo = get_echo(
        &proxy,
        "/_rest/v4/echo/unsampled",
        Some(&traceparent(&unsampled, &parent, false)),
    )
    .await;
    let header = echo["headers"]["traceparent"]
        .as_str()
        .expect("traceparent");
    assert!(
        header.starts_with(&format!("00-{unsampled}-")) && header.ends_with("-00"),
        "{header}"
    );
    // No parent: a new trace, sampled at ratio 0, so not at all.
    let echo = get_echo(&proxy, "/_rest/v4/echo/no-parent", None).await;
    let header = echo["headers"]["traceparent"]
        .as_str()
        .expect("traceparent");
    assert!(header.ends_with("-00"), "{header}");
    let unsampled_new = header.split('-').nth(1).expect("trace id").to_owned();

    // A sampled parent stays sampled, ratio 0 or not. Spans leave in order, so once
    // these are in, the ones above would have been too.
    let sampled = get_in_new_trace(&proxy, "/_rest/v4/echo/sampled").await;
    let spans = receiver
        .wait_for(SPANS_ARRIVE, |spans| {
            let trace = of_trace(spans, &sampled);
            !named(&trace, "ipproxy.request").is_empty()
                && !named(&trace, "ipproxy.upstream").is_empty()
        })
        .await;
    assert!(of_trace(&spans, &unsampled).is_empty(), "{spans:#?}");
    assert!(of_trace(&spans, &unsampled_new).is_empty(), "{spans:#?}");
}

/// A request that waited for an export would take up to the exporter's timeout (5 s);
/// a busy machine can stall one that did not for a second or more.
const NOT_DELAYED: Duration = Duration::from_secs(4);

/// `count` sequential requests, each answered within [`NOT_DELAYED`]; their statuses
/// and median latency.
async fn timed_requests(proxy: &ChildProxy, name: &str, count: usize) -> (Vec<u16>, Duration) {
    let clients = client();
    let mut statuses = Vec::with_capacity(count);
    let mut took = Vec::with_capacity(count);
    for index in 0..count {
        let started = Instant::now();
        let request = async {
            let response = clients
                .get(proxy.url(&format!("/_rest/v4/sim/ping?n={index}")))
                .send()
                .await
                .expect("answer");
            let status = response.status().as_u16();
            response.bytes().await.expect("body");
            status
        };
        let status = tokio::time::timeout(NOT_DELAYED, request)
            .await
            .unwrap_or_else(|_| panic!("{name}: request {index} took over {NOT_DELAYED:?}"));
        statuses.push(status);
        took.push(started.elapsed());
    }
    took.sort();
    (statuses, took[count / 2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_or_hangs_costs_requests_nothing_and_drops_are_counted() {
    let sim = Sim::default().await;
    let (closed, _reserved) = closed_port();
    let hanging = BlackHole::start().await;
    let baseline = ChildProxy::start(&sim.vars()).await;
    let down = ChildProxy::start(&with(
        &sim.vars(),
        &[(
            "IPPROXY_TRACING__OTLP_ENDPOINT",
            &format!("http://{closed}"),
        )],
    ))
    .await;
    let hangs = ChildProxy::start(&with(
        &sim.vars(),
        &[("IPPROXY_TRACING__OTLP_ENDPOINT", &hanging.endpoint())],
    ))
    .await;
    for proxy in [&baseline, &down, &hangs] {
        proxy.until_ready().await;
    }
    const REQUESTS: usize = 200;
    const ROUNDS: usize = 10;
    // Interleaved in short rounds, so that a busy machine slows all three alike.
    let mut medians = Vec::new();
    for _round in 0..ROUNDS {
        for (name, proxy) in [("off", &baseline), ("down", &down), ("hangs", &hangs)] {
            let (statuses, median) = timed_requests(proxy, name, REQUESTS / ROUNDS).await;
            assert!(
                statuses.iter().all(|status| *status == 200),
                "{name}: {statuses:?}"
            );
            medians.push((name, median));
        }
    }
    let median_of = |wanted: &str| {
        let mut of: Vec<Duration> = medians
            .iter()
            .filter(|(name, _)| *name == wanted)
            .map(|(_, median)| *median)
            .collect();
        of.sort();
        of[0]
    };
    let off = median_of("off");
    for name in ["down", "hangs"] {
        let median = median_of(name);
        assert!(
            median <= off * 3 + Duration::from_millis(20),
            "{name}: median {median:?} against {off:?} with tracing off ({medians:?})"
        );
    }

    let admin = client();
    let dropped = await_above(
        &admin,
        &down.admin_url("/metrics"),
        "ipproxy_trace_spans_dropped_total",
        &[("reason", "export_failed")],
        0.0,
        SPANS_ARRIVE,
    )
    .await;
    assert!(dropped.is_some(), "a refused export is counted as dropped");
    let dropped = await_above(
        &admin,
        &hangs.admin_url("/metrics"),
        "ipproxy_trace_spans_dropped_total",
        &[],
        0.0,
        SPANS_ARRIVE,
    )
    .await;
    assert!(
        dropped.is_some(),
        "an export that times out is counted as dropped"
    );
    let baseline_metrics = scrape(&admin, &baseline.admin_url("/metrics")).await;
    assert!(
        !baseline_metrics.contains("ipproxy_trace_spans"),
        "no tracing, no series"
    );
    let down_lines = down.lines().join("\n");
    assert!(
        down_lines.contains("trace collector unreachable"),
        "logged once: {down_lines}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_the_last_spans_and_a_hanging_collector_delays_exit_by_a_bounded_time() {
    let sim = Sim::default().await;
    let (receiver, mut proxy) = exporting_to_receiver(&sim, &[]).await;
    let trace_id = get_in_new_trace(&proxy, "/_rest/v4/echo/last").await;
    stop_cleanly(&mut proxy).await;
    // Already there when the process has gone: it sent them before exiting.
    let spans = receiver.spans();
    assert!(
        !named(&of_trace(&spans, &trace_id), "ipproxy.request").is_empty(),
        "{spans:#?}"
    );

    let hanging = BlackHole::start().await;
    let mut proxy = exporting_to(&sim, &hanging.endpoint(), &[]).await;
    get_echo(&proxy, "/_rest/v4/echo/stuck", None).await;
    let stopping = Instant::now();
    stop_cleanly(&mut proxy).await;
    // The flush waits at most 2 s for the collector (the exporter's own timeout would
    // be 5 s, a black hole forever).
    assert!(
        stopping.elapsed() < Duration::from_secs(6),
        "exited after {:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracing_off_the_clients_traceparent_passes_through_and_no_trace_id_is_logged() {
    let sim = Sim::default().await;
    let proxy = ChildProxy::start(&sim.vars()).await;
    proxy.until_ready().await;
    let (trace_id, parent) = client_context();
    let sent = traceparent(&trace_id, &parent, true);
    let echo = get_echo(&proxy, "/_rest/v4/echo/untraced", Some(&sent)).await;
    assert_eq!(echo["headers"]["traceparent"], sent.as_str());
    let logged = eventually(PATIENCE, || async {
        proxy
            .lines()
            .iter()
            .any(|line| line.contains("\"message\":\"request\""))
    })
    .await;
    assert!(logged);
    assert!(
        proxy.lines().iter().all(|line| !line.contains("trace_id")),
        "{:#?}",
        proxy.lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_caused_refresh_through_the_shared_store_shows_each_store_operation() {
    let sim = Sim::default().await;
    let redis = support::redis::RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("store-key");
    std::fs::write(&key, format!("{}\n", "3c".repeat(32))).expect("key file");
    let (receiver, proxy) = exporting_to_receiver(
        &sim,
        &[
            ("IPPROXY_STORE__KIND", "redis"),
            ("IPPROXY_STORE__URL", &redis.url()),
            ("IPPROXY_STORE__KEY_FILE", &key.display().to_string()),
        ],
    )
    .await;
    sim.sim.revoke_all();
    let trace_id = get_in_new_trace(&proxy, "/_rest/v4/echo/stored").await;
    let store_ops = |spans: &[ReceivedSpan]| -> Vec<String> {
        let trace = of_trace(spans, &trace_id);
        named(&trace, "ipproxy.store")
            .iter()
            .filter_map(|span| span.attribute("ipproxy.store.op").map(str::to_owned))
            .collect()
    };
    let spans = receiver
        .wait_for(SPANS_ARRIVE, |spans| {
            let ops = store_ops(spans);
            ["read", "lock", "write", "release"]
                .iter()
                .all(|op| ops.iter().any(|seen| seen == op))
        })
        .await;
    let trace = of_trace(&spans, &trace_id);
    let refresh = named(&trace, "ipproxy.token_refresh")[0];
    for span in named(&trace, "ipproxy.store") {
        assert_eq!(span.kind, SPAN_KIND_CLIENT);
        assert_eq!(span.parent_span_id, refresh.span_id, "{span:?}");
        assert_eq!(
            span.attribute("ipproxy.store.result"),
            Some("ok"),
            "{span:?}"
        );
        assert_eq!(span.attribute("db.system.name"), Some("redis"));
    }
    // The health probe's pings make no traces of their own.
    assert!(
        spans
            .iter()
            .all(|span| span.attribute("ipproxy.store.op") != Some("ping")),
        "{spans:#?}"
    );
}
