//! What the request log line says, read from the real binary's output over real
//! sockets: an upstream body that breaks off mid-stream is logged with the status
//! that went out and `outcome="upstream_aborted"`, and counted; characters that could
//! forge or disguise a line (controls, bidirectional overrides) never reach a log
//! line raw, in JSON or text.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::child::ChildProxy;
use support::{Sim, client, eventually, vars};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a log line may take to reach the output (the log writer is a thread of
/// its own; a busy machine delays it).
const LINE_LIMIT: Duration = Duration::from_secs(30);

/// What the raw upstream does after reading a request head.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// The whole body, as announced.
    Complete,
    /// Part of a `Content-Length` body, then a TCP reset.
    Reset,
    /// A chunk, then a chunk size that is not hex.
    InvalidChunked,
    /// Part of a `Content-Length` body, then a clean close (short by 90 bytes).
    ClosedShort,
}

impl Ending {
    /// Chosen by the request path's last segment.
    fn from_path(path: &str) -> Self {
        match path.rsplit('/').next() {
            Some("reset") => Self::Reset,
            Some("chunked") => Self::InvalidChunked,
            Some("short") => Self::ClosedShort,
            _ => Self::Complete,
        }
    }
}

/// An HTTP/1.1 upstream over raw TCP that ends each response as its path says.
async fn raw_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream));
        }
    });
    addr
}

async fn answer(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
    let ending = Ending::from_path(&path);
    let response: &[u8] = match ending {
        // One request a connection: this upstream reads no second head.
        Ending::Complete => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nwhole"
        }
        Ending::Reset | Ending::ClosedShort => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"
        }
        Ending::InvalidChunked => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nnot hex\r\n"
        }
    };
    let _ = stream.write_all(response).await;
    let _ = stream.flush().await;
    match ending {
        Ending::Reset => {
            // A zero linger turns the close into a RST.
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Ending::Complete | Ending::ClosedShort => drop(stream),
        // Kept open: the proxy decides when the exchange is over.
        Ending::InvalidChunked => {
            let mut rest = [0u8; 64];
            while let Ok(read) = stream.read(&mut rest).await {
                if read == 0 {
                    break;
                }
            }
        }
    }
}

/// Sends a GET for `path` (raw: the bytes as given) with request id `request_id` and
/// `Connection: close` on a new connection; the connection, for the answer.
async fn send_get(addr: SocketAddr, path: &str, request_id: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nx-request-id: {request_id}\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    stream
}

/// Sends a GET for `path` with request id `request_id`; whatever came back before the
/// connection ended (a broken-off body ends it with an error).
async fn get(addr: SocketAddr, path: &str, request_id: &str) -> Vec<u8> {
    let mut stream = send_get(addr, path, request_id).await;
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(read)) => response.extend_from_slice(&buffer[..read]),
            Err(_) => panic!(
                "{path}: no end of the answer within 30 s: {}",
                String::from_utf8_lossy(&response)
            ),
        }
    }
    response
}

/// The JSON request line of `request_id`, once written.
async fn request_line(proxy: &ChildProxy, request_id: &str) -> Value {
    let line = proxy.request_line(request_id, LINE_LIMIT).await;
    line.unwrap_or_else(|| panic!("no request line for {request_id}: {:?}", proxy.lines()))
}

