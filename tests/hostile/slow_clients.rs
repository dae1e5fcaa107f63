//! Silent and slow connections: heads and bodies that never finish, clients that never read, a flood of silent connections, running out of file descriptors; and slow but steady transfers, and a slow upstream, that must not be cut.

use super::*;

#[tokio::test]
async fn silent_connections_are_closed_at_header_read_timeout_whatever_they_began() {
    let sim = Sim::default().await;
    let mut all = sim.vars();
    all.extend(vars(&[("IPPROXY_SERVER__HEADER_READ_TIMEOUT", "1s")]));
    let proxy = Proxy::start(all).await;
    let limit = Duration::from_secs(1);
    // An HTTP/2 client is sent a GOAWAY first and dropped a second later at most.
    let goodbye = Duration::from_secs(1);
    for (what, opening) in [
        ("nothing at all", &b""[..]),
        ("half an HTTP/2 preface", &b"PRI * HTTP/2.0\r\n"[..]),
        (
            "an HTTP/2 preface and SETTINGS, no stream",
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"[..],
        ),
    ] {
        // From before the connect: the proxy's clock runs from its accept.
        let began = Instant::now();
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream.write_all(opening).await.expect("write");
        let closed = closed_within(&mut stream, limit + goodbye + SLACK).await;
        closed.unwrap_or_else(|| panic!("{what}: still open"));
        let after = began.elapsed();
        assert!(
            after >= limit - Duration::from_millis(200),
            "{what}: closed after {after:?}"
        );
        eprintln!("{what}: closed after {after:?}");
    }
    still_serving(proxy.addr).await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_at_header_read_timeout() {
    let sim = Sim::default().await;
    let mut all = sim.vars();
    all.extend(vars(&[("IPPROXY_SERVER__HEADER_READ_TIMEOUT", "1s")]));
    let proxy = Proxy::start(all).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    // Two requests on the connection (the second proves it was kept alive), then
    // silence. The stopwatch starts before the last request is sent, so it runs from
    // before the proxy's idle clock does.
    let mut began = Instant::now();
    for _ in 0..2 {
        began = Instant::now();
        let request = format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&head).contains(r#""query":null}"#) {
            let read = stream.read(&mut chunk).await.expect("read");
            assert!(read > 0, "kept alive");
            head.extend_from_slice(&chunk[..read]);
        }
    }
    closed_within(&mut stream, Duration::from_secs(1) + SLACK)
        .await
        .expect("closed");
    let after = began.elapsed();
    assert!(
        after >= Duration::from_millis(800),
        "closed after {after:?}"
    );

    // HTTP/2 alike: a connection whose streams are all done is closed (GOAWAY, then
    // dropped a second later at most if the client does not finish the goodbye).
    let (mut send, connection) = h2_connect(proxy.addr, &h2::client::Builder::new()).await;
    let request = http::Request::builder()
        .uri(format!("http://{}{ECHO_PATH}", proxy.addr))
        .body(())
        .expect("request");
    let idle_since = Instant::now();
    assert_eq!(h2_request(&mut send, request).await.expect("answer").0, 200);
    let ended = tokio::time::timeout(Duration::from_secs(2) + SLACK, connection).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection is still open");
    assert!(idle_since.elapsed() >= Duration::from_millis(800));
    drop(send);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let sim = Sim::default().await;
    let mut all = sim.vars();
    all.extend(vars(&[("IPPROXY_SERVER__HEADER_READ_TIMEOUT", "500ms")]));
    let proxy = Proxy::start(all).await;

    let began = Instant::now();
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(format!("GET {ECHO_PATH} HTTP/1.1\r\nHost: x\r\nx-slow: ").as_bytes())
        .await
        .expect("write a partial head");
    closed_within(&mut stream, Duration::from_millis(500) + SLACK + SLACK)
        .await
        .expect("the connection is still open");
    let waited = began.elapsed();
    assert!(
        waited < Duration::from_millis(500) + SLACK,
        "closed after {waited:?}, expected about 500 ms"
    );
    assert!(
        waited >= Duration::from_millis(300),
        "closed too early, after {waited:?}"
    );
    assert_eq!(sim.counters().api_calls, 0);
    still_serving(proxy.addr).await;
}

