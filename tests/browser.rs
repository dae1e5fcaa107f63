//! Browsers on the proxy port, over real loopback sockets: a web page must not be able
//! to act with the account's token. A request from a page (`Origin`, or
//! `Sec-Fetch-Site` other than `none`) is refused `403 cross_site_request` unless its
//! origin is in `access.allow_origins`; a `Host` (HTTP/1) or `:authority` (HTTP/2)
//! that is not one of the proxy's names, what a DNS-rebound page sends, is refused
//! `421 misdirected_request`; both before any token is touched and with nothing
//! forwarded. The default header sets of server-side clients pass.
//!
//! These proxies set their own `access.allow_hosts`, so the placeholder names other
//! test files send (support::TEST_ALLOW_HOSTS) are refused here like any other.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use ipproxy::sim::AuthMode;
use serde_json::Value;
use support::child::ChildProxy;
use support::{Proxy, Sim, client, eventually, raw_request, raw_status, vars};
use tokio::net::TcpStream;

/// A path the simulator echoes back.
const ECHO_PATH: &str = "/_rest/v4/my/did";
const SMS_PATH: &str = "/_rest/v4/app/sms/send";
const SMS_BODY: &str = r#"{"from":"15550001111","to":"15550002222","text":"hi"}"#;
/// The origin `access.allow_origins` lists in these tests (a dev server's).
const APP_ORIGIN: &str = "http://localhost:5173";
/// The name `access.allow_hosts` lists in these tests (a Kubernetes Service's).
const SERVICE_HOST: &str = "ipproxy.prod.svc";

/// The settings of these tests' proxies: one allowed origin, one allowed host.
fn browser_settings() -> Vec<(String, String)> {
    vars(&[
        (
            "IPPROXY_ACCESS__ALLOW_ORIGINS",
            &format!("[\"{APP_ORIGIN}\"]"),
        ),
        (
            "IPPROXY_ACCESS__ALLOW_HOSTS",
            &format!("[\"{SERVICE_HOST}\"]"),
        ),
    ])
}

async fn proxy_for(sim: &Sim) -> Proxy {
    let mut all = sim.vars();
    all.extend(browser_settings());
    Proxy::start(all).await
}

/// `POST /_rest/v4/app/sms/send` as raw HTTP/1.1 with `Host: host` and `headers`
/// (lines without the final CRLF), body [`SMS_BODY`].
fn sms_post(host: &str, headers: &[&str]) -> String {
    let mut head = format!("POST {SMS_PATH} HTTP/1.1\r\nHost: {host}");
    for header in headers {
        head.push_str("\r\n");
        head.push_str(header);
    }
    head.push_str(&format!("\r\nContent-Length: {}", SMS_BODY.len()));
    head
}

