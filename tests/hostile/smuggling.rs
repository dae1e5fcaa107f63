//! Request smuggling and header abuse: ambiguous framing, lenient heads, hop-by-hop headers that try to strip the token, absolute-form targets.

use super::*;

#[tokio::test]
async fn ambiguous_framing_is_refused_before_the_upstream() {
    let sim = Sim::default().await;
    let proxy = Proxy::start(sim.vars()).await;
    let post = |headers: &str, body: &str| {
        format!("POST {ECHO_PATH} HTTP/1.1\r\nHost: x\r\n{headers}\r\n\r\n{body}")
    };
    let chunked = "Transfer-Encoding: chunked";
    for (what, request) in [
        (
            "TE chunked, identity",
            post("Transfer-Encoding: chunked, identity", "0\r\n\r\n"),
        ),
        (
            "TE identity",
            post("Transfer-Encoding: identity\r\nContent-Length: 3", "abc"),
        ),
        (
            "TE xchunked",
            post("Transfer-Encoding: xchunked", "0\r\n\r\n"),
        ),
        (
            "space before colon",
            post("Transfer-Encoding : chunked", "0\r\n\r\n"),
        ),
        ("CL list", post("Content-Length: 3, 3", "abc")),
        ("CL with sign", post("Content-Length: +3", "abc")),
        (
            "two different CLs",
            post("Content-Length: 3\r\nContent-Length: 4", "abcd"),
        ),
        (
            "negative chunk size",
            post(chunked, "-1\r\nabc\r\n0\r\n\r\n"),
        ),
        (
            "hex prefix chunk size",
            post(chunked, "0x3\r\nabc\r\n0\r\n\r\n"),
        ),
        (
            "overflowing chunk size",
            post(chunked, "fffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
        ),
        ("bare LF in chunks", post(chunked, "3\nabc\n0\n\n")),
        (
            "chunk shorter than its size",
            post(chunked, "5\r\nabc\r\n0\r\n\r\n"),
        ),
        (
            "100 KB chunk extension",
            post(
                chunked,
                &format!("3;{}\r\nabc\r\n0\r\n\r\n", "e".repeat(100_000)),
            ),
        ),
        (
            "obs-fold",
            format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
        ),
        (
            "bare CR",
            format!("GET {ECHO_PATH} HTTP/1.1\rHost: x\r\n\r\n"),
        ),
        ("HTTP/0.9", format!("GET {ECHO_PATH}\r\n\r\n")),
        (
            "HTTP/2.0 in text",
            format!("GET {ECHO_PATH} HTTP/2.0\r\nHost: x\r\n\r\n"),
        ),
    ] {
        let response = send_raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(status_or_zero(&response), 400, "{what}: {response}");
        assert_eq!(response_count(&response), 1, "{what}: {response}");
    }
    assert_eq!(sim.counters().api_calls, 0, "nothing reached the upstream");
    still_serving(proxy.addr).await;
}

#[tokio::test]
async fn content_length_with_chunked_is_reframed_and_smuggles_nothing() {
    let sim = Sim::default().await;
    let proxy = Proxy::start(sim.vars()).await;
    let next = "GET /_rest/v4/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // (framing headers, whether the bytes after the chunked body may be read as the
    // client's next request)
    for (what, headers, pipelined) in [
        // Both framings: chunked wins (RFC 9112 §6.1) and the connection is closed
        // after the answer, so what follows is never read as a request.
        (
            "CL then TE",
            "Content-Length: 4\r\nTransfer-Encoding: chunked",
            false,
        ),
        (
            "TE then CL",
            "Transfer-Encoding: chunked\r\nContent-Length: 48",
            false,
        ),
        // Unambiguous chunked framing: what follows is the client's own next request
        // on its connection, answered as such, not hidden in the first one's body.
        (
            "TE twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            true,
        ),
        ("TE after a tab", "Transfer-Encoding:\tchunked", true),
    ] {
        let before = sim.counters().api_calls;
        let request =
            format!("POST {ECHO_PATH} HTTP/1.1\r\nHost: x\r\n{headers}\r\n\r\n0\r\n\r\n{next}");
        let response = send_raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(status_or_zero(&response), 200, "{what}: {response}");
        // The upstream gets a request with an empty body and neither framing header
        // of the client's: the proxy frames what it sends itself.
        let echo = raw_json(&response);
        assert_eq!(echo["method"], "POST", "{what}");
        assert_eq!(echo["body_len"], 0, "{what}");
        let forwarded = echo["headers"].as_object().expect("headers");
        assert!(
            !forwarded.contains_key("content-length"),
            "{what}: {forwarded:?}"
        );
        assert!(
            !forwarded.contains_key("transfer-encoding"),
            "{what}: {forwarded:?}"
        );
        let answers = if pipelined { 2 } else { 1 };
        assert_eq!(response_count(&response), answers, "{what}: {response}");
        assert_eq!(
            sim.counters().api_calls,
            before + answers as u64,
            "{what}: one upstream request per answer"
        );
    }
}

#[tokio::test]
async fn lenient_heads_are_forwarded_as_one_clean_request() {
    let sim = Sim::default().await;
    let proxy = Proxy::start(sim.vars()).await;
    for (what, request) in [
        // RFC 9112 §2.2 lets a recipient accept a bare LF; the upstream gets CRLFs
        // from the proxy's own serialisation either way.
        (
            "bare LF",
            format!("GET {ECHO_PATH} HTTP/1.1\nHost: x\nX-A: a\nConnection: close\n\n"),
        ),
        (
            "no Host",
            format!("GET {ECHO_PATH} HTTP/1.1\r\nConnection: close\r\n\r\n"),
        ),
        ("HTTP/1.0", format!("GET {ECHO_PATH} HTTP/1.0\r\n\r\n")),
    ] {
        let response = send_raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(status_or_zero(&response), 200, "{what}: {response}");
        assert_eq!(response_count(&response), 1, "{what}");
        let echo = raw_json(&response);
        assert_eq!(
            echo["headers"]["host"],
            sim.addr.to_string(),
            "{what}: the route's Host"
        );
    }
}

#[tokio::test]
async fn connection_and_upgrade_headers_cannot_strip_the_token_or_open_a_tunnel() {
    let sim = Sim::default().await;
    let proxy = Proxy::start(sim.vars()).await;
    let request = format!(
        "GET {ECHO_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer client-own\r\n\
         Connection: Upgrade, authorization, x-request-id, host, keep-alive\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: close\r\n\r\n"
    );
    let response = send_raw(proxy.addr, request.as_bytes()).await;
    assert_eq!(status_or_zero(&response), 200, "{response}");
    assert!(!response.contains("101 Switching"), "{response}");
    let echo = raw_json(&response);
    assert_eq!(echo["auth"]["scheme"], "bearer");
    assert_ne!(echo["auth"]["token_id"], 0, "the proxy's own token went up");
    let forwarded = echo["headers"].as_object().expect("headers");
    for hop in ["upgrade", "connection", "keep-alive"] {
        assert!(!forwarded.contains_key(hop), "{hop}: {forwarded:?}");
    }
    assert_eq!(forwarded["host"], sim.addr.to_string());
    assert!(
        forwarded.contains_key("x-request-id"),
        "the proxy's id survives"
    );
}

#[tokio::test]
async fn absolute_form_targets_cannot_turn_it_into_an_open_proxy() {
    let sim = Sim::default().await;
    let proxy = Proxy::start(sim.vars()).await;
    // The authority of an absolute-form target is ignored: it still goes to the
    // configured upstream (here the simulator), never to the named host.
    for target in [
        format!("http://attacker.invalid{ECHO_PATH}"),
        format!("https://attacker.invalid:8443{ECHO_PATH}"),
        format!("http://127.0.0.1:1{ECHO_PATH}"),
    ] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: attacker.invalid");
        let response = raw_request(proxy.addr, &head).await;
        assert_eq!(raw_status(&response), 200, "{target}: {response}");
        let echo = raw_json(&response);
        assert_eq!(echo["path"], ECHO_PATH);
        assert_eq!(echo["headers"]["host"], sim.addr.to_string());
    }
    assert_eq!(sim.counters().api_calls, 3);
}
