//! The forwarding pool over real loopback sockets: kept-alive connections reused, each
//! for its own origin only; a connection back in the pool with the head of an answer
//! that has no body, and with the last frame of a long or chunked one; not kept when
//! the answer closes it or comes before the upload ended; a connection the upstream
//! closed, before or while a request was written, handled as the pool's module comment
//! says (a request not written goes on a fresh connection, one that may have arrived
//! only when its body is buffered and it is idempotent or no byte of an answer came);
//! idle expiry; the bound on idle connections; requests and responses abandoned
//! half-way closing their connection; tunnels through a real egress proxy kept like
//! direct connections; TLS sessions resumed; HTTP/2 by ALPN multiplexing concurrent
//! requests on one connection.
//!
//! The pool is driven directly (not through a proxy, whose workers each have their own
//! pool), on the test's single-threaded runtime, as a worker drives it.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use http::{Method, Request, Response, StatusCode, Uri, header};
use http_body::Body as _;
use http_body_util::{BodyExt as _, Either, Full};
use ipproxy::proxy::pool::{PoolSettings, SendError};
use ipproxy::proxy::{ResponseBody, UpstreamBody, UpstreamClient, build_client_with};
use support::forward_proxy::ForwardProxy;
use support::scripted::{Action, EVENT_LIMIT, Event, ScriptedUpstream};
use support::tls::{HandshakeCounter, TestPki, TlsUpstream};
use support::vars;

fn client_for(url: &str, extra: &[(&str, &str)], settings: PoolSettings) -> UpstreamClient {
    let mut pairs = vec![
        ("IPPROXY_UPSTREAM__URL", url),
        ("IPPROXY_AUTH__KIND", "static"),
        ("IPPROXY_AUTH__TOKEN", "pool-test-token"),
    ];
    pairs.extend_from_slice(extra);
    let config = ipproxy::config::load(None, vars(&pairs)).expect("valid test configuration");
    build_client_with(&config.upstream, settings).expect("client")
}

/// [`client_for`] with `upstream.ca_file` holding `pki`'s CA (read while the client is
/// built, so the file need not outlive it).
fn client_trusting(pki: &TestPki, url: &str, extra: &[(&str, &str)]) -> UpstreamClient {
    let ca_dir = tempfile::tempdir().expect("temp dir");
    let ca_file = pki.write_ca(&ca_dir).display().to_string();
    let mut pairs = vec![("IPPROXY_UPSTREAM__CA_FILE", ca_file.as_str())];
    pairs.extend_from_slice(extra);
    client_for(url, &pairs, PoolSettings::default())
}

fn request(method: Method, url: &str, body: UpstreamBody) -> Request<UpstreamBody> {
    let uri: Uri = url.parse().expect("test URL");
    let host = uri.authority().expect("absolute URL").to_string();
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, host)
        .body(body)
        .expect("request")
}

/// A body the proxy buffered (at most `replay_limit`): can be sent twice.
fn buffered(text: &'static str) -> UpstreamBody {
    Either::Left(Full::new(Bytes::from_static(text.as_bytes())))
}

/// A body that streams through (over `replay_limit`): goes once.
fn streamed(text: &'static str) -> UpstreamBody {
    Either::Right(axum::body::Body::from(text))
}

/// An upload that sends one chunk and then stalls: the request is still going out.
fn stalled_upload() -> UpstreamBody {
    let stalled = stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"part")) })
        .chain(stream::pending());
    Either::Right(axum::body::Body::from_stream(stalled))
}

/// Sends one request that the pool may not send again (it cannot rebuild it).
async fn send_once(
    client: &UpstreamClient,
    method: Method,
    url: &str,
    body: UpstreamBody,
) -> Result<Response<ResponseBody>, SendError> {
    client.send(request(method, url, body), |_| None).await
}

/// The body of a GET of `url` whose head came, not read yet.
async fn unread_body(client: &UpstreamClient, url: &str) -> ResponseBody {
    let response = send_once(client, Method::GET, url, buffered(""))
        .await
        .expect("head");
    response.into_body()
}

