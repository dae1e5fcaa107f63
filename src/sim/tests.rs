//! The simulator over a real socket: bound on `127.0.0.1:0`, driven with reqwest.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;

use super::*;

const AUTH: &str = "/_rest/v4/authenticate";
const PORTAL_AUTH: &str = "/_rest/v4/app/sms/authenticate/get_portal_auth_token";

/// A simulator serving on loopback; dropping it shuts the server down.
struct Running {
    sim: Simulator,
    base: String,
    client: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn login_at(&self, path: &str, username: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .expect("login request")
    }

    async fn login(&self) -> String {
        let response = self.login_at(AUTH, "demo", "demo-password").await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("login JSON");
        body["token"].as_str().expect("token string").to_owned()
    }

    async fn get_with(&self, path: &str, authorization: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("authorization", authorization)
            .send()
            .await
            .expect("request")
    }
}

async fn start(config: SimConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let sim = Simulator::new(config);
    let (shutdown, stopped) = oneshot::channel::<()>();
    tokio::spawn(sim.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        sim,
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
        _shutdown: shutdown,
    }
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

async fn assert_unauthorized(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.expect("401 JSON");
    assert_eq!(body, json!({"code": 401, "error": "Unauthorized"}));
}

#[tokio::test]
async fn login_with_right_credentials_issues_a_jwt_with_a_day_of_life() {
    let running = start(SimConfig::default()).await;
    let response = running.login_at(AUTH, "demo", "demo-password").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "login answers JSON"
    );
    let body: Value = response.json().await.expect("JSON");
    let claims = claims(body["token"].as_str().expect("token"));
    assert_eq!(claims["sub"], "demo");
    assert_eq!(claims["jti"], 1);
    let crt = claims["crt"].as_u64().expect("crt");
    assert_eq!(claims["exp"].as_u64().expect("exp") - crt, 86_400);

    let portal = running.login_at(PORTAL_AUTH, "demo", "demo-password").await;
    assert_eq!(portal.status(), StatusCode::OK);
    let counters = running.sim.counters();
    assert_eq!((counters.auth_calls, counters.tokens_issued), (2, 2));
}

#[tokio::test]
async fn wrong_or_malformed_credentials_are_401() {
    let running = start(SimConfig::default()).await;
    assert_unauthorized(running.login_at(AUTH, "demo", "wrong").await).await;
    assert_unauthorized(
        running
            .login_at(PORTAL_AUTH, "someone", "demo-password")
            .await,
    )
    .await;
    let not_json = running
        .client
        .post(running.url(AUTH))
        .body("username=demo&password=demo-password")
        .send()
        .await
        .expect("request");
    assert_unauthorized(not_json).await;
    let missing_password = running
        .client
        .post(running.url(AUTH))
        .json(&json!({"username": "demo"}))
        .send()
        .await
        .expect("request");
    assert_unauthorized(missing_password).await;
    let counters = running.sim.counters();
    assert_eq!((counters.auth_calls, counters.tokens_issued), (4, 0));
    assert_eq!(
        counters.unauthorized, 0,
        "auth 401s are not token rejections"
    );
}

#[tokio::test]
async fn token_is_accepted_with_bearer_and_bare() {
    let running = start(SimConfig::default()).await;
    let token = running.login().await;
    for (authorization, scheme) in [
        (format!("Bearer {token}"), "bearer"),
        (format!("bearer {token}"), "bearer"),
        (token.clone(), "bare"),
    ] {
        let response = running.get_with("/_rest/v4/my/did", &authorization).await;
        assert_eq!(response.status(), StatusCode::OK, "{scheme}");
        let echo: Value = response.json().await.expect("echo JSON");
        assert_eq!(echo["auth"], json!({"scheme": scheme, "token_id": 1}));
    }
    let counters = running.sim.counters();
    assert_eq!((counters.api_calls, counters.unauthorized), (3, 0));
}

#[tokio::test]
async fn missing_and_unknown_tokens_are_401_and_counted() {
    let running = start(SimConfig::default()).await;
    let no_header = running
        .client
        .get(running.url("/_rest/v4/sim/ping"))
        .send()
        .await
        .expect("request");
    assert_unauthorized(no_header).await;
    assert_unauthorized(running.get_with("/_rest/v4/sim/ping", "Bearer ").await).await;
    assert_unauthorized(running.get_with("/_rest/v4/sim/ping", "Bearer nope").await).await;
    let counters = running.sim.counters();
    assert_eq!(counters.api_calls, 3);
    assert_eq!(counters.missing_token, 2);
    assert_eq!(counters.unknown_token, 1);
    assert_eq!(counters.unauthorized, 3);
}

