//! What operators and orchestrators rely on: graceful shutdown of the real process
//! under load, readiness that follows the token, `/refresh`, the metrics, and load
//! shedding.
//!
//! The Prometheus recorder is process-global, so metric assertions use route and
//! credential names that no other test in this binary uses.

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::join_all;
use ipproxy::sim::{AuthMode, SimConfig};
use serde_json::Value;
use support::child::ChildProxy;
use support::keepalive::KeepAlive;
use support::metrics::{samples, value};
use support::{PATIENCE, Proxy, Sim, client, eventually};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

async fn readyz_status(client: &reqwest::Client, url: &str) -> Option<u16> {
    let response = client.get(url).send().await.ok()?;
    Some(response.status().as_u16())
}

async fn wait_ready(client: &reqwest::Client, url: &str) {
    let ready = eventually(PATIENCE, || async {
        readyz_status(client, url).await == Some(200)
    })
    .await;
    assert!(ready, "{url} turned 200");
}

async fn readyz_body(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readyz json"))
}

fn proxy_vars_for(sim: &Sim, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut vars = sim.vars();
    vars.extend(
        extra
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
    );
    vars
}

// --- shutdown of the real process ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_0() {
    const IN_FLIGHT: usize = 20;
    let sim = Sim::default().await;
    let mut proxy = ChildProxy::start(&proxy_vars_for(
        &sim,
        &[("IPPROXY_SERVER__SHUTDOWN_GRACE", "60s")],
    ))
    .await;
    let admin = client();
    wait_ready(&admin, &proxy.admin_url("/readyz")).await;
    // A client with an idle keep-alive connection, used again during the drain.
    let mut keep_alive = KeepAlive::open(proxy.addr).await;
    let (status, _, _) = keep_alive.get("/_rest/v4/sim/ping").await;
    assert_eq!(status, 200, "before the drain");
    // The upstream holds every request until the test releases it, so the drain is
    // observed while they are in flight however slow the machine is.
    sim.sim.hold_api(true);
    let calls_before = sim.counters().api_calls;

    let clients = client();
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|index| {
            let request = clients
                .get(proxy.url(&format!("/_rest/v4/echo/drain?i={index}")))
                .send();
            tokio::spawn(async move {
                let response = request.await.expect("in-flight request answered");
                let status = response.status().as_u16();
                let echo: Value = response.json().await.expect("the upstream's echo");
                (status, echo)
            })
        })
        .collect();
    // Every request has reached the upstream (which holds it).
    assert!(
        eventually(PATIENCE, || async {
            sim.counters().api_calls - calls_before == IN_FLIGHT as u64
        })
        .await,
        "all requests in flight"
    );

    proxy.signal("TERM");
    let readiness_dropped = eventually(PATIENCE, || async {
        readyz_status(&admin, &proxy.admin_url("/readyz")).await == Some(503)
    })
    .await;
    assert!(readiness_dropped, "readiness turned 503 during the drain");
    let refused = eventually(PATIENCE, || async {
        TcpStream::connect(proxy.addr).await.is_err()
    })
    .await;
    assert!(refused, "new connections are refused during the drain");
    assert!(
        requests.iter().all(|request| !request.is_finished()),
        "readiness and the listener changed before the in-flight requests finished"
    );
    let (status, body) = readyz_body(&admin, &proxy.admin_url("/readyz")).await;
    assert_eq!(status, 503);
    assert_eq!(body["shutting_down"], true);
    // A new request on the open keep-alive connection is answered, not dropped, and
    // not forwarded.
    let (status, connection, body) = keep_alive.get("/_rest/v4/sim/ping").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "shutting_down");
    assert_eq!(connection.as_deref(), Some("close"));
    assert_eq!(
        sim.counters().api_calls - calls_before,
        IN_FLIGHT as u64,
        "nothing new reached the upstream"
    );

    sim.sim.hold_api(false);
    for (index, request) in join_all(requests).await.into_iter().enumerate() {
        let (status, echo) = request.expect("request task");
        assert_eq!(status, 200, "request {index}");
        assert_eq!(echo["query"], format!("i={index}"), "request {index}");
    }
    let status = proxy
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exited after draining, not at the end of the 60 s grace");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let lines = proxy.all_lines();
    assert!(
        lines.iter().any(|line| line.contains("\"drained\"")),
        "the drain is logged: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let sim = Sim::default().await;
    let mut proxy = ChildProxy::start(&proxy_vars_for(
        &sim,
        &[("IPPROXY_SERVER__SHUTDOWN_GRACE", "30s")],
    ))
    .await;
    let admin = client();
    wait_ready(&admin, &proxy.admin_url("/readyz")).await;
    sim.sim.set_latency(Duration::from_secs(20));
    let calls_before = sim.counters().api_calls;
    let slow = tokio::spawn(client().get(proxy.url("/_rest/v4/echo/slow")).send());
    assert!(
        eventually(PATIENCE, || async {
            sim.counters().api_calls > calls_before
        })
        .await,
        "a slow request in flight"
    );
    proxy.signal("TERM");
    assert!(
        eventually(PATIENCE, || async {
            readyz_status(&admin, &proxy.admin_url("/readyz")).await == Some(503)
        })
        .await,
        "the first signal started the drain"
    );
    let second = Instant::now();
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the second signal ends the process at once");
    // Without it the drain would wait out the 20 s upstream latency.
    assert!(second.elapsed() < Duration::from_secs(10));
    // README: "A second signal exits at once (status 130)", as a shell reports an
    // interrupted command.
    assert_eq!(
        status.code(),
        Some(130),
        "an interrupted drain exits 130, not {status}"
    );
    assert!(
        slow.await.expect("task").is_err(),
        "the in-flight request was cut off"
    );
}