#[tokio::test]
async fn five_hundred_silent_connections_are_all_closed_and_the_proxy_keeps_serving() {
    const FLOOD: usize = 500;
    let sim = Sim::default().await;
    let mut all = sim.vars();
    all.extend(vars(&[("IPPROXY_SERVER__HEADER_READ_TIMEOUT", "1s")]));
    let proxy = Proxy::start(all).await;
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(proxy.addr).await.expect("connect"));
    }
    still_serving(proxy.addr).await;
    let deadline = Duration::from_secs(1) + SLACK;
    let closed = futures_util::future::join_all(
        flood
            .iter_mut()
            .map(|stream| closed_within(stream, deadline)),
    )
    .await;
    let open = closed.iter().filter(|closed| closed.is_none()).count();
    assert_eq!(open, 0, "{open} of {FLOOD} silent connections still open");
    still_serving(proxy.addr).await;
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_serves_again_after() {
    let sim = Sim::default().await;
    let proxy = child_proxy(&sim, &[]).await;
    let pid = proxy.pid();
    // A descriptor limit a few above what the running proxy holds: the connections
    // below use them up, and each further accept fails (EMFILE) while they are open.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the proxy's fds")
        .count();
    let limit = format!("--nofile={0}:{0}", open + 4);
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit {limit} failed");
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(TcpStream::connect(proxy.addr).await.expect("connect"));
    }
    let failures = || {
        proxy
            .lines()
            .iter()
            .filter(|line| line.contains("accept failed"))
            .count()
    };
    assert!(
        eventually(PATIENCE, || async { failures() > 0 }).await,
        "accept never failed: the limit did not bite"
    );
    // A window to count in (not a wait for an event): each worker backs off 50 ms
    // after a failed accept, so it fails at most about 20 times a second; a loop
    // without the back-off fails thousands of times.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counted = failures();
    let elapsed = started.elapsed();
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let bound = workers * (elapsed.as_millis() as usize / 50 + 2);
    assert!(
        counted <= bound,
        "{counted} failed accepts in {elapsed:?} with {workers} workers (at most {bound})"
    );
    drop(held);
    // Descriptors back: the proxy accepts and serves again.
    assert!(
        eventually(PATIENCE, || async {
            status_of(&client(), &proxy.url(ECHO_PATH)).await == Some(200)
        })
        .await,
        "the proxy serves again once descriptors are free"
    );
}

/// The real binary with one slot (`max_concurrency = 1`) that a hostile client holds
/// for [`HOLD`], and `extra` settings.
async fn one_slot_proxy(sim: &Sim, extra: &[(&str, &str)]) -> ChildProxy {
    let mut settings = vec![
        ("IPPROXY_SERVER__MAX_CONCURRENCY", "1"),
        ("IPPROXY_SERVER__CLIENT_TIMEOUT", HOLD_SETTING),
        // Far from the client timeout, so that it is not what closes anything.
        ("IPPROXY_SERVER__HEADER_READ_TIMEOUT", "30s"),
    ];
    settings.extend_from_slice(extra);
    child_proxy(sim, &settings).await
}

#[tokio::test]
async fn a_stalled_request_body_frees_its_slot_and_is_logged_408() {
    let sim = Sim::default().await;
    let proxy = one_slot_proxy(
        &sim,
        &[
            // Bodies past 1 KiB stream to the upstream: both paths are covered.
            ("IPPROXY_SERVER__REPLAY_LIMIT", "1KiB"),
        ],
    )
    .await;
    for (case, sent) in [("buffered", 1), ("streaming", 2048)] {
        let request_id = format!("stalled-body-{case}");
        slot_is_free(&proxy).await;
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        let head = format!(
            "POST {ECHO_PATH} HTTP/1.1\r\nHost: x\r\nx-request-id: {request_id}\r\n\
             Content-Length: 100000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        stream.write_all(&vec![b'a'; sent]).await.expect("body");
        // The body then stops: one byte per many seconds is as good as none.
        let took = slot_freed_after(&proxy, HOLD + SLACK).await;
        eprintln!("{case}: slot freed {took:?} after it was seen held");

        let answer =
            String::from_utf8_lossy(&read_until_closed(&mut stream, SLACK).await).into_owned();
        assert_eq!(status_or_zero(&answer), 408, "{case}: {answer}");
        assert_eq!(raw_json(&answer)["error"], "client_timeout");
        assert_eq!(
            closed_within(&mut stream, SLACK).await.map(|_| ()),
            Some(()),
            "{case}: the connection is closed"
        );
        let line = request_log_line(&proxy, &request_id).await;
        assert_eq!(line["status"], 408, "{case}: {line}");
    }
}

/// Sets a flag and wakes a waiter when dropped: the upstream's response stream is
/// dropped when the proxy abandons its request.
struct DropSignal(Arc<(AtomicBool, Notify)>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.0.store(true, Ordering::SeqCst);
        self.0.1.notify_one();
    }
}