/// Sends one request and reads the whole answer; the pool may rebuild the request
/// with the same method and URL.
async fn exchange(
    client: &UpstreamClient,
    method: Method,
    url: &str,
    body: UpstreamBody,
) -> Result<(StatusCode, Bytes), SendError> {
    let again = {
        let (method, url) = (method.clone(), url.to_owned());
        move |body| Some(request(method, &url, body))
    };
    let response = client.send(request(method, url, body), again).await?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the whole body")
        .to_bytes();
    Ok((status, body))
}

fn origin(url: &str) -> Uri {
    url.parse().expect("origin")
}

/// `times` GETs of `url`, one after the other, each answered 200 with `answer`.
async fn get_in_turn(client: &UpstreamClient, url: &str, times: usize, answer: &[u8]) {
    for _ in 0..times {
        let (status, body) = exchange(client, Method::GET, url, buffered(""))
            .await
            .expect("answered");
        assert_eq!((status, &body[..]), (StatusCode::OK, answer));
    }
}

/// After connection 0 left the pool: nothing to `url` is idle, and the next request
/// opens a second connection. Its answer's body.
async fn next_on_a_new_connection(
    upstream: &ScriptedUpstream,
    client: &UpstreamClient,
    url: &str,
) -> Bytes {
    assert_eq!(client.idle_connections(&origin(url)), 0);
    let (_, body) = exchange(client, Method::GET, url, buffered(""))
        .await
        .expect("next request, on a new connection");
    assert_eq!(upstream.accepted(), 2);
    body
}

/// Requests of `method` the upstream read.
fn seen(upstream: &ScriptedUpstream, method: &str) -> Vec<support::scripted::Seen> {
    upstream
        .seen()
        .into_iter()
        .filter(|seen| seen.method == method)
        .collect()
}

#[tokio::test]
async fn sequential_requests_reuse_one_kept_alive_connection() {
    let upstream = ScriptedUpstream::start(|_, _| Action::Respond("ok")).await;
    let client = client_for(&upstream.url(""), &[], PoolSettings::default());
    get_in_turn(&client, &upstream.url("/a"), 3, b"ok").await;
    assert_eq!(upstream.accepted(), 1);
    assert_eq!(client.idle_connections(&origin(&upstream.url(""))), 1);
}