/// Sends `head` (and, for a POST, [`SMS_BODY`]) on a fresh connection; the raw answer.
async fn send(addr: SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let body = if head.starts_with("POST") {
        SMS_BODY
    } else {
        ""
    };
    let request = format!("{head}\r\nConnection: close\r\n\r\n{body}");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("an answer within 30 s")
    .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// The JSON body of a raw HTTP/1 answer.
fn json_body(response: &str) -> Value {
    let (_, body) = response.split_once("\r\n\r\n").expect("a body");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// Status and `error` code of a raw answer.
fn refusal(response: &str) -> (u16, Value) {
    (raw_status(response), json_body(response)["error"].clone())
}

// --- Origin and Sec-Fetch-Site ---

#[tokio::test]
async fn a_cross_site_text_plain_post_is_403_before_any_token_is_touched() {
    // Logins fail: a request that got as far as the token would be `503
    // token_unavailable` (the control below), so a 403 shows the check came first.
    let sim = Sim::default().await;
    sim.sim.set_auth_mode(AuthMode::Down);
    let proxy = proxy_for(&sim).await;
    let host = proxy.addr.to_string();
    let page = sms_post(
        &host,
        &[
            "Content-Type: text/plain",
            "Origin: http://evil.example",
            "Sec-Fetch-Site: cross-site",
            "Sec-Fetch-Mode: no-cors",
        ],
    );
    let response = send(proxy.addr, &page).await;
    assert_eq!(
        refusal(&response),
        (403, "cross_site_request".into()),
        "{response}"
    );
    assert!(
        !json_body(&response)["request_id"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );
    let control = send(proxy.addr, &sms_post(&host, &["Content-Type: text/plain"])).await;
    assert_eq!(
        refusal(&control),
        (503, "token_unavailable".into()),
        "{control}"
    );
    assert_eq!(sim.counters().api_calls, 0, "nothing reached the upstream");
}

#[tokio::test]
async fn refused_requests_forward_nothing_and_trigger_no_login() {
    // The proxy holds a token, which the simulator then revokes: a request that got
    // past the checks would be forwarded, answered 401 and make the proxy log in.
    let sim = Sim::default().await;
    let proxy = proxy_for(&sim).await;
    let ready = eventually(std::time::Duration::from_secs(30), || {
        let url = proxy.admin_url("/readyz");
        async move {
            client()
                .get(url)
                .send()
                .await
                .is_ok_and(|response| response.status() == 200)
        }
    })
    .await;
    assert!(ready, "the proxy holds a token");
    sim.sim.revoke_all();
    let before = sim.counters();
    let host = proxy.addr.to_string();
    for head in [
        sms_post(
            &host,
            &[
                "Content-Type: text/plain",
                "Origin: http://evil.example",
                "Sec-Fetch-Site: cross-site",
            ],
        ),
        sms_post(&host, &["Sec-Fetch-Site: same-site"]),
        sms_post(
            "rebind.attacker.example:8080",
            &["Content-Type: text/plain"],
        ),
        format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: rebind.attacker.example:8080"),
    ] {
        let status = raw_status(&send(proxy.addr, &head).await);
        assert!(status == 403 || status == 421, "{status}: {head}");
    }
    let after = sim.counters();
    assert_eq!(after.api_calls, before.api_calls, "nothing was forwarded");
    assert_eq!(
        after.auth_calls, before.auth_calls,
        "no login was attempted"
    );
    assert_eq!(after.tokens_issued, before.tokens_issued);
}

#[tokio::test]
async fn only_sec_fetch_site_none_or_a_listed_origin_passes() {
    let sim = Sim::default().await;
    let proxy = proxy_for(&sim).await;
    let host = proxy.addr.to_string();
    for (what, headers) in [
        ("same-origin alone", vec!["Sec-Fetch-Site: same-origin"]),
        ("same-site alone", vec!["Sec-Fetch-Site: same-site"]),
        ("cross-site alone", vec!["Sec-Fetch-Site: cross-site"]),
        ("an unlisted Origin", vec!["Origin: http://localhost:3000"]),
        (
            "Origin null",
            vec!["Origin: null", "Sec-Fetch-Site: cross-site"],
        ),
        (
            "a listed and an unlisted Origin",
            vec![
                "Origin: http://localhost:5173",
                "Origin: http://evil.example",
            ],
        ),
    ] {
        let response = send(proxy.addr, &sms_post(&host, &headers)).await;
        assert_eq!(
            refusal(&response),
            (403, "cross_site_request".into()),
            "{what}"
        );
    }
    assert_eq!(
        sim.counters().api_calls,
        0,
        "no refused request went upstream"
    );

    for (what, headers) in [
        (
            "a typed URL",
            vec!["Sec-Fetch-Site: none", "Sec-Fetch-Mode: navigate"],
        ),
        (
            "the listed origin",
            vec![
                "Origin: http://localhost:5173",
                "Sec-Fetch-Site: cross-site",
            ],
        ),
        (
            "the listed origin, same-origin",
            vec![
                "Origin: http://localhost:5173",
                "Sec-Fetch-Site: same-origin",
            ],
        ),
    ] {
        let response = send(proxy.addr, &sms_post(&host, &headers)).await;
        assert_eq!(raw_status(&response), 202, "{what}: {response}");
    }
    assert_eq!(sim.counters().api_calls, 3);
}

#[tokio::test]
async fn the_default_headers_of_server_side_clients_pass() {
    let sim = Sim::default().await;
    let proxy = proxy_for(&sim).await;
    let host = proxy.addr.to_string();
    // Each library's default request headers (as captured from the library itself),
    // less Host, Content-Length and Connection, which `send` writes.
    let clients: [(&str, &[&str]); 6] = [
        ("curl 8", &["User-Agent: curl/8.5.0", "Accept: */*"]),
        (
            "Python requests",
            &[
                "User-Agent: python-requests/2.31.0",
                "Accept-Encoding: gzip, deflate",
                "Accept: */*",
            ],
        ),
        (
            // undici adds Sec-Fetch-Mode (the fetch standard), never Sec-Fetch-Site.
            "Node fetch (undici)",
            &[
                "accept: */*",
                "accept-language: *",
                "sec-fetch-mode: cors",
                "user-agent: node",
                "accept-encoding: gzip, deflate",
            ],
        ),
        (
            "Java HttpClient",
            &[
                "HTTP2-Settings: AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA",
                "Upgrade: h2c",
                "User-Agent: Java-http-client/21.0.2",
            ],
        ),
        (
            "Go net/http",
            &["User-Agent: Go-http-client/1.1", "Accept-Encoding: gzip"],
        ),
        ("reqwest", &["accept: */*"]),
    ];
    for (what, headers) in clients {
        let mut headers = headers.to_vec();
        headers.push("Content-Type: application/json");
        let response = send(proxy.addr, &sms_post(&host, &headers)).await;
        assert_eq!(raw_status(&response), 202, "{what}: {response}");
        let get = format!(
            "GET {ECHO_PATH} HTTP/1.1\r\nHost: {host}\r\n{}",
            headers.join("\r\n")
        );
        let response = send(proxy.addr, &get).await;
        assert_eq!(raw_status(&response), 200, "{what} GET: {response}");
    }
    // And a real client, for good measure.
    let response = client()
        .post(proxy.url(SMS_PATH))
        .header("content-type", "application/json")
        .body(SMS_BODY)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 202);
}

// --- Host ---

#[tokio::test]
async fn a_rebound_host_is_421_and_nothing_is_forwarded() {
    let sim = Sim::default().await;
    let proxy = proxy_for(&sim).await;
    for head in [
        format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: rebind.attacker.example:8080"),
        format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: rebind.attacker.example"),
        format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: localhost.attacker.example"),
        format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: {SERVICE_HOST}.attacker.example"),
        // The placeholder names of the other test files are not this proxy's.
        format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: x"),
        // Absolute form: the target's authority is checked too.
        format!(
            "GET http://rebind.attacker.example:8080{ECHO_PATH} HTTP/1.1\r\nHost: {}",
            proxy.addr
        ),
        sms_post(
            "rebind.attacker.example:8080",
            &["Content-Type: text/plain"],
        ),
    ] {
        let response = send(proxy.addr, &head).await;
        assert_eq!(
            refusal(&response),
            (421, "misdirected_request".into()),
            "{head}"
        );
    }
    assert_eq!(sim.counters().api_calls, 0, "nothing reached the upstream");
}

#[tokio::test]
async fn loopback_names_the_listen_address_and_allow_hosts_pass() {
    let sim = Sim::default().await;
    let proxy = proxy_for(&sim).await;
    let port = proxy.addr.port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "[::1]".to_owned(),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
        // A published port: the client names the outside port.
        "127.0.0.1:18080".to_owned(),
        format!("{SERVICE_HOST}:8080"),
        SERVICE_HOST.to_uppercase(),
    ] {
        let head = format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: {host}");
        let response = raw_request(proxy.addr, &head).await;
        assert_eq!(raw_status(&response), 200, "{host}: {response}");
    }
    // No Host at all (HTTP/1.0): no browser sends that.
    let response = send(proxy.addr, &format!("GET {ECHO_PATH} HTTP/1.0")).await;
    assert_eq!(raw_status(&response), 200, "{response}");
}

#[tokio::test]
async fn two_host_headers_are_400_and_nothing_is_forwarded() {
    let sim = Sim::default().await;
    let proxy = proxy_for(&sim).await;
    let host = proxy.addr;
    for head in [
        format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: {host}\r\nHost: {host}"),
        format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: {host}\r\nHost: rebind.attacker.example"),
        format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: {host}, {host}"),
    ] {
        let response = send(proxy.addr, &head).await;
        assert_eq!(
            refusal(&response),
            (400, "bad_request".into()),
            "{head}: {response}"
        );
    }
    assert_eq!(sim.counters().api_calls, 0);
}

/// An HTTP/2 request with prior knowledge (h2c) and `:authority` `authority`.
async fn h2_status(addr: SocketAddr, authority: &str) -> (u16, Value) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let mut send = send.ready().await.expect("ready");
    let request = http::Request::get(format!("http://{authority}{ECHO_PATH}"))
        .body(())
        .expect("request");
    let (response, _) = send.send_request(request, true).expect("sent");
    let response = response.await.expect("an answer");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk: Bytes = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    connection.abort();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn an_h2c_request_with_a_foreign_authority_is_421() {
    let sim = Sim::default().await;
    let proxy = proxy_for(&sim).await;
    let (status, body) = h2_status(proxy.addr, "rebind.attacker.example:8080").await;
    assert_eq!(
        (status, body["error"].clone()),
        (421, "misdirected_request".into())
    );
    assert_eq!(sim.counters().api_calls, 0);
    let (status, _) = h2_status(proxy.addr, &format!("localhost:{}", proxy.addr.port())).await;
    assert_eq!(status, 200);
    let (status, _) = h2_status(proxy.addr, SERVICE_HOST).await;
    assert_eq!(status, 200);
}

// --- log and metrics ---

#[tokio::test]
async fn browser_refusals_are_logged_and_counted_like_other_refusals() {
    let sim = Sim::default().await;
    let mut all = sim.vars();
    all.extend(browser_settings());
    let proxy = ChildProxy::start(&all).await;
    let host = proxy.addr.to_string();
    let cross_site = sms_post(
        &host,
        &[
            "x-request-id: browser-cross-site",
            "Content-Type: text/plain",
            "Origin: http://evil.example",
            "Sec-Fetch-Site: cross-site",
        ],
    );
    assert_eq!(raw_status(&send(proxy.addr, &cross_site).await), 403);
    let rebound = format!(
        "GET {ECHO_PATH} HTTP/1.1\r\nHost: rebind.attacker.example:8080\r\n\
         x-request-id: browser-rebound"
    );
    assert_eq!(raw_status(&send(proxy.addr, &rebound).await), 421);

    for (request_id, method, status) in [
        ("browser-cross-site", "POST", 403),
        ("browser-rebound", "GET", 421),
    ] {
        let mut line = None;
        let written = eventually(std::time::Duration::from_secs(30), || {
            line = proxy.lines().iter().find_map(|line| {
                let event: Value = serde_json::from_str(line).ok()?;
                (event["message"] == "request" && event["request_id"] == request_id)
                    .then_some(event)
            });
            let found = line.is_some();
            async move { found }
        })
        .await;
        assert!(written, "no request line for {request_id}");
        let line = line.expect("found");
        assert_eq!(line["status"], status, "{line}");
        assert_eq!(line["method"], method, "{line}");
        assert_eq!(line["route"], "-", "{line}");
    }
    let text = support::metrics::scrape(&client(), &proxy.admin_url("/metrics")).await;
    for (method, status) in [("POST", "403"), ("GET", "421")] {
        assert_eq!(
            support::metrics::value(
                &text,
                "ipproxy_requests_total",
                &[("route", "-"), ("method", method), ("status", status)]
            ),
            1.0,
            "{method} {status}"
        );
    }
    assert_eq!(sim.counters().api_calls, 0);
}