#[tokio::test]
async fn revoke_all_rejects_earlier_tokens_but_not_later_or_static_ones() {
    let running = start(SimConfig {
        static_tokens: vec!["long-standing".to_owned()],
        ..SimConfig::default()
    })
    .await;
    let old = running.login().await;
    running.sim.revoke_all();
    assert_unauthorized(
        running
            .get_with("/_rest/v4/sim/ping", &format!("Bearer {old}"))
            .await,
    )
    .await;
    assert_eq!(running.sim.counters().revoked_token, 1);

    let new = running.login().await;
    let fresh = running
        .get_with("/_rest/v4/sim/ping", &format!("Bearer {new}"))
        .await;
    assert_eq!(fresh.status(), StatusCode::OK);

    let static_echo = running.get_with("/anything", "long-standing").await;
    assert_eq!(static_echo.status(), StatusCode::OK);
    let echo: Value = static_echo.json().await.expect("echo JSON");
    assert_eq!(echo["auth"], json!({"scheme": "bare", "token_id": 0}));
}

#[tokio::test]
async fn token_presented_after_its_short_ttl_is_expired() {
    let running = start(SimConfig {
        token_ttl: Duration::from_millis(150),
        ..SimConfig::default()
    })
    .await;
    let claims = claims(&running.login().await);
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["crt"].as_u64().expect("crt"),
        1,
        "sub-second TTLs round up to one second in the JWT"
    );
    // Valid-then-expired with a TTL long enough that a busy machine still presents the
    // token before it runs out; then real time must pass (the simulator judges expiry on
    // the monotonic clock): poll until the first 401.
    running.sim.set_token_ttl(Duration::from_secs(3));
    let authorization = format!("Bearer {}", running.login().await);
    let before = running.get_with("/_rest/v4/sim/ping", &authorization).await;
    assert_eq!(before.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let response = running.get_with("/_rest/v4/sim/ping", &authorization).await;
        if response.status() != StatusCode::OK || Instant::now() >= deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_unauthorized(after).await;
    let counters = running.sim.counters();
    assert_eq!((counters.expired_token, counters.unauthorized), (1, 1));
}

#[tokio::test]
async fn set_token_ttl_applies_to_tokens_issued_afterwards() {
    let running = start(SimConfig::default()).await;
    running.sim.set_token_ttl(Duration::from_secs(90));
    let claims = claims(&running.login().await);
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["crt"].as_u64().expect("crt"),
        90
    );
}

#[tokio::test]
async fn reauth_revokes_older_tokens_only_when_configured() {
    let invalidating = start(SimConfig {
        invalidate_on_reauth: true,
        ..SimConfig::default()
    })
    .await;
    let first = invalidating.login().await;
    let second = invalidating.login().await;
    assert_unauthorized(
        invalidating
            .get_with("/x", &format!("Bearer {first}"))
            .await,
    )
    .await;
    let current = invalidating
        .get_with("/x", &format!("Bearer {second}"))
        .await;
    assert_eq!(current.status(), StatusCode::OK);
    assert_eq!(invalidating.sim.counters().revoked_token, 1);

    let lenient = start(SimConfig::default()).await;
    let first = lenient.login().await;
    let _second = lenient.login().await;
    let still_valid = lenient.get_with("/x", &format!("Bearer {first}")).await;
    assert_eq!(still_valid.status(), StatusCode::OK);
}