#[tokio::test]
async fn answers_without_a_body_free_their_connection_with_the_head() {
    const HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
    const NO_CONTENT: &str = "HTTP/1.1 204 No Content\r\n\r\n";
    const EMPTY: &str = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let upstream = ScriptedUpstream::start(|_, request| match request {
        0 => Action::Raw(HEAD),
        1 => Action::Raw(NO_CONTENT),
        _ => Action::Raw(EMPTY),
    })
    .await;
    let client = client_for(&upstream.url(""), &[], PoolSettings::default());
    let url = upstream.url("/");
    for (method, status) in [
        (Method::HEAD, StatusCode::OK),
        (Method::DELETE, StatusCode::NO_CONTENT),
        (Method::GET, StatusCode::OK),
    ] {
        let response = send_once(&client, method.clone(), &url, buffered(""))
            .await
            .expect("answered");
        assert_eq!(response.status(), status, "{method}");
        assert!(response.body().is_end_stream(), "{method}: nothing to read");
        // Parked with the head, before anyone reads or drops the body.
        assert_eq!(client.idle_connections(&origin(&url)), 1, "{method}");
    }
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn an_answer_that_closes_its_connection_does_not_leave_it_idle() {
    const CLOSING: &str = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye";
    const CLOSING_EMPTY: &str = "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n";
    let upstream = ScriptedUpstream::start(|connection, _| match connection {
        0 => Action::Raw(CLOSING),
        1 => Action::Raw(CLOSING_EMPTY),
        _ => Action::Respond("ok"),
    })
    .await;
    let client = client_for(&upstream.url(""), &[], PoolSettings::default());
    let url = upstream.url("/");
    let idle = || client.idle_connections(&origin(&url));
    let answer = exchange(&client, Method::GET, &url, buffered("")).await;
    assert_eq!(answer.expect("answered").1, &b"bye"[..]);
    assert_eq!(idle(), 0, "a body that ends the connection");
    // The upstream keeps its end open: the proxy is the one to close.
    upstream
        .wait_for(Event::ClosedByClient { connection: 0 })
        .await;
    let answer = exchange(&client, Method::GET, &url, buffered("")).await;
    assert_eq!(answer.expect("answered").0, StatusCode::NO_CONTENT);
    assert_eq!(idle(), 0, "an answer with no body that ends the connection");
    upstream
        .wait_for(Event::ClosedByClient { connection: 1 })
        .await;
    let answer = exchange(&client, Method::GET, &url, buffered("")).await;
    assert_eq!(answer.expect("answered").1, &b"ok"[..]);
    assert_eq!((upstream.accepted(), idle()), (3, 1));
}

#[tokio::test]
async fn an_answer_that_comes_before_the_upload_ends_does_not_free_the_connection() {
    const REFUSED: &str = "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 7\r\n\r\ntoo big";
    let upstream = ScriptedUpstream::start(|_, _| Action::RawBeforeBody(REFUSED)).await;
    let client = client_for(&upstream.url(""), &[], PoolSettings::default());
    let url = upstream.url("/upload");
    let response = send_once(&client, Method::POST, &url, stalled_upload())
        .await
        .expect("the early answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let answer = response.into_body().collect().await.expect("its body");
    assert_eq!(&answer.to_bytes()[..], b"too big");
    assert_eq!(client.idle_connections(&origin(&url)), 0);
    upstream
        .wait_for(Event::ClosedByClient { connection: 0 })
        .await;
}

#[tokio::test]
async fn a_long_body_frees_its_connection_with_its_last_frame() {
    const LENGTH: usize = 1 << 20; // many reads: hyper reads at most 400 KiB at once
    let upstream = ScriptedUpstream::start(|_, _| Action::RespondBytes(LENGTH)).await;
    let client = client_for(&upstream.url(""), &[], PoolSettings::default());
    let url = upstream.url("/recording");
    let mut body = unread_body(&client, &url).await;
    assert_eq!(body.size_hint().exact(), Some(LENGTH as u64));
    // Read as the server that forwards it reads: until the body says it is over,
    // with no poll after the last frame to learn that.
    let mut received = 0;
    while !body.is_end_stream() {
        let frame = body.frame().await.expect("not over early").expect("data");
        received += frame.into_data().map_or(0, |data| data.len());
        assert!(received <= LENGTH, "{received} bytes");
    }
    assert_eq!(received, LENGTH);
    assert_eq!(
        client.idle_connections(&origin(&url)),
        1,
        "parked by the poll that gave the last frame"
    );
    drop(body);
    let (status, body) = exchange(&client, Method::GET, &url, buffered(""))
        .await
        .expect("answered");
    assert_eq!((status, body.len()), (StatusCode::OK, LENGTH));
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn a_chunked_body_frees_its_connection_at_its_end() {
    const CHUNKED: &str = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                           5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let upstream = ScriptedUpstream::start(|_, _| Action::Raw(CHUNKED)).await;
    let client = client_for(&upstream.url(""), &[], PoolSettings::default());
    let url = upstream.url("/");
    for _ in 0..2 {
        let (status, body) = exchange(&client, Method::GET, &url, buffered(""))
            .await
            .expect("answered");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello world"[..]));
        assert_eq!(client.idle_connections(&origin(&url)), 1);
    }
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn a_kept_connection_serves_only_its_own_origin() {
    let a = ScriptedUpstream::start(|_, _| Action::Respond("from-a")).await;
    let b = ScriptedUpstream::start(|_, _| Action::Respond("from-b")).await;
    let client = client_for(&a.url(""), &[], PoolSettings::default());
    for (upstream, answer) in [(&a, "from-a"), (&b, "from-b"), (&a, "from-a")] {
        let (status, body) = exchange(&client, Method::GET, &upstream.url("/x"), buffered(""))
            .await
            .expect("answered");
        assert_eq!((status, &body[..]), (StatusCode::OK, answer.as_bytes()));
    }
    assert_eq!((a.accepted(), b.accepted()), (1, 1), "one connection each");
    let unused = ScriptedUpstream::start(|_, _| Action::Respond("")).await;
    let other = client_for(&a.url(""), &[], PoolSettings::default());
    let idle = |client: &UpstreamClient, upstream: &ScriptedUpstream| {
        client.idle_connections(&origin(&upstream.url("")))
    };
    assert_eq!((idle(&client, &a), idle(&client, &b)), (1, 1));
    assert_eq!((idle(&client, &unused), idle(&other, &a)), (0, 0));
    assert_eq!(seen(&a, "GET").len(), 2);
    assert_eq!(seen(&b, "GET").len(), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_written_to() {
    let upstream = ScriptedUpstream::start(|connection, _| match connection {
        0 => Action::RespondThenClose("first"),
        _ => Action::Respond("second"),
    })
    .await;
    let client = client_for(&upstream.url(""), &[], PoolSettings::default());
    exchange(&client, Method::GET, &upstream.url("/"), buffered(""))
        .await
        .expect("first answer");
    upstream
        .wait_for(Event::ClosedByUpstream { connection: 0 })
        .await;
    // A streamed POST: written to the closed connection, it could not be sent again.
    let (status, body) = exchange(
        &client,
        Method::POST,
        &upstream.url("/send"),
        streamed("payload"),
    )
    .await
    .expect("sent on a fresh connection");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"second"[..]));
    assert_eq!(upstream.accepted(), 2);
    let posts = seen(&upstream, "POST");
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].connection, 1);
}

/// Connection 0 answers its first request, then meets the second one with `then`;
/// every later connection answers `fresh`.
fn second_request_meets(then: Action) -> impl Fn(usize, usize) -> Action + Send + Sync {
    move |connection, request| match (connection, request) {
        (0, 0) => Action::Respond("warm"),
        (0, _) => then,
        _ => Action::Respond("fresh"),
    }
}

/// An upstream scripted by [`second_request_meets`] and a client whose one idle
/// connection is its connection 0, warmed up: the next request meets `then`.
async fn warmed_up(then: Action) -> (ScriptedUpstream, UpstreamClient) {
    let upstream = ScriptedUpstream::start(second_request_meets(then)).await;
    let client = client_for(&upstream.url(""), &[], PoolSettings::default());
    exchange(&client, Method::GET, &upstream.url("/"), buffered(""))
        .await
        .expect("warm-up");
    (upstream, client)
}

/// A POST of `body` on a warmed-up connection that meets `then` fails, and is not
/// sent again on a new connection.
async fn assert_post_not_sent_again(then: Action, body: UpstreamBody) {
    let (upstream, client) = warmed_up(then).await;
    let failed = exchange(&client, Method::POST, &upstream.url("/send"), body).await;
    assert!(matches!(failed, Err(SendError::Request(_))), "{failed:?}");
    assert_eq!(seen(&upstream, "POST").len(), 1);
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn a_buffered_post_that_met_a_silent_close_is_sent_again_on_a_new_connection() {
    let (upstream, client) = warmed_up(Action::CloseUnanswered).await;
    let url = upstream.url("/send");
    let (status, body) = exchange(&client, Method::POST, &url, buffered("sms"))
        .await
        .expect("sent again on a fresh connection");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"fresh"[..]));
    let posts = seen(&upstream, "POST");
    assert_eq!(
        posts.iter().map(|post| post.connection).collect::<Vec<_>>(),
        [0, 1]
    );
    assert!(posts.iter().all(|post| post.body == b"sms"));
}

#[tokio::test]
async fn a_streamed_post_that_may_have_arrived_is_not_sent_again() {
    assert_post_not_sent_again(Action::CloseUnanswered, streamed("sms")).await;
}

#[tokio::test]
async fn a_buffered_post_is_not_sent_again_once_part_of_an_answer_came() {
    assert_post_not_sent_again(Action::PartialHeadThenClose, buffered("sms")).await;
}

#[tokio::test]
async fn an_idempotent_request_is_sent_again_even_after_part_of_an_answer() {
    let (upstream, client) = warmed_up(Action::PartialHeadThenClose).await;
    let (status, body) = exchange(&client, Method::PUT, &upstream.url("/list"), buffered("{}"))
        .await
        .expect("sent again on a fresh connection");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"fresh"[..]));
    assert_eq!(seen(&upstream, "PUT").len(), 2);
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let idle_timeout = Duration::from_millis(500);
    let upstream = ScriptedUpstream::start(|_, _| Action::Respond("ok")).await;
    let settings = PoolSettings {
        idle_timeout,
        ..PoolSettings::default()
    };
    let client = client_for(&upstream.url(""), &[], settings);
    let url = upstream.url("/");
    exchange(&client, Method::GET, &url, buffered(""))
        .await
        .expect("first");
    let before_last_use = Instant::now();
    exchange(&client, Method::GET, &url, buffered(""))
        .await
        .expect("second, on the same connection");
    assert_eq!(upstream.accepted(), 1);
    assert_eq!(client.idle_connections(&origin(&url)), 1);
    upstream
        .wait_for(Event::ClosedByClient { connection: 0 })
        .await;
    assert!(
        before_last_use.elapsed() >= idle_timeout,
        "closed after {:?}",
        before_last_use.elapsed()
    );
    next_on_a_new_connection(&upstream, &client, &url).await;
}

