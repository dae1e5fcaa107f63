//! HTTP/2 abuse: rapid reset, CONTINUATION floods, and an idle client that never answers the close.

use super::*;

/// An HTTP/2 frame: 24-bit length, type, flags, stream id.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(&length[1..]);
    frame.push(kind);
    frame.push(flags);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The frames an HTTP/2 client opens a connection with: the preface and SETTINGS.
fn h2_opening() -> Vec<u8> {
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(h2_frame(0x4, 0, 0, &[]));
    opening
}

/// An HPACK literal header without indexing, with a new name (no Huffman).
fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    let mut entry = vec![0x00, u8::try_from(name.len()).expect("short name")];
    entry.extend_from_slice(name.as_bytes());
    entry.push(u8::try_from(value.len()).expect("short value"));
    entry.extend_from_slice(value.as_bytes());
    entry
}

/// Kinds of the frames in `bytes` read from an HTTP/2 server (as far as they are whole).
fn h2_frame_kinds(bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        kinds.push(rest[3]);
        rest = rest.get(9 + length..).unwrap_or_default();
    }
    kinds
}

#[tokio::test]
async fn h2_rapid_reset_leaves_nothing_in_flight_and_the_proxy_serving() {
    // Bounded: this many streams opened and reset at once, in one write.
    const STREAMS: u32 = 2000;
    let sim = Sim::default().await;
    let (_keys, proxy) = keyed_child_proxy(&sim, &[("IPPROXY_SERVER__MAX_CONCURRENCY", "4")]).await;
    let mut flood = h2_opening();
    // GET http://x/_rest/v4/my/did with the key, then RST_STREAM(CANCEL) at once.
    let mut block = vec![
        0x82,
        0x86,
        0x04,
        u8::try_from(ECHO_PATH.len()).expect("short"),
    ];
    block.extend_from_slice(ECHO_PATH.as_bytes());
    block.extend_from_slice(&[0x01, 0x01, b'x']);
    block.extend(hpack_literal(
        "proxy-authorization",
        &format!("Bearer {KEY}"),
    ));
    for stream_id in (0..STREAMS).map(|n| 2 * n + 1) {
        flood.extend(h2_frame(0x1, 0x5, stream_id, &block)); // END_STREAM | END_HEADERS
        flood.extend(h2_frame(0x3, 0, stream_id, &0x8u32.to_be_bytes())); // CANCEL
    }
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let _ = stream.write_all(&flood).await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let kinds = h2_frame_kinds(&answer);
    let goaway = kinds.contains(&0x7);
    let answered = kinds.iter().filter(|kind| **kind == 0x1).count();
    eprintln!("rapid reset: {STREAMS} streams reset; {answered} answered, GOAWAY: {goaway}");
    // However h2 took it (streams answered, or a GOAWAY for too many resets), no
    // request stays in flight and other clients are served.
    let idle = eventually(Duration::from_secs(5), || async {
        let text = match client().get(proxy.admin_url("/metrics")).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => return false,
        };
        let inflight = text
            .lines()
            .find_map(|line| line.strip_prefix("ipproxy_inflight_requests "));
        inflight.is_none_or(|value| value == "0")
    })
    .await;
    assert!(idle, "requests are still in flight after the resets");
    let response = client()
        .get(proxy.url(ECHO_PATH))
        .header("proxy-authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .expect("the proxy still answers");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_idle_http2_client_that_never_answers_the_close_is_dropped_after_the_grace() {
    let sim = Sim::default().await;
    let mut all = sim.vars();
    all.extend(vars(&[("IPPROXY_SERVER__HEADER_READ_TIMEOUT", "1s")]));
    let proxy = Proxy::start(all).await;
    // Before the connection exists, so that no close can come sooner after this than
    // `header_read_timeout` + the grace, however slow the machine.
    let connecting = Instant::now();
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.write_all(&h2_opening()).await.expect("preface");
    // Idle past `header_read_timeout`: the proxy closes gracefully (GOAWAY and a PING
    // whose acknowledgement ends the close). This client reads everything and answers
    // nothing, so only the grace drop (1 s) ends the connection.
    let waiting = connecting.elapsed();
    let closed = closed_within(&mut stream, Duration::from_secs(2) + SLACK).await;
    let Some(closed) = closed else {
        panic!("an idle HTTP/2 connection that never acknowledges the close stays open");
    };
    // Dropped after the grace, not at once: a client that is slow to answer the GOAWAY
    // still gets its second.
    assert!(
        waiting + closed >= Duration::from_secs(2),
        "dropped {:?} after connecting, before header_read_timeout (1 s) + the grace (1 s)",
        waiting + closed
    );
    still_serving(proxy.addr).await;
}

#[tokio::test]
async fn h2_continuation_flood_is_cut_off_and_the_proxy_keeps_serving() {
    // Bounded: at most this much header data is offered.
    const OFFERED: usize = 16 * 1024 * 1024;
    let sim = Sim::default().await;
    let proxy = Proxy::start(sim.vars()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut opening = h2_opening();
    // HEADERS without END_HEADERS: GET, http, /, then the block goes on forever.
    opening.extend(h2_frame(0x1, 0x1, 1, &[0x82, 0x86, 0x84, 0x41, 0x01, b'x']));
    stream.write_all(&opening).await.expect("write opening");
    // Each CONTINUATION holds literal headers `x-a: <100 bytes>`, never END_HEADERS.
    let entry: Vec<u8> = [&[0x00, 0x03][..], b"x-a", &[100], &[b'v'; 100]].concat();
    let block: Vec<u8> = entry.repeat(16 * 1024 / entry.len());
    let continuation = h2_frame(0x9, 0, 1, &block);
    let mut offered = 0;
    let mut refused = false;
    while offered < OFFERED {
        match tokio::time::timeout(Duration::from_secs(5), stream.write_all(&continuation)).await {
            Ok(Ok(())) => offered += block.len(),
            Ok(Err(_)) => {
                refused = true;
                break;
            }
            Err(_stalled) => break,
        }
    }
    let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let goaway = h2_frame_kinds(&answer).contains(&0x7);
    eprintln!(
        "CONTINUATION flood: {offered} bytes taken by the socket; reset: {refused}, GOAWAY: {goaway}"
    );
    assert!(
        refused || goaway,
        "the flood was neither refused nor answered with a GOAWAY"
    );
    assert!(
        closed_within(&mut stream, Duration::from_secs(3))
            .await
            .is_some(),
        "the flooding connection is closed"
    );
    assert_eq!(sim.counters().api_calls, 0);
    still_serving(proxy.addr).await;
}