#[tokio::test]
async fn opaque_tokens_are_forty_alphanumerics_and_accepted() {
    let running = start(SimConfig {
        opaque_tokens: true,
        ..SimConfig::default()
    })
    .await;
    let token = running.login().await;
    assert_eq!(token.len(), 40);
    assert!(token.chars().all(|c| c.is_ascii_alphanumeric()));
    let response = running.get_with("/x", &format!("Bearer {token}")).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn each_failing_auth_mode_answers_as_documented() {
    let running = start(SimConfig::default()).await;
    let cases = [
        (AuthMode::Down, StatusCode::SERVICE_UNAVAILABLE, Some("1")),
        (AuthMode::Error, StatusCode::INTERNAL_SERVER_ERROR, None),
        (
            AuthMode::RateLimited,
            StatusCode::TOO_MANY_REQUESTS,
            Some("2"),
        ),
        (AuthMode::Reject, StatusCode::UNAUTHORIZED, None),
        (
            AuthMode::RateLimitedFor(30),
            StatusCode::TOO_MANY_REQUESTS,
            Some("30"),
        ),
    ];
    for (mode, status, retry_after) in cases {
        running.sim.set_auth_mode(mode);
        let response = running.login_at(AUTH, "demo", "demo-password").await;
        assert_eq!(response.status(), status, "{mode:?}");
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().expect("ascii")),
            retry_after,
            "{mode:?}"
        );
        let body: Value = response.json().await.expect("JSON error body");
        assert!(body["error"].is_string(), "{mode:?}");
    }

    running.sim.set_auth_mode(AuthMode::Garbage);
    let garbage = running.login_at(AUTH, "demo", "demo-password").await;
    assert_eq!(garbage.status(), StatusCode::OK);
    let text = garbage.text().await.expect("body");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "not JSON");

    running.sim.set_auth_mode(AuthMode::EmptyToken);
    let empty = running.login_at(PORTAL_AUTH, "demo", "demo-password").await;
    assert_eq!(empty.status(), StatusCode::OK);
    assert_eq!(
        empty.json::<Value>().await.expect("JSON"),
        json!({"token": ""})
    );

    running.sim.set_auth_mode(AuthMode::Ok);
    running.login().await;
    let counters = running.sim.counters();
    assert_eq!((counters.auth_calls, counters.tokens_issued), (8, 1));
}

#[tokio::test]
async fn slow_auth_mode_waits_then_answers_normally() {
    let running = start(SimConfig::default()).await;
    running.sim.set_auth_mode(AuthMode::Slow(150));
    let started = Instant::now();
    let token = running.login().await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(!token.is_empty());
    running.sim.set_auth_mode(AuthMode::Slow(0));
    assert_unauthorized(running.login_at(AUTH, "demo", "wrong").await).await;
}

#[tokio::test]
async fn sms_send_is_accepted_and_bad_bodies_are_400() {
    let running = start(SimConfig::default()).await;
    let authorization = format!("Bearer {}", running.login().await);
    let send = |body: Value| {
        running
            .client
            .post(running.url("/_rest/v4/app/sms/send"))
            .header("authorization", &authorization)
            .json(&body)
            .send()
    };
    let accepted = send(json!({"from": "+15550001", "to": "+15550002", "text": "hi"}))
        .await
        .expect("request");
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let body: Value = accepted.json().await.expect("JSON");
    assert_eq!(body["state"], "CREATED");
    let refid = body["refid"].as_str().expect("refid");
    assert_eq!(refid.len(), 34);
    assert!(refid.starts_with("SM"));
    assert!(refid[2..].chars().all(|c| c.is_ascii_hexdigit()));

    for bad in [
        json!({"from": "+1", "to": "+2"}),
        json!({"from": 1, "to": "+2", "text": "x"}),
    ] {
        let response = send(bad).await.expect("request");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["code"], 400);
    }
    let not_json = running
        .client
        .post(running.url("/_rest/v4/app/sms/send"))
        .header("authorization", &authorization)
        .body("hello")
        .send()
        .await
        .expect("request");
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);

    let without_token = running
        .client
        .post(running.url("/_rest/v4/app/sms/send"))
        .json(&json!({"from": "+1", "to": "+2", "text": "x"}))
        .send()
        .await
        .expect("request");
    assert_unauthorized(without_token).await;
}

#[tokio::test]
async fn echo_describes_the_request_without_the_authorization_header() {
    let running = start(SimConfig::default()).await;
    let token = running.login().await;
    // Above axum's default 2 MB extractor limit: the echo must stream.
    let body: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let response = running
        .client
        .put(running.url("/_rest/v4/my/did/sms/123?page=2&to=%2B1555"))
        .header("authorization", format!("Bearer {token}"))
        .header("proxy-authorization", "Bearer client-key")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("X-Custom", "Value")
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = response.json().await.expect("JSON");
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/_rest/v4/my/did/sms/123");
    assert_eq!(echo["query"], "page=2&to=%2B1555");
    assert_eq!(echo["headers"]["x-multi"], "one, two");
    assert_eq!(echo["headers"]["x-custom"], "Value");
    assert_eq!(echo["headers"]["proxy-authorization"], "Bearer client-key");
    assert!(echo["headers"].get("authorization").is_none());
    assert!(
        !echo.to_string().contains(&token),
        "the token is never echoed"
    );
    assert_eq!(echo["auth"], json!({"scheme": "bearer", "token_id": 1}));
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(echo["body_sha256"], hex::encode(Sha256::digest(&body)));

    let bare_get = running.get_with("/plain", &token).await;
    let echo: Value = bare_get.json().await.expect("JSON");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["query"], Value::Null);
    assert_eq!(echo["body_len"], 0);
    assert_eq!(echo["body_sha256"], hex::encode(Sha256::digest(b"")));
}