#[tokio::test]
async fn idle_connections_per_upstream_are_bounded() {
    // Every request is held until four are held at once: four connections.
    let upstream = ScriptedUpstream::start(|_, _| Action::RespondWhenHeld(4)).await;
    let settings = PoolSettings {
        max_idle: 2,
        ..PoolSettings::default()
    };
    let client = client_for(&upstream.url(""), &[], settings);
    let url = upstream.url("/");
    let burst = (0..4).map(|_| exchange(&client, Method::GET, &url, buffered("")));
    for answer in futures_util::future::join_all(burst).await {
        assert_eq!(answer.expect("answered").0, StatusCode::OK);
    }
    assert_eq!(upstream.accepted(), 4);
    assert_eq!(client.idle_connections(&origin(&url)), 2);
    // The two beyond the bound were closed.
    upstream.wait_for_client_closes(2).await;
    let again = (0..2).map(|_| exchange(&client, Method::GET, &url, buffered("")));
    for answer in futures_util::future::join_all(again).await {
        assert_eq!(answer.expect("answered").0, StatusCode::OK);
    }
    assert_eq!(
        upstream.accepted(),
        4,
        "the two kept connections were reused"
    );
}

#[tokio::test]
async fn a_response_dropped_before_its_end_closes_its_connection() {
    let upstream = ScriptedUpstream::start(|connection, _| match connection {
        0 => Action::StallMidBody,
        _ => Action::Respond("next"),
    })
    .await;
    let client = client_for(&upstream.url(""), &[], PoolSettings::default());
    let url = upstream.url("/bytes");
    let mut body = unread_body(&client, &url).await;
    let first = body.frame().await.expect("a frame").expect("data");
    assert!(first.is_data());
    drop(body); // the client went away mid-download
    upstream
        .wait_for(Event::ClosedByClient { connection: 0 })
        .await;
    let body = next_on_a_new_connection(&upstream, &client, &url).await;
    assert_eq!(&body[..], b"next");
}