/// A file the configuration names that exists (so `load` accepts it) but that
/// `ipproxy run` finds unusable only when it starts serving
/// (`ServeError::is_configuration`): exit 2, like any configuration error, with a
/// message naming the key, before listening.
#[tokio::test]
async fn a_configuration_error_found_at_start_exits_2_naming_the_key() {
    let sim = Sim::default().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "not a digest, not a certificate\n").expect("write");
    let garbage = garbage.display().to_string();
    for (var, key) in [
        ("IPPROXY_ACCESS__KEYS_FILE", "access.keys_file"),
        ("IPPROXY_UPSTREAM__CA_FILE", "upstream.ca_file"),
    ] {
        let (status, output) =
            support::child::run_to_exit(&proxy_vars_for(&sim, &[(var, &garbage)])).await;
        assert_eq!(
            status.code(),
            Some(2),
            "{key}: exit status {status}: {output}"
        );
        assert!(
            output.contains("invalid configuration") && output.contains(key),
            "{key}: the message names the key: {output}"
        );
        assert!(
            !output.contains("\"listening\""),
            "{key}: it never listened: {output}"
        );
    }
}

// --- readiness ---

#[tokio::test]
async fn readiness_is_503_until_the_first_token_and_200_after_auth_recovers() {
    let sim = Sim::default().await;
    sim.sim.set_auth_mode(AuthMode::Down);
    let proxy = Proxy::start(sim.vars()).await;
    let client = client();
    let url = proxy.admin_url("/readyz");
    assert!(
        eventually(PATIENCE, || async {
            let (_, body) = readyz_body(&client, &url).await;
            body["credentials"][0]["consecutive_failures"].as_u64() >= Some(1)
        })
        .await,
        "a login failed"
    );
    let (status, body) = readyz_body(&client, &url).await;
    assert_eq!(status, 503);
    assert_eq!(body["ready"], false);
    let credential = &body["credentials"][0];
    assert_eq!(credential["name"], "default");
    assert_eq!(credential["ready"], false);
    assert_eq!(credential["generation"], 0);
    assert!(credential["last_error"].as_str().is_some(), "{body}");

    sim.sim.set_auth_mode(AuthMode::Ok);
    // No operator action: the backoff (1 s, the sim's Retry-After) retries on its own.
    wait_ready(&client, &url).await;
    let (_, body) = readyz_body(&client, &url).await;
    assert_eq!(body["credentials"][0]["ready"], true);
    assert_eq!(body["credentials"][0]["last_error"], Value::Null);
    assert!(body["credentials"][0]["expires_at"].as_str().is_some());
}