#[tokio::test]
async fn ping_and_byte_stream_answer_behind_the_token_check() {
    let running = start(SimConfig::default()).await;
    let authorization = format!("Bearer {}", running.login().await);
    let ping = running.get_with("/_rest/v4/sim/ping", &authorization).await;
    assert_eq!(ping.status(), StatusCode::OK);
    assert_eq!(ping.headers()["content-type"], "text/plain");
    assert_eq!(ping.text().await.expect("body"), "ok");

    let length = 200_000_usize;
    let stream = running
        .get_with(&format!("/_rest/v4/sim/bytes/{length}"), &authorization)
        .await;
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "application/octet-stream");
    assert_eq!(stream.content_length(), Some(length as u64));
    let bytes = stream.bytes().await.expect("body");
    assert_eq!(bytes.len(), length);
    assert!(bytes.iter().enumerate().all(|(i, &b)| b == (i % 256) as u8));

    let empty = running
        .get_with("/_rest/v4/sim/bytes/0", &authorization)
        .await;
    assert_eq!(empty.bytes().await.expect("body").len(), 0);
    for bad in ["/_rest/v4/sim/bytes/1073741825", "/_rest/v4/sim/bytes/lots"] {
        let response = running.get_with(bad, &authorization).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_unauthorized(
        running
            .get_with("/_rest/v4/sim/bytes/10", "Bearer nope")
            .await,
    )
    .await;
}

#[tokio::test]
async fn latency_delays_api_paths_only() {
    let running = start(SimConfig::default()).await;
    // A latency no test run could mistake for load: auth and control must answer well
    // inside it, and the API ping must still be pending long after they did.
    running.sim.set_latency(Duration::from_secs(60));
    let undelayed = Duration::from_secs(10);
    let token = tokio::time::timeout(undelayed, running.login())
        .await
        .expect("auth is not delayed");
    let counters = tokio::time::timeout(
        undelayed,
        running.client.get(running.url("/__sim/counters")).send(),
    )
    .await
    .expect("control is not delayed")
    .expect("request");
    assert_eq!(counters.status(), StatusCode::OK);

    let authorization = format!("Bearer {token}");
    let ping = running.get_with("/_rest/v4/sim/ping", &authorization);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), ping)
            .await
            .is_err(),
        "the API ping waits out the latency"
    );
}