#[tokio::test]
async fn a_request_abandoned_while_its_body_goes_out_closes_its_connection() {
    let upstream = ScriptedUpstream::start(|_, _| Action::Respond("ok")).await;
    let client = client_for(&upstream.url(""), &[], PoolSettings::default());
    let url = upstream.url("/upload");
    exchange(&client, Method::GET, &url, buffered(""))
        .await
        .expect("warm-up");
    upstream.wait_for(Event::Head { connection: 0 }).await; // the warm-up's
    let sending = send_once(&client, Method::POST, &url, stalled_upload());
    tokio::select! {
        answer = sending => panic!("answered a request whose body never ended: {answer:?}"),
        () = upstream.wait_for(Event::Head { connection: 0 }) => {}
    }
    // The request future is gone (the client disconnected): so is its connection.
    upstream
        .wait_for(Event::ClosedByClient { connection: 0 })
        .await;
    next_on_a_new_connection(&upstream, &client, &url).await;
}

#[tokio::test]
async fn connections_through_the_egress_proxy_are_kept_and_reused() {
    let pki = TestPki::generate();
    let upstream = TlsUpstream::start(&pki).await;
    let egress = ForwardProxy::start(&[upstream.addr.port()]);
    let client = client_trusting(
        &pki,
        &upstream.url(),
        &[("IPPROXY_UPSTREAM__PROXY", &egress.url())],
    );
    let url = format!("{}/_rest/v4/my/did", upstream.url());
    for _ in 0..3 {
        let (status, body) = exchange(&client, Method::GET, &url, buffered(""))
            .await
            .expect("through the tunnel");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], br#"{"upstream":"tls"}"#);
    }
    let target = format!("localhost:{}", upstream.addr.port());
    assert!(egress.saw_connect_to(&target), "{}", egress.log());
    assert_eq!(egress.connect_requests().len(), 1, "{}", egress.log());
    assert_eq!(client.idle_connections(&origin(&upstream.url())), 1);
}

