//! No token, password or client key ever leaves the proxy: not in a log line (debug
//! level, every dependency's too), not in `/metrics` or `/readyz`, not in an error body,
//! not in `ipproxy check`'s output, not in an exported trace span (the test's own OTLP
//! receiver decodes every span the proxy sends).
//!
//! The real binary runs as a child process. Its upstream is a recorder in this test
//! that notes every `Authorization` value the proxy sends and passes the request on
//! to the simulator: that way the test knows every token the proxy ever held, and
//! checks that it knows all of them against the simulator's count of logins.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use ipproxy::sim::{AuthMode, SimConfig};
use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde_json::Value;
use support::child::ChildProxy;
use support::otlp::Receiver as TraceReceiver;
use support::{Sim, client, eventually, raw_request, raw_status};
use tokio::sync::oneshot;

fn random(prefix: &str) -> String {
    let tail: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}{tail}")
}

/// Records each `Authorization` value it receives, then forwards to the simulator.
struct Recorder {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
    _stop: oneshot::Sender<()>,
}

impl Recorder {
    async fn start(sim_url: String) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let forward = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let record = Arc::clone(&seen);
        let app = axum::Router::new().fallback(move |request: Request| {
            let record = Arc::clone(&record);
            let forward = forward.clone();
            let sim_url = sim_url.clone();
            async move {
                let (parts, body) = request.into_parts();
                if let Some(value) = parts.headers.get(http::header::AUTHORIZATION) {
                    record
                        .lock()
                        .expect("recorder")
                        .push(value.to_str().expect("ascii token").to_owned());
                }
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .expect("request body");
                let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
                let mut headers = parts.headers.clone();
                headers.remove(http::header::HOST);
                let answer = forward
                    .request(parts.method, format!("{sim_url}{target}"))
                    .headers(headers)
                    .body(body)
                    .send()
                    .await
                    .expect("the simulator answers");
                let status = answer.status();
                let bytes = answer.bytes().await.expect("simulator body");
                Response::from((status, bytes.to_vec()).into_response())
            }
        });
        let (addr, stop) = support::serve_app(app).await;
        let url = format!("http://{addr}");
        Self {
            url,
            seen,
            _stop: stop,
        }
    }

    /// Every distinct token the proxy has sent.
    fn tokens(&self) -> BTreeSet<String> {
        self.seen
            .lock()
            .expect("recorder")
            .iter()
            .map(|value| value.strip_prefix("Bearer ").unwrap_or(value).to_owned())
            .collect()
    }
}

/// Everything an operator or a client could read, gathered as text.
#[derive(Default)]
struct Collected(Vec<(String, String)>);

impl Collected {
    fn add(&mut self, source: impl Into<String>, text: impl Into<String>) {
        self.0.push((source.into(), text.into()));
    }

    fn assert_absent(&self, what: &str, secret: &str) {
        assert!(secret.len() >= 8, "{what} is long enough to search for");
        for (source, text) in &self.0 {
            assert!(
                !text.contains(secret),
                "{what} appears in {source}:\n{text}"
            );
        }
    }
}