/// A 64 KiB chunk of an endless download.
static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// An upstream whose every response is a 256 MiB download (bounded, so a broken proxy
/// cannot make the test run forever), signalling when its stream is dropped.
async fn endless_download_upstream() -> (
    String,
    Arc<(AtomicBool, Notify)>,
    tokio::sync::oneshot::Sender<()>,
) {
    let dropped = Arc::new((AtomicBool::new(false), Notify::new()));
    let signal = Arc::clone(&dropped);
    let app = axum::Router::new().fallback(move || {
        let guard = DropSignal(Arc::clone(&signal));
        async move {
            let chunks = futures_util::stream::unfold((0u32, guard), |(sent, guard)| async move {
                (sent < 4096).then(|| {
                    (
                        Ok::<_, Infallible>(Bytes::from_static(&CHUNK)),
                        (sent + 1, guard),
                    )
                })
            });
            axum::body::Body::from_stream(chunks)
        }
    });
    let (addr, stop) = support::serve_app(app).await;
    (format!("http://{addr}"), dropped, stop)
}

#[tokio::test]
async fn a_client_that_never_reads_its_response_frees_its_slot_and_cancels_the_upstream() {
    let sim = Sim::default().await;
    let (upstream, dropped, _stop) = endless_download_upstream().await;
    let config = format!(
        "[[route]]\nname = \"download\"\nprefix = \"/download/\"\nupstream = \"{upstream}\"\n\n\
         [[route]]\nname = \"sim\"\nprefix = \"/\"\n"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ipproxy.toml");
    std::fs::write(&file, config).expect("write config");
    let file = file.display().to_string();
    let proxy = one_slot_proxy(&sim, &[("IPPROXY_CONFIG", &file)]).await;
    let mut stream = small_window_connection(proxy.addr).await;
    let request = "GET /download/big HTTP/1.1\r\nHost: x\r\nx-request-id: never-reads\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("write");
    // ... and never reads.
    let took = slot_freed_after(&proxy, HOLD + SLACK).await;
    eprintln!("slot freed {took:?} after it was seen held");
    let cancelled = tokio::time::timeout(SLACK, dropped.1.notified())
        .await
        .is_ok()
        || dropped.0.load(Ordering::SeqCst);
    assert!(cancelled, "the upstream response was abandoned");
    let line = request_log_line(&proxy, "never-reads").await;
    assert_eq!(line["status"], 408, "{line}");
    drop(stream);
}

#[tokio::test]
async fn an_h2_stream_whose_window_is_never_released_frees_its_slot() {
    let sim = Sim::default().await;
    let proxy = one_slot_proxy(&sim, &[]).await;
    let (send, connection) = h2_connect(proxy.addr, &h2::client::Builder::new()).await;
    let request = http::Request::builder()
        .uri(format!(
            "http://{}/_rest/v4/sim/bytes/{}",
            proxy.addr,
            10 * 1024 * 1024
        ))
        .header("x-request-id", "h2-window-held")
        .body(())
        .expect("request");
    let mut send = send.ready().await.expect("ready");
    let (response, _) = send.send_request(request, true).expect("send");
    let response = response.await.expect("response head");
    assert_eq!(response.status(), 200);
    // The body is never read, so its window (64 KiB) is never given back.
    let _held = response.into_body();
    let took = slot_freed_after(&proxy, HOLD + SLACK).await;
    eprintln!("slot freed {took:?} after it was seen held");
    let ended = tokio::time::timeout(SLACK, connection).await;
    assert!(
        ended.is_ok(),
        "the proxy closed the stalled HTTP/2 connection"
    );
    let line = request_log_line(&proxy, "h2-window-held").await;
    assert_eq!(line["status"], 408, "{line}");
}

/// An upstream that sends `chunks` chunks of 1 KiB, one every `every`.
async fn steady_upstream(
    chunks: u32,
    every: Duration,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let app = axum::Router::new().fallback(move || async move {
        let stream = futures_util::stream::unfold(0u32, move |sent| async move {
            if sent == chunks {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((
                Ok::<_, Infallible>(Bytes::from_static(&CHUNK[..1024])),
                sent + 1,
            ))
        });
        axum::body::Body::from_stream(stream)
    });
    let (addr, stop) = support::serve_app(app).await;
    (format!("http://{addr}"), stop)
}

/// A proxy that routes `/steady/` to `upstream` and the rest to `sim`, with `settings`.
async fn proxy_with_steady_route(sim: &Sim, upstream: &str, settings: &[(&str, &str)]) -> Proxy {
    let config = format!(
        "[[route]]\nname = \"steady\"\nprefix = \"/steady/\"\nupstream = \"{upstream}\"\n\n\
         [[route]]\nname = \"sim\"\nprefix = \"/\"\n"
    );
    let mut all = sim.vars();
    all.extend(vars(settings));
    Proxy::start_with_file(&config, all).await
}

/// Downloads `url` to its end (200 expected, no error on the way): the bytes received.
async fn download(client: &reqwest::Client, url: String) -> usize {
    let mut response = client.get(url).send().await.expect("response head");
    assert_eq!(response.status(), 200);
    let mut received = 0;
    while let Some(chunk) = response.chunk().await.expect("the download is not cut") {
        received += chunk.len();
    }
    received
}

#[tokio::test]
async fn a_slow_but_steady_download_and_upload_are_not_cut() {
    const CHUNKS: u32 = 12;
    // Each chunk well within the 3 s client timeout (a busy machine may stall one by a
    // second or more); the whole far beyond it.
    let every = Duration::from_millis(400);
    let sim = Sim::default().await;
    let (upstream, _stop) = steady_upstream(CHUNKS, every).await;
    let proxy = proxy_with_steady_route(
        &sim,
        &upstream,
        &[
            ("IPPROXY_SERVER__CLIENT_TIMEOUT", "3s"),
            ("IPPROXY_SERVER__HEADER_READ_TIMEOUT", "3s"),
        ],
    )
    .await;
    let client = client();

    let started = Instant::now();
    let received = download(&client, proxy.url("/steady/x")).await;
    assert_eq!(received, CHUNKS as usize * 1024);
    assert!(started.elapsed() >= every * CHUNKS, "it was slow");

    let body = futures_util::stream::unfold(0u32, move |sent| async move {
        if sent == CHUNKS {
            return None;
        }
        tokio::time::sleep(every).await;
        Some((Ok::<_, std::io::Error>(vec![b'u'; 1024]), sent + 1))
    });
    let response = client
        .post(proxy.url("/_rest/v4/echo/upload"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.expect("echo");
    assert_eq!(echo["body_len"], CHUNKS * 1024);
}

#[tokio::test]
async fn an_upstream_slower_than_client_timeout_is_not_blamed_on_a_reading_client() {
    // `client_timeout` bounds the client taking what it was handed, not the upstream
    // producing the next chunk: a gap three times the limit must not cut the download.
    const CHUNKS: u32 = 2;
    let gap = Duration::from_secs(3);
    let sim = Sim::default().await;
    let (upstream, _stop) = steady_upstream(CHUNKS, gap).await;
    let proxy =
        proxy_with_steady_route(&sim, &upstream, &[("IPPROXY_SERVER__CLIENT_TIMEOUT", "1s")]).await;
    let received = download(&client(), proxy.url("/steady/x")).await;
    assert_eq!(received, CHUNKS as usize * 1024);
}