#[tokio::test]
async fn a_new_tls_connection_resumes_the_session_of_the_previous_one() {
    let pki = TestPki::generate();
    let app = axum::Router::new().fallback(|| async { "ok" });
    // `Connection: close` on every answer: each request needs a new connection.
    let server = HandshakeCounter::start(&pki, &[b"http/1.1"], true, app).await;
    let client = client_trusting(&pki, &server.url(""), &[]);
    get_in_turn(&client, &server.url("/"), 2, b"ok").await;
    assert_eq!(server.handshakes(), 2);
    assert_eq!(
        server.resumed(),
        1,
        "the second handshake resumed the first session"
    );
}

#[tokio::test]
async fn an_h2_upstream_takes_concurrent_requests_on_one_connection() {
    const CONCURRENT: usize = 4;
    let pki = TestPki::generate();
    let together = Arc::new(tokio::sync::Barrier::new(CONCURRENT));
    let app = axum::Router::new()
        .route(
            "/warm",
            axum::routing::get(|request: axum::extract::Request| async move {
                format!("{:?}", request.version())
            }),
        )
        .route(
            "/held",
            axum::routing::get(move |request: axum::extract::Request| {
                let together = Arc::clone(&together);
                async move {
                    // Answers only once all of them are in flight at the same time.
                    together.wait().await;
                    format!("{:?}", request.version())
                }
            }),
        );
    let server = HandshakeCounter::start(&pki, &[b"h2", b"http/1.1"], false, app).await;
    let client = client_trusting(&pki, &server.url(""), &[]);
    let (_, body) = exchange(&client, Method::GET, &server.url("/warm"), buffered(""))
        .await
        .expect("warm-up");
    assert_eq!(&body[..], b"HTTP/2.0");
    let url = server.url("/held");
    let concurrent = (0..CONCURRENT).map(|_| exchange(&client, Method::GET, &url, buffered("")));
    let answers = tokio::time::timeout(EVENT_LIMIT, futures_util::future::join_all(concurrent))
        .await
        .expect("all in flight at once, multiplexed");
    for answer in answers {
        assert_eq!(&answer.expect("answered").1[..], b"HTTP/2.0");
    }
    assert_eq!(server.handshakes(), 1, "one connection carried them all");
    assert_eq!(client.idle_connections(&origin(&server.url(""))), 1);
}