#[tokio::test]
async fn control_paths_drive_the_switches_without_a_token() {
    let running = start(SimConfig::default()).await;
    let control = |method: reqwest::Method, path: &str, body: &str| {
        running
            .client
            .request(method, running.url(path))
            .body(body.to_owned())
            .send()
    };
    let token = running.login().await;
    assert_unauthorized(running.get_with("/x", "Bearer nope").await).await;

    let counters: Counters = control(reqwest::Method::GET, "/__sim/counters", "")
        .await
        .expect("request")
        .json()
        .await
        .expect("counters JSON");
    assert_eq!(counters.auth_calls, 1);
    assert_eq!(counters.unknown_token, 1);

    let reset = control(reqwest::Method::POST, "/__sim/reset", "")
        .await
        .expect("request");
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    assert_eq!(running.sim.counters(), Counters::default());

    let revoke = control(reqwest::Method::POST, "/__sim/revoke", "")
        .await
        .expect("request");
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    assert_unauthorized(running.get_with("/x", &token).await).await;
    assert_eq!(running.sim.counters().revoked_token, 1);

    let down = control(reqwest::Method::PUT, "/__sim/auth-mode", "\"down\"")
        .await
        .expect("request");
    assert_eq!(down.status(), StatusCode::NO_CONTENT);
    assert_eq!(running.sim.state.auth_mode(), AuthMode::Down);
    let slow = control(
        reqwest::Method::PUT,
        "/__sim/auth-mode",
        r#"{"slow": 1500}"#,
    )
    .await
    .expect("request");
    assert_eq!(slow.status(), StatusCode::NO_CONTENT);
    assert_eq!(running.sim.state.auth_mode(), AuthMode::Slow(1500));

    let latency = control(reqwest::Method::PUT, "/__sim/latency", r#"{"ms": 25}"#)
        .await
        .expect("request");
    assert_eq!(latency.status(), StatusCode::NO_CONTENT);
    assert_eq!(running.sim.state.latency(), Duration::from_millis(25));

    for (body, ttl) in [
        (r#"{"secs": 60}"#, Duration::from_secs(60)),
        (r#"{"ms": 250}"#, Duration::from_millis(250)),
    ] {
        let response = control(reqwest::Method::PUT, "/__sim/token-ttl", body)
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{body}");
        assert_eq!(running.sim.state.token_ttl(), ttl);
    }

    for (path, body) in [
        ("/__sim/auth-mode", "\"sideways\""),
        ("/__sim/latency", "{}"),
        ("/__sim/token-ttl", r#"{"secs": 1, "ms": 1}"#),
        ("/__sim/token-ttl", "{}"),
        ("/__sim/token-ttl", r#"{"minutes": 1}"#),
    ] {
        let response = control(reqwest::Method::PUT, path, body)
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path} {body}");
    }
    let unknown = control(reqwest::Method::GET, "/__sim/nothing", "")
        .await
        .expect("request");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        running.sim.counters().api_calls,
        1,
        "only the revoked-token call since the reset: control paths are not API calls"
    );
}

#[tokio::test]
async fn serve_returns_once_shutdown_resolves() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Simulator::new(SimConfig::default()).serve(listener, async move {
            let _ = stopped.await;
        }),
    );
    shutdown.send(()).expect("server still running");
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns promptly")
        .expect("task did not panic");
    assert!(result.is_ok());
}

#[tokio::test]
async fn debug_output_shows_neither_tokens_nor_password() {
    let running = start(SimConfig {
        static_tokens: vec!["static-secret".to_owned()],
        ..SimConfig::default()
    })
    .await;
    let token = running.login().await;
    let debug = format!("{:?}", running.sim);
    assert!(!debug.contains(&token));
    assert!(!debug.contains("static-secret"));
    assert!(!debug.contains("demo-password"));
    let config = SimConfig {
        static_tokens: vec!["static-secret".to_owned()],
        ..SimConfig::default()
    };
    let debug = format!("{config:?}");
    assert!(!debug.contains("static-secret"));
    assert!(!debug.contains("demo-password"));
}

#[test]
fn auth_mode_json_matches_the_control_api() {
    assert_eq!(
        serde_json::to_value(AuthMode::Down).expect("json"),
        json!("down")
    );
    assert_eq!(
        serde_json::to_value(AuthMode::EmptyToken).expect("json"),
        json!("empty_token")
    );
    assert_eq!(
        serde_json::to_value(AuthMode::RateLimited).expect("json"),
        json!("rate_limited")
    );
    assert_eq!(
        serde_json::from_value::<AuthMode>(json!({"slow": 1500})).expect("json"),
        AuthMode::Slow(1500)
    );
    assert_eq!(
        serde_json::from_value::<AuthMode>(json!({"rate_limited_for": 30})).expect("json"),
        AuthMode::RateLimitedFor(30)
    );
}

#[tokio::test]
async fn an_sms_from_a_number_the_account_does_not_own_is_401_to_a_valid_token() {
    let running = start(SimConfig {
        numbers: vec!["+15550001111".to_owned()],
        ..SimConfig::default()
    })
    .await;
    let token = running.login().await;
    let send = |from: &'static str| {
        running
            .client
            .post(running.url("/_rest/v4/app/sms/send"))
            .header("authorization", format!("Bearer {token}"))
            .json(&json!({"from": from, "to": "+15550002222", "text": "hi"}))
            .send()
    };
    assert_eq!(send("+15550001111").await.expect("send").status(), 202);
    assert_unauthorized(send("+15559999999").await.expect("send")).await;
    let counters = running.sim.counters();
    assert_eq!(counters.rejected_content, 1);
    assert_eq!(counters.unauthorized, 0, "the token itself was fine");

    // The control path changes the numbers; an empty list accepts any number.
    let response = running
        .client
        .put(running.url("/__sim/numbers"))
        .body("[]")
        .send()
        .await
        .expect("control");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(send("+15559999999").await.expect("send").status(), 202);
}

#[tokio::test]
async fn a_changed_password_is_the_only_one_accepted() {
    let running = start(SimConfig::default()).await;
    running.sim.set_password("rotated");
    assert_unauthorized(running.login_at(AUTH, "demo", "demo-password").await).await;
    let response = running.login_at(AUTH, "demo", "rotated").await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn serves_http2_with_prior_knowledge() {
    let running = start(SimConfig::default()).await;
    let token = running.login().await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let response = client
        .get(running.url("/_rest/v4/sim/ping"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
}