async fn admin_text(
    client: &reqwest::Client,
    proxy: &ChildProxy,
    method: http::Method,
    path: &str,
) -> (u16, String) {
    let response = client
        .request(method, proxy.admin_url(path))
        .send()
        .await
        .expect("admin answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("admin body"))
}

fn run_check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("ipproxy.toml");
    std::fs::write(&path, config).expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ipproxy"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env_clear()
        .output()
        .expect("run ipproxy check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_password_or_client_key_appears_in_logs_metrics_bodies_or_check() {
    let username = random("user-");
    let password = random("pw-");
    let client_key = random("ck-");
    let phone = format!("1555{}", rand::rng().random_range(1_000_000..9_999_999));
    let sim = Sim::start(SimConfig {
        username: username.clone(),
        password: password.clone(),
        ..SimConfig::default()
    })
    .await;
    let recorder = Recorder::start(sim.url()).await;
    let traces = TraceReceiver::start().await;
    let vars: Vec<(String, String)> = [
        ("IPPROXY_UPSTREAM__URL", recorder.url.clone()),
        (
            "IPPROXY_AUTH__URL",
            format!("{}/_rest/v4/authenticate", sim.url()),
        ),
        ("IPPROXY_AUTH__USERNAME", username.clone()),
        ("IPPROXY_AUTH__PASSWORD", password.clone()),
        ("IPPROXY_LOG__LEVEL", "debug".to_owned()),
        ("IPPROXY_SERVER__MAX_BODY", "1KiB".to_owned()),
        ("IPPROXY_SERVER__REPLAY_LIMIT", "1KiB".to_owned()),
        ("IPPROXY_TRACING__OTLP_ENDPOINT", traces.endpoint()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect();

    // Auth fails from the start: the login errors are logged and reported.
    sim.sim.set_auth_mode(AuthMode::Error);
    let mut proxy = ChildProxy::start(&vars).await;
    let admin = client();
    let clients = client();
    let mut collected = Collected::default();
    let failed_once = eventually(Duration::from_secs(20), || async {
        let (_, body) = admin_text(&admin, &proxy, http::Method::GET, "/readyz").await;
        serde_json::from_str::<Value>(&body)
            .is_ok_and(|body| body["credentials"][0]["consecutive_failures"].as_u64() >= Some(1))
    })
    .await;
    assert!(failed_once, "the first login failed");
    let (status, body) = admin_text(&admin, &proxy, http::Method::GET, "/readyz").await;
    assert_eq!(status, 503);
    collected.add("/readyz after a failed login", body);

    let send = |path: String| {
        clients
            .post(proxy.url(&path))
            .header("authorization", format!("Bearer {client_key}"))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"from":"+15550001111","to":"+{phone}","text":"hi"}}"#
            ))
            .send()
    };
    let response = send(format!("/_rest/v4/echo/sms?to={phone}"))
        .await
        .expect("answer");
    assert_eq!(response.status(), 503);
    collected.add(
        "503 token_unavailable body",
        response.text().await.expect("body"),
    );

    // Bad credentials, as IntelePeer reports them.
    sim.sim.set_auth_mode(AuthMode::Reject);
    let (status, body) = admin_text(&admin, &proxy, http::Method::POST, "/refresh").await;
    assert_eq!(status, 502);
    collected.add("/refresh 502 (bad credentials)", body);
    let (_, body) = admin_text(&admin, &proxy, http::Method::GET, "/readyz").await;
    collected.add("/readyz after bad credentials", body);

    // Recovery by a forced refresh, then traffic.
    sim.sim.set_auth_mode(AuthMode::Ok);
    let (status, body) = admin_text(&admin, &proxy, http::Method::POST, "/refresh").await;
    assert_eq!(status, 200, "{body}");
    collected.add("/refresh 200", body);
    for index in 0..3 {
        let response = send(format!("/_rest/v4/echo/sms/{index}?to={phone}"))
            .await
            .expect("answer");
        assert_eq!(response.status(), 200);
    }

    // A 401 retry: every token revoked behind the proxy's back.
    sim.sim.revoke_all();
    let response = send(format!("/_rest/v4/echo/retried?to={phone}"))
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);

    // Another forced refresh; one request shows the recorder the new token.
    let (status, body) = admin_text(
        &admin,
        &proxy,
        http::Method::POST,
        "/refresh?credential=default",
    )
    .await;
    assert_eq!(status, 200);
    collected.add("/refresh?credential=default 200", body);
    let response = send(format!("/_rest/v4/echo/after-refresh?to={phone}"))
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);

    // Error bodies the proxy writes itself.
    let response = clients
        .post(proxy.url("/_rest/v4/echo/big"))
        .header("authorization", format!("Bearer {client_key}"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 413);
    collected.add("413 body", response.text().await.expect("body"));
    let raw = raw_request(
        proxy.addr,
        &format!(
            "GET /_rest/v4/../echo?to={phone} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {client_key}"
        ),
    )
    .await;
    assert_eq!(raw_status(&raw), 400);
    collected.add("400 response", raw);

    let (status, metrics) = admin_text(&admin, &proxy, http::Method::GET, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("ipproxy_token_refreshes_total"));
    collected.add("/metrics", metrics);
    let (status, body) = admin_text(&admin, &proxy, http::Method::GET, "/readyz").await;
    assert_eq!(status, 200);
    collected.add("/readyz", body);
    let (_, body) = admin_text(&admin, &proxy, http::Method::GET, "/healthz").await;
    collected.add("/healthz", body);

    // `check` on a file with the password inline, valid and invalid.
    let config = format!(
        r#"
[upstream]
url = "https://api.intelepeer.com"

[auth]
kind = "session"
url = "https://customer.intelepeer.com/_rest/v4/authenticate"
username = "{username}"
password = "{password}"
"#
    );
    let (ok, output) = run_check(&config);
    assert!(ok, "check accepts the file: {output}");
    assert!(
        output.contains("***"),
        "the password is shown as ***: {output}"
    );
    collected.add("ipproxy check (valid)", output);
    let (ok, output) = run_check(&format!("{config}passwrd = \"{password}\"\n"));
    assert!(!ok, "check refuses an unknown key: {output}");
    collected.add("ipproxy check (invalid)", output);

    proxy.signal("TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits");
    assert!(status.success(), "{status}");
    let lines = proxy.all_lines();
    let log = lines.join("\n");
    // The capture saw what it should have: else an empty log would pass.
    for expected in [
        "\"token fetch failed\"",
        "IntelePeer rejected the username or password",
        "\"token stored\"",
        "\"retried\":true",
        "\"status\":413",
        "\"status\":400",
        "\"DEBUG\"",
    ] {
        assert!(log.contains(expected), "the log has {expected}:\n{log}");
    }
    collected.add("the proxy's stdout and stderr", log);
    // The spans saw what they should have: the failed logins, the retry, the 413.
    #[cfg(feature = "otel")]
    traces
        .wait_for(Duration::from_secs(10), |spans| {
            let has = |name: &str, key: &str, value: &str| {
                spans
                    .iter()
                    .any(|span| span.name == name && span.attribute(key) == Some(value))
            };
            has("ipproxy.login", "error.type", "bad_credentials")
                && has("ipproxy.login", "ipproxy.login.result", "ok")
                && has("ipproxy.request", "ipproxy.retried", "true")
                && has("ipproxy.request", "http.response.status_code", "413")
                && has("ipproxy.upstream", "ipproxy.attempt", "2")
        })
        .await;
    collected.add("the exported trace spans", traces.everything_received());

    let tokens = recorder.tokens();
    let counters = sim.counters();
    assert_eq!(counters.tokens_issued, 3, "{counters:?}");
    assert_eq!(
        tokens.len() as u64,
        counters.tokens_issued,
        "the recorder saw every token the simulator issued"
    );
    collected.assert_absent("the password", &password);
    collected.assert_absent("the client key", &client_key);
    collected.assert_absent("the phone number in the query", &phone);
    for token in &tokens {
        collected.assert_absent("a token", token);
        let signature = token.rsplit('.').next().expect("a segment");
        collected.assert_absent("a token's signature", signature);
    }
}
