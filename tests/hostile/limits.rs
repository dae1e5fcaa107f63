//! Input limits: oversized and malformed request heads.

use super::*;

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
        (
            "an 80 KiB method",
            format!(
                "{} {ECHO_PATH} HTTP/1.1\r\nHost: {host}\r\n\r\n",
                "M".repeat(80 * 1024)
            ),
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
    still_serving(proxy.addr).await;
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
    still_serving(proxy.addr).await;
}
