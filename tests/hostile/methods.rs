//! Methods that must never be forwarded: CONNECT and TRACE over HTTP/1.1 and h2c, with and without a key.

use super::*;

#[tokio::test]
async fn connect_and_trace_get_405_with_allow_and_never_reach_the_upstream() {
    let sim = Sim::default().await;
    // The allowlist admits the path for every method: the refusal comes before it.
    let proxy = Proxy::start_with_file("[access]\nallow = [\"/_rest/v4/my/\"]\n", sim.vars()).await;
    for head in [
        "CONNECT attacker.invalid:443 HTTP/1.1\r\nHost: attacker.invalid:443".to_owned(),
        format!("CONNECT {ECHO_PATH} HTTP/1.1\r\nHost: x"),
        format!("TRACE {ECHO_PATH} HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0"),
        format!("trace {ECHO_PATH} HTTP/1.1\r\nHost: x"),
        format!("Connect {ECHO_PATH} HTTP/1.1\r\nHost: x"),
    ] {
        let response = raw_request(proxy.addr, &head).await;
        assert_eq!(raw_status(&response), 405, "{head}: {response}");
        let allow = raw_header(&response, "allow").expect("an Allow header");
        assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
        assert!(
            !allow.contains("CONNECT") && !allow.contains("TRACE"),
            "{allow}"
        );
        let body = raw_json(&response);
        assert_eq!(body["error"], "method_not_allowed", "{head}");
        assert!(!body["request_id"].as_str().unwrap_or("").is_empty());
    }
    assert_eq!(sim.counters().api_calls, 0, "nothing reached the upstream");
    still_serving(proxy.addr).await;
}

#[tokio::test]
async fn connect_without_a_key_is_407_like_any_request_without_one() {
    let sim = Sim::default().await;
    let (_dir, keys) = keys_file();
    let mut all = sim.vars();
    all.extend(vars(&[(
        "IPPROXY_ACCESS__KEYS_FILE",
        &keys.display().to_string(),
    )]));
    let proxy = Proxy::start(all).await;
    // A caller without a key learns nothing, not even which methods pass.
    let head = "CONNECT attacker.invalid:443 HTTP/1.1\r\nHost: attacker.invalid:443";
    assert_eq!(raw_status(&raw_request(proxy.addr, head).await), 407);
    let with_key = format!("{head}\r\nProxy-Authorization: Bearer {KEY}");
    assert_eq!(raw_status(&raw_request(proxy.addr, &with_key).await), 405);
    assert_eq!(sim.counters().api_calls, 0);
}

#[tokio::test]
async fn h2c_connect_and_trace_get_405_and_extended_connect_is_reset() {
    let sim = Sim::default().await;
    let proxy = Proxy::start(sim.vars()).await;
    let (mut send, _connection) = h2_connect(proxy.addr, &h2::client::Builder::new()).await;

    let connect = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("attacker.invalid:443")
        .body(())
        .expect("request");
    let (status, body) = h2_request(&mut send, connect).await.expect("an answer");
    assert_eq!(status, 405);
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["error"], "method_not_allowed");

    let trace = http::Request::builder()
        .method(http::Method::TRACE)
        .uri(format!("http://{}{ECHO_PATH}", proxy.addr))
        .body(())
        .expect("request");
    assert_eq!(
        h2_request(&mut send, trace).await.expect("an answer").0,
        405
    );

    // Extended CONNECT (RFC 8441, `:protocol`): the proxy never advertises it, so h2
    // refuses the stream before it becomes a request.
    let mut extended = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}{ECHO_PATH}", proxy.addr))
        .body(())
        .expect("request");
    extended
        .extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    match h2_request(&mut send, extended).await {
        Ok((status, _)) => assert_eq!(status, 405, "extended CONNECT answered"),
        Err(error) => assert_eq!(error.reason(), Some(h2::Reason::PROTOCOL_ERROR), "{error}"),
    }
    assert_eq!(sim.counters().api_calls, 0, "nothing reached the upstream");
}