#[tokio::test]
async fn an_upstream_body_broken_off_is_logged_as_sent_with_its_outcome_and_counted() {
    let sim = Sim::default().await;
    let upstream = raw_upstream().await;
    let mut all = sim.vars();
    all.retain(|(key, _)| key != "IPPROXY_UPSTREAM__URL");
    all.extend(vars(&[(
        "IPPROXY_UPSTREAM__URL",
        &format!("http://{upstream}"),
    )]));
    let proxy = ChildProxy::start(&all).await;

    let whole = get(proxy.addr, "/x/complete", "body-complete").await;
    assert!(
        whole.ends_with(b"whole"),
        "{}",
        String::from_utf8_lossy(&whole)
    );
    let line = request_line(&proxy, "body-complete").await;
    assert_eq!(line["status"], 200, "{line}");
    assert!(
        line.get("outcome").is_none(),
        "a complete body has no outcome: {line}"
    );

    for (path, request_id) in [
        ("/x/reset", "body-reset"),
        ("/x/chunked", "body-chunked"),
        ("/x/short", "body-short"),
    ] {
        // The client gets the head and part of the body, or (when the error comes in
        // the same read as the head, before hyper wrote it) nothing; never a whole
        // answer.
        let response = get(proxy.addr, path, request_id).await;
        assert!(
            response.is_empty() || response.starts_with(b"HTTP/1.1 200"),
            "{request_id}: {}",
            String::from_utf8_lossy(&response)
        );
        let line = request_line(&proxy, request_id).await;
        assert_eq!(
            line["status"], 200,
            "{request_id}: the status as sent: {line}"
        );
        assert_eq!(line["outcome"], "upstream_aborted", "{request_id}: {line}");
    }
    let text = support::metrics::scrape(&client(), &proxy.admin_url("/metrics")).await;
    assert_eq!(
        support::metrics::sum(&text, "ipproxy_upstream_aborted_total", &[]),
        3.0,
        "{text}"
    );
}

/// Characters a client can put in a path (raw UTF-8 bytes in the request line, which
/// the HTTP parser lets through) that would reorder or hide text where a line is read.
const DISGUISING: [char; 4] = ['\u{202e}', '\u{2066}', '\u{200b}', '\u{feff}'];

/// Sends a request whose path carries every [`DISGUISING`] character raw.
async fn send_disguised_path(addr: SocketAddr, request_id: &str) {
    let path: String = format!("/x/{}gpj.exe", DISGUISING.iter().collect::<String>());
    let mut stream = send_get(addr, &path, request_id).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("an answer within 30 s");
    assert!(response.starts_with(b"HTTP/1.1 "), "answered");
}

#[tokio::test]
async fn bidirectional_and_invisible_characters_are_escaped_in_json_lines() {
    let sim = Sim::default().await;
    let proxy = ChildProxy::start(&sim.vars()).await;
    send_disguised_path(proxy.addr, "disguised-json").await;
    let line = request_line(&proxy, "disguised-json").await;
    // Decoded, the JSON still says what the client sent.
    let path = line["path"].as_str().expect("a path");
    assert!(
        DISGUISING.iter().all(|character| path.contains(*character)),
        "{line}"
    );
    let raw = proxy
        .lines()
        .into_iter()
        .find(|raw| raw.contains("disguised-json") && raw.contains("\"request\""))
        .expect("the raw line");
    assert!(raw.is_ascii(), "escaped as \\uXXXX: {raw}");
    assert!(raw.contains("\\u202e"), "{raw}");
}

#[tokio::test]
async fn bidirectional_and_invisible_characters_are_escaped_in_text_lines() {
    let sim = Sim::default().await;
    let mut all = sim.vars();
    all.extend(vars(&[("IPPROXY_LOG__FORMAT", "text")]));
    let proxy = ChildProxy::start(&all).await;
    send_disguised_path(proxy.addr, "disguised-text").await;
    let mut raw = None;
    let written = eventually(LINE_LIMIT, || {
        raw = proxy
            .lines()
            .into_iter()
            .find(|line| line.contains("disguised-text"));
        let done = raw.is_some();
        async move { done }
    })
    .await;
    assert!(written, "no line for the request: {:?}", proxy.lines());
    let raw = raw.expect("found");
    assert!(
        !raw.chars().any(|character| DISGUISING.contains(&character)),
        "no raw override or invisible character: {raw:?}"
    );
    assert!(raw.contains("\\u{202e}"), "{raw}");
}