#[tokio::test]
async fn readiness_turns_503_when_the_token_expires_with_auth_down_and_back_on_recovery() {
    let sim = Sim::start(SimConfig {
        token_ttl: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await;
    let proxy = Proxy::start(sim.vars()).await;
    let client = client();
    let url = proxy.admin_url("/readyz");
    wait_ready(&client, &url).await;
    sim.sim.set_auth_mode(AuthMode::Down);
    // Without the expiry check readiness would stay 200 for good.
    let expired = eventually(PATIENCE, || async {
        readyz_status(&client, &url).await == Some(503)
    })
    .await;
    assert!(expired, "readiness turned 503 once the token expired");
    let (_, body) = readyz_body(&client, &url).await;
    assert_eq!(body["shutting_down"], false);
    assert_eq!(body["credentials"][0]["ready"], false);
    // And the proxy says so to clients instead of sending an expired token.
    let response = client
        .get(proxy.url("/_rest/v4/echo/x"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 503);
    assert_eq!(sim.counters().expired_token, 0);

    sim.sim.set_auth_mode(AuthMode::Ok);
    wait_ready(&client, &url).await;
    let response = client
        .get(proxy.url("/_rest/v4/echo/x"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn readiness_turns_503_at_once_on_shutdown_while_requests_drain() {
    let sim = Sim::default().await;
    let (release, released) = watch::channel(false);
    let (held, _stop) = held_stream_upstream(released).await;
    let proxy = Proxy::start(proxy_vars_for(&sim, &[("IPPROXY_UPSTREAM__URL", &held)])).await;
    let client = client();
    let readyz = proxy.admin_url("/readyz");
    wait_ready(&client, &readyz).await;
    // A request whose response body is held open by the upstream until released.
    let response = client
        .get(proxy.url("/_rest/v4/echo/drain"))
        .send()
        .await
        .expect("response head");
    let in_flight = tokio::spawn(response.text());
    let stopping = tokio::spawn(proxy.shutdown());
    let turned = eventually(PATIENCE, || async {
        readyz_status(&client, &readyz).await == Some(503)
    })
    .await;
    assert!(turned, "readiness turned 503 on shutdown");
    assert!(
        !in_flight.is_finished() && !stopping.is_finished(),
        "while a request is still in flight, and the drain waits for it"
    );
    release.send_replace(true);
    let body = in_flight.await.expect("task").expect("drained body");
    assert_eq!(body, "first last");
    stopping.await.expect("shutdown");
}

// --- /refresh ---

#[tokio::test]
async fn concurrent_refresh_calls_cause_exactly_one_login() {
    let sim = Sim::default().await;
    let proxy = Proxy::start(sim.vars()).await;
    let client = client();
    wait_ready(&client, &proxy.admin_url("/readyz")).await;
    // A login slow enough that all ten calls arrive while it is still running, however
    // slowly the machine starts them.
    sim.sim.set_auth_mode(AuthMode::Slow(5000));
    sim.sim.reset_counters();
    let calls = (0..10).map(|_| {
        let client = client.clone();
        let url = proxy.admin_url("/refresh");
        async move {
            let response = client.post(url).send().await.expect("refresh");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    });
    let answers = join_all(calls).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["credential"], "default");
        assert_eq!(body["generation"], answers[0].1["generation"]);
        assert!(body["expires_at"].as_str().is_some());
    }
    assert_eq!(answers[0].1["generation"], 2, "one token after the first");
    assert_eq!(sim.counters().auth_calls, 1, "exactly one login");
}

#[tokio::test]
async fn refresh_of_an_unknown_credential_is_404_and_a_failed_login_502() {
    let sim = Sim::default().await;
    let proxy = Proxy::start(sim.vars()).await;
    let client = client();
    wait_ready(&client, &proxy.admin_url("/readyz")).await;

    let response = client
        .post(proxy.admin_url("/refresh?credential=unknown"))
        .send()
        .await
        .expect("refresh");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "unknown_credential");

    let response = client
        .post(proxy.admin_url("/refresh?credential=default"))
        .send()
        .await
        .expect("refresh");
    assert_eq!(response.status(), 200);

    sim.sim.set_auth_mode(AuthMode::Error);
    let response = client
        .post(proxy.admin_url("/refresh"))
        .send()
        .await
        .expect("refresh");
    assert_eq!(response.status(), 502);
    assert!(
        response.headers()[http::header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|value| value.starts_with("application/json"))
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "refresh_failed");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|message| message.contains("default")),
        "{body}"
    );
    // The stored token is still valid: a failed forced refresh does not unready.
    assert_eq!(
        readyz_status(&client, &proxy.admin_url("/readyz")).await,
        Some(200)
    );
}

// --- metrics ---

async fn scrape(client: &reqwest::Client, proxy: &Proxy) -> String {
    support::metrics::scrape(client, &proxy.admin_url("/metrics")).await
}

#[tokio::test]
async fn metrics_count_requests_retries_refreshes_and_expose_expiry() {
    let sim = Sim::default().await;
    let config = format!(
        r#"
[credentials.opsmetrics]
kind = "session"
url = "{sim}/_rest/v4/authenticate"
username = "demo"
password = "demo-password"

[[route]]
name = "opsmetrics"
prefix = "/"
credential = "opsmetrics"
"#,
        sim = sim.url()
    );
    let proxy = Proxy::start_with_file(&config, sim.vars()).await;
    let client = client();
    wait_ready(&client, &proxy.admin_url("/readyz")).await;
    let route = [("route", "opsmetrics")];
    let credential = [("credential", "opsmetrics")];

    for _ in 0..2 {
        let response = client
            .get(proxy.url("/_rest/v4/echo/m?phone=15550001111"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
    }
    let response = client
        .delete(proxy.url("/_rest/v4/echo/m"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    sim.sim.revoke_all();
    let response = client
        .get(proxy.url("/_rest/v4/echo/after-revoke"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    sim.sim.set_auth_mode(AuthMode::Error);
    let response = client
        .post(proxy.admin_url("/refresh?credential=opsmetrics"))
        .send()
        .await
        .expect("refresh");
    assert_eq!(response.status(), 502);

    let text = scrape(&client, &proxy).await;
    let requests = |method, status| {
        value(
            &text,
            "ipproxy_requests_total",
            &[route[0], ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("GET", "200"), 3.0, "{text}");
    assert_eq!(requests("DELETE", "200"), 1.0);
    assert_eq!(
        value(&text, "ipproxy_upstream_retries_total", &route),
        1.0,
        "the retry after the revocation"
    );
    let refreshes = |reason, result| {
        value(
            &text,
            "ipproxy_token_refreshes_total",
            &[credential[0], ("reason", reason), ("result", result)],
        )
    };
    assert_eq!(refreshes("startup", "ok"), 1.0);
    assert_eq!(refreshes("401", "ok"), 1.0);
    assert_eq!(refreshes("manual", "error"), 1.0);

    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let expiry = value(&text, "ipproxy_token_expiry_timestamp_seconds", &credential);
    assert!(
        expiry > now + 23.0 * 3600.0 && expiry < now + 25.0 * 3600.0,
        "the sim's 24 h token: {expiry} vs now {now}"
    );
    let last_refresh = value(
        &text,
        "ipproxy_token_last_refresh_timestamp_seconds",
        &credential,
    );
    assert!((now - last_refresh).abs() < 60.0, "{last_refresh} vs {now}");

    // Real histograms: cumulative buckets ending in +Inf, a count and a sum.
    let buckets = samples(&text, "ipproxy_request_duration_seconds_bucket");
    let route_buckets: Vec<_> = buckets
        .iter()
        .filter(|(labels, _)| labels.get("route").map(String::as_str) == Some("opsmetrics"))
        .collect();
    assert!(route_buckets.len() > 5, "{text}");
    let infinity = route_buckets
        .iter()
        .find(|(labels, _)| labels.get("le").map(String::as_str) == Some("+Inf"))
        .expect("+Inf bucket");
    assert_eq!(infinity.1, 4.0);
    assert_eq!(
        value(&text, "ipproxy_request_duration_seconds_count", &route),
        4.0
    );
    assert!(
        samples(&text, "ipproxy_token_refresh_duration_seconds_bucket")
            .iter()
            .any(|(labels, _)| labels.get("credential").map(String::as_str) == Some("opsmetrics")),
        "{text}"
    );
    assert_eq!(
        samples(&text, "ipproxy_inflight_requests").len(),
        1,
        "the in-flight gauge is exported"
    );
    // Labels are route names, never raw paths or query strings.
    assert!(!text.contains("/_rest/v4/echo"));
    assert!(!text.contains("15550001111"));
}

// --- load shedding ---

#[tokio::test]
async fn beyond_max_concurrency_requests_get_a_fast_503_overloaded() {
    let sim = Sim::default().await;
    let (release, released) = watch::channel(false);
    let (held, _stop) = held_stream_upstream(released).await;
    let proxy = Proxy::start(proxy_vars_for(
        &sim,
        &[
            ("IPPROXY_SERVER__MAX_CONCURRENCY", "2"),
            ("IPPROXY_UPSTREAM__URL", &held),
        ],
    ))
    .await;
    let client = client();
    wait_ready(&client, &proxy.admin_url("/readyz")).await;
    // Two requests whose bodies the upstream holds open: they keep both permits.
    let mut holding = Vec::new();
    for _ in 0..2 {
        let response = client
            .get(proxy.url("/_rest/v4/echo/slow"))
            .send()
            .await
            .expect("response head");
        holding.push(tokio::spawn(response.text()));
    }
    let response = client
        .get(proxy.url("/_rest/v4/echo/third"))
        .send()
        .await
        .expect("third request");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "overloaded");
    assert!(
        holding.iter().all(|task| !task.is_finished()),
        "answered while both permits were held: it did not wait for one"
    );
    release.send_replace(true);
    for task in holding {
        assert_eq!(task.await.expect("task").expect("body"), "first last");
    }
    let response = client
        .get(proxy.url("/_rest/v4/echo/after"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "permits are returned");
}

/// An upstream that sends its response head and a first chunk (`first `) at once, and
/// the rest (`last`) only once `released` turns true.
async fn held_stream_upstream(released: watch::Receiver<bool>) -> (String, oneshot::Sender<()>) {
    let app = axum::Router::new().fallback(move || {
        let released = released.clone();
        async move {
            let chunks = futures_util::stream::unfold(0u8, move |step| {
                let mut released = released.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, Infallible>(Bytes::from_static(b"first ")), 1)),
                        1 => {
                            let _ = released.wait_for(|released| *released).await;
                            Some((Ok(Bytes::from_static(b"last")), 2))
                        }
                        _ => None,
                    }
                }
            });
            axum::body::Body::from_stream(chunks)
        }
    });
    let (addr, stop) = support::serve_app(app).await;
    let url = format!("http://{addr}");
    (url, stop)
}

#[tokio::test]
async fn a_response_body_still_streaming_counts_against_max_concurrency() {
    let sim = Sim::default().await;
    let (release, released) = watch::channel(false);
    let (upstream, _stop) = held_stream_upstream(released).await;
    let config = format!(
        r#"
[[route]]
name = "held-stream"
prefix = "/held/"
upstream = "{upstream}"

[[route]]
name = "sim"
prefix = "/"
"#
    );
    let proxy = Proxy::start_with_file(
        &config,
        proxy_vars_for(&sim, &[("IPPROXY_SERVER__MAX_CONCURRENCY", "1")]),
    )
    .await;
    let client = client();
    wait_ready(&client, &proxy.admin_url("/readyz")).await;

    let mut streaming = client
        .get(proxy.url("/held/download"))
        .send()
        .await
        .expect("response head");
    assert_eq!(streaming.status(), 200);
    let first = streaming.chunk().await.expect("first chunk");
    assert_eq!(first.as_deref(), Some(&b"first "[..]));

    let response = client
        .get(proxy.url("/_rest/v4/echo/x"))
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status(),
        503,
        "the streaming response still holds the only permit"
    );

    release.send_replace(true);
    let rest = streaming.bytes().await.expect("rest of the body");
    assert_eq!(&rest[..], b"last");
    let freed = eventually(PATIENCE, || async {
        client
            .get(proxy.url("/_rest/v4/echo/x"))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
    assert!(freed, "the permit is returned once the body is sent");
}
