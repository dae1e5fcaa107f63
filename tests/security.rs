//! The proxy as an outsider attacks it, over real sockets: without a key, with a wrong
//! key, with rotated keys, outside the allowlist, with crafted paths, oversized and
//! malformed request heads, slow clients; and secrets kept out of everything it prints.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{Proxy, Sim, client, raw_request, raw_status, vars};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "app-one-key-4f1c9e";
const OTHER_KEY: &str = "app-two-key-77ab02";
/// A path the simulator echoes back (method, path, headers but `Authorization`).
const ECHO_PATH: &str = "/_rest/v4/my/did";

fn digest_line(key: &str) -> String {
    format!("{}\n", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A keys file in a temp dir (kept alive by the returned guard).
fn keys_file(content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("client-keys");
    std::fs::write(&path, content).expect("write keys file");
    (dir, path)
}

async fn proxy_with_keys(sim: &Sim, keys: &Path) -> Proxy {
    let mut all = sim.vars();
    all.extend(vars(&[(
        "IPPROXY_ACCESS__KEYS_FILE",
        &keys.display().to_string(),
    )]));
    Proxy::start(all).await
}

async fn get_with_key(proxy: &Proxy, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = client().get(proxy.url(path));
    if let Some(key) = key {
        request = request.header("proxy-authorization", format!("Bearer {key}"));
    }
    request.send().await.expect("request reaches the proxy")
}

// --- inbound keys ---

#[tokio::test]
async fn missing_or_wrong_key_gets_407_asking_for_bearer() {
    let sim = Sim::default().await;
    let (_dir, keys) = keys_file(&format!("# app one\n{}", digest_line(KEY)));
    let proxy = proxy_with_keys(&sim, &keys).await;

    for key in [None, Some("not-the-key"), Some(OTHER_KEY)] {
        let response = get_with_key(&proxy, ECHO_PATH, key).await;
        assert_eq!(response.status(), 407, "{key:?}");
        assert_eq!(response.headers()["proxy-authenticate"], "Bearer");
        let text = response.text().await.expect("body");
        let body: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(body["error"], "proxy_auth_required");
        if let Some(key) = key {
            assert!(!text.contains(key), "the error body echoes the key: {text}");
        }
    }
    // Another scheme, or the digest itself, is no key either.
    let response = client()
        .get(proxy.url(ECHO_PATH))
        .header("proxy-authorization", format!("Basic {KEY}"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 407);
    let digest = digest_line(KEY);
    let response = get_with_key(&proxy, ECHO_PATH, Some(digest.trim())).await;
    assert_eq!(response.status(), 407);
    assert_eq!(sim.counters().api_calls, 0, "nothing reached the upstream");
}

#[tokio::test]
async fn right_key_is_let_in_and_never_forwarded() {
    let sim = Sim::default().await;
    let (_dir, keys) = keys_file(&format!("{}{}", digest_line(OTHER_KEY), digest_line(KEY)));
    let proxy = proxy_with_keys(&sim, &keys).await;

    let response = get_with_key(&proxy, ECHO_PATH, Some(KEY)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let echo: Value = serde_json::from_str(&text).expect("echo json");
    assert_eq!(echo["path"], ECHO_PATH);
    let headers = echo["headers"].as_object().expect("echoed headers");
    assert!(
        !headers.contains_key("proxy-authorization"),
        "the client key reached the upstream: {headers:?}"
    );
    assert!(!text.contains(KEY), "{text}");
    assert_eq!(
        echo["auth"]["scheme"], "bearer",
        "the proxy's token was used"
    );
}

#[tokio::test]
async fn the_key_is_checked_before_the_path() {
    let sim = Sim::default().await;
    let (_dir, keys) = keys_file(&digest_line(KEY));
    let toml = format!(
        "[access]\nkeys_file = {:?}\nallow = [\"/_rest/v4/app/sms/\"]\n",
        keys.display().to_string()
    );
    let proxy = Proxy::start_with_file(&toml, sim.vars()).await;
    // Without a key, a crafted path and a forbidden one look the same: 407.
    for head in [
        format!(
            "GET /_rest/v4/app/sms/../../my HTTP/1.1\r\nHost: {}",
            proxy.addr
        ),
        format!("GET /_rest/v4/my/did HTTP/1.1\r\nHost: {}", proxy.addr),
    ] {
        assert_eq!(
            raw_status(&raw_request(proxy.addr, &head).await),
            407,
            "{head}"
        );
    }
    // With the key, each gets its own answer.
    let with_key = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: Bearer {KEY}",
            proxy.addr
        )
    };
    let crafted = raw_request(proxy.addr, &with_key("/_rest/v4/app/sms/../../my")).await;
    assert_eq!(raw_status(&crafted), 400);
    let forbidden = raw_request(proxy.addr, &with_key("/_rest/v4/my/did")).await;
    assert_eq!(raw_status(&forbidden), 403);
    assert_eq!(sim.counters().api_calls, 0);
}

#[tokio::test]
async fn malformed_keys_file_stops_the_start_naming_the_line_not_its_content() {
    let sim = Sim::default().await;
    let raw_key_pasted_by_mistake = "sk_live_raw_key_in_the_digest_file";
    let (_dir, keys) = keys_file(&format!(
        "# apps\n{}{raw_key_pasted_by_mistake}\n",
        digest_line(KEY)
    ));
    let mut all = sim.vars();
    all.extend(vars(&[(
        "IPPROXY_ACCESS__KEYS_FILE",
        &keys.display().to_string(),
    )]));
    let config = ipproxy::config::load(None, all).expect("the file exists, so config is valid");
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let served = tokio::time::timeout(
        Duration::from_secs(5),
        ipproxy::serve(
            config,
            ipproxy::Listeners { proxy, admin },
            std::future::pending(),
        ),
    )
    .await
    .expect("serve returns at once");
    let message = served.expect_err("a malformed keys file").to_string();
    assert!(message.contains("access.keys_file"), "{message}");
    assert!(message.contains("line 3"), "{message}");
    assert!(!message.contains(raw_key_pasted_by_mistake), "{message}");
}

// --- allowlist and crafted paths ---

const ALLOW_TOML: &str = r#"
[access]
allow = ["/_rest/v4/app/sms/", { prefix = "/_rest/v4/my/", methods = ["GET"] }]
"#;

#[tokio::test]
async fn allowlist_admits_listed_prefixes_and_methods_only() {
    let sim = Sim::default().await;
    let proxy = Proxy::start_with_file(ALLOW_TOML, sim.vars()).await;
    let client = client();

    let allowed = client
        .get(proxy.url("/_rest/v4/my/did"))
        .send()
        .await
        .expect("request");
    assert_eq!(allowed.status(), 200);

    for (method, path) in [
        (http::Method::GET, "/_rest/v4/numbers/purchase"),
        (http::Method::GET, "/_rest/v4/mystery"),
        (http::Method::GET, "/_rest/v4/app/smsx"),
        (http::Method::DELETE, "/_rest/v4/my/did"),
        (http::Method::POST, "/_rest/v4/my/did"),
    ] {
        let response = client
            .request(method.clone(), proxy.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 403, "{method} {path}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], "path_not_allowed");
    }
    assert_eq!(
        sim.counters().api_calls,
        1,
        "only the allowed request went up"
    );
}

#[tokio::test]
async fn crafted_paths_are_refused_and_never_reach_the_upstream() {
    let sim = Sim::default().await;
    let proxy = Proxy::start_with_file(ALLOW_TOML, sim.vars()).await;
    for path in [
        "/_rest/v4/app/sms/../../numbers/purchase",
        "/_rest/v4/app/sms/%2e%2e/%2e%2e/numbers/purchase",
        "/_rest/v4/app/sms/%2E%2e/x",
        "/_rest/v4/app/sms/.%2e/x",
        "/_rest/v4/app/sms/./send",
        "/_rest/v4/app/sms/..%2fnumbers",
        "/_rest/v4/app/sms%2f..%2f..%2fnumbers",
        "/_rest/v4/app/sms/%252e%252e/x",
        "/_rest/v4/app/sms//send",
        "//_rest/v4/app/sms/send",
        "/_rest/v4/app/sms/..\\..\\numbers",
        "/_rest/v4/app/sms/%5c..%5cnumbers",
        "/_rest/v4/app/sms/send%00",
        "*",
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}", proxy.addr);
        let response = raw_request(proxy.addr, &head).await;
        let status = raw_status(&response);
        assert_eq!(status, 400, "{path}: {response}");
    }
    assert_eq!(sim.counters().api_calls, 0, "no crafted path was forwarded");
}

#[tokio::test]
async fn absolute_form_and_connect_cannot_turn_it_into_an_open_proxy() {
    let sim = Sim::default().await;
    let proxy = Proxy::start(sim.vars()).await;
    // The authority of an absolute-form target is ignored: it still goes to the
    // configured upstream (here the simulator), never to the named host.
    let head = format!("GET http://attacker.invalid{ECHO_PATH} HTTP/1.1\r\nHost: attacker.invalid");
    let response = raw_request(proxy.addr, &head).await;
    assert_eq!(raw_status(&response), 200, "{response}");
    assert!(
        response.contains(r#""path":"/_rest/v4/my/did""#),
        "{response}"
    );
    assert_eq!(sim.counters().api_calls, 1);
    // CONNECT has no path: refused.
    let head = "CONNECT attacker.invalid:443 HTTP/1.1\r\nHost: attacker.invalid:443";
    let status = raw_status(&raw_request(proxy.addr, head).await);
    assert!((400..500).contains(&status), "CONNECT answered {status}");
    assert_eq!(sim.counters().api_calls, 1);
}

// --- input limits ---

/// Writes `request` on a fresh connection and reads until the proxy closes it (at most
/// 5 s). A write error is fine (the proxy may answer and close before reading all of
/// an oversized head); so is a reset after the answer.
async fn send_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(read)) = tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk)).await
    {
        if read == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// The status of a raw response; 0 when the connection closed without one.
fn status_or_zero(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

async fn still_serving(proxy: &Proxy) {
    let response = client()
        .get(proxy.url(ECHO_PATH))
        .send()
        .await
        .expect("the proxy still answers");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn oversized_request_heads_get_4xx_and_the_proxy_keeps_serving() {
    let sim = Sim::default().await;
    let proxy = Proxy::start(sim.vars()).await;
    let host = proxy.addr;

    let many_headers: String = (0..200).map(|n| format!("x-h{n}: v\r\n")).collect();
    let huge_header = format!("x-big: {}\r\n", "a".repeat(80 * 1024));
    let long_uri = format!("{ECHO_PATH}/{}", "a".repeat(80 * 1024));
    let cases = [
        (
            "200 headers",
            format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: {host}\r\n{many_headers}\r\n"),
        ),
        (
            "an 80 KiB header",
            format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: {host}\r\n{huge_header}\r\n"),
        ),
        (
            "an 80 KiB URI",
            format!("GET {long_uri} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        ),
    ];
    for (what, request) in cases {
        let response = send_raw(proxy.addr, request.as_bytes()).await;
        let status = status_or_zero(&response);
        assert!(
            (400..500).contains(&status),
            "{what}: expected a 4xx, got {status}: {}",
            response.lines().next().unwrap_or("")
        );
    }
    assert_eq!(
        sim.counters().api_calls,
        0,
        "nothing oversized went upstream"
    );
    still_serving(&proxy).await;
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let sim = Sim::default().await;
    let proxy = Proxy::start(sim.vars()).await;
    let host = proxy.addr;
    for request in [
        "GARBAGE\r\n\r\n".to_owned(),
        "GET\r\n\r\n".to_owned(),
        format!("GET {ECHO_PATH} HTTP/1.1 extra\r\nHost: {host}\r\n\r\n"),
        format!("GET {ECHO_PATH} HTTX/1.1\r\nHost: {host}\r\n\r\n"),
        format!("G\u{0}T {ECHO_PATH} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: {host}\r\nno-colon-here\r\n\r\n"),
        format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: {host}\r\nbad name: v\r\n\r\n"),
        format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: {host}\r\nx: a\u{0}b\r\n\r\n"),
        format!(
            "POST {ECHO_PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\
             Content-Length: 7\r\n\r\nhello"
        ),
        format!("POST {ECHO_PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Length: -1\r\n\r\n"),
        format!(
            "POST {ECHO_PATH} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n\
             zz\r\nhello\r\n0\r\n\r\n"
        ),
    ] {
        let response = send_raw(proxy.addr, request.as_bytes()).await;
        let status = status_or_zero(&response);
        assert_eq!(status, 400, "{request:?}: {response}");
    }
    assert_eq!(sim.counters().api_calls, 0);
    still_serving(&proxy).await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let sim = Sim::default().await;
    let mut all = sim.vars();
    all.extend(vars(&[("IPPROXY_SERVER__HEADER_READ_TIMEOUT", "500ms")]));
    let proxy = Proxy::start(all).await;

    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: x\r\nx-slow: ").as_bytes())
        .await
        .expect("write a partial head");
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection is still open after 3 s");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "closed after {waited:?}, expected about 500 ms"
    );
    assert!(
        waited >= Duration::from_millis(300),
        "closed too early, after {waited:?}"
    );
    assert_eq!(sim.counters().api_calls, 0);
    still_serving(&proxy).await;
}

// --- secrets never printed ---

const PASSWORD: &str = "pw-never-print-3e8d";
const TOKEN: &str = "tok-never-print-91c2";

fn secret_config_toml() -> String {
    format!(
        "[auth]\nusername = \"api-user\"\npassword = \"{PASSWORD}\"\n\
         [credentials.fixed]\nkind = \"static\"\ntoken = \"{TOKEN}\"\n\
         [[route]]\nprefix = \"/\"\n"
    )
}

#[test]
fn debug_output_of_a_loaded_config_shows_no_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ipproxy.toml");
    std::fs::write(&file, secret_config_toml()).expect("write config");
    let config = ipproxy::config::load(Some(&file), Vec::new()).expect("valid config");
    for text in [format!("{config:?}"), format!("{config:#?}")] {
        assert!(!text.contains(PASSWORD), "password in Debug output");
        assert!(!text.contains(TOKEN), "token in Debug output");
    }
}

#[test]
fn check_prints_every_secret_as_stars() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ipproxy.toml");
    std::fs::write(&file, secret_config_toml()).expect("write config");
    let (_keys_dir, keys) = keys_file(&digest_line(KEY));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ipproxy"))
        .arg("check")
        .arg("--config")
        .arg(&file)
        .env_clear()
        .env("IPPROXY_ACCESS__KEYS_FILE", &keys)
        .output()
        .expect("run ipproxy check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for secret in [PASSWORD, TOKEN, KEY, digest_line(KEY).trim()] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}"
        );
    }
    assert!(stdout.contains("password = \"***\""), "{stdout}");
    assert!(stdout.contains("token = \"***\""), "{stdout}");
}
