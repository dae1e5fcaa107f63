//! A scripted HTTP/1.1 upstream over raw TCP, for the connection pool's tests: the test
//! decides what happens to each request (by connection and by request on it), such as
//! closing a kept-alive connection without a word, and awaits what the upstream saw
//! (accepts, requests, a client closing its connection) as events.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

/// How long a test waits for an event before failing.
pub(crate) const EVENT_LIMIT: Duration = Duration::from_secs(10);

/// What the upstream does with one request, once it has read it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    /// `200` with the body, the connection kept open.
    Respond(&'static str),
    /// `200` (no `Connection: close`), then the upstream closes the connection, as
    /// a server does when its keep-alive timeout passes.
    RespondThenClose(&'static str),
    /// The connection closes without a byte of answer.
    CloseUnanswered,
    /// Part of a status line, then the connection closes.
    PartialHeadThenClose,
    /// A head announcing a long body and the first bytes of it, then nothing more.
    StallMidBody,
    /// Held until this many requests are held at once, then answered `200` like
    /// `Respond`.
    RespondWhenHeld(usize),
    /// `200` with a body of this many bytes, in one write: more than the client reads
    /// at once, so it arrives in many reads.
    RespondBytes(usize),
    /// These bytes as they are (a head and what follows it); the connection is kept
    /// open for the client to use or close, whatever the head says.
    Raw(&'static str),
    /// These bytes as they are, as soon as the head is in, before the request body
    /// (as a server refusing an upload does); the body is read afterwards.
    RawBeforeBody(&'static str),
}

/// What the upstream saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A request head arrived on the connection (its body may still be coming).
    Head { connection: usize },
    /// The client closed the connection (the upstream read its end).
    ClosedByClient { connection: usize },
    /// The upstream closed the connection as scripted.
    ClosedByUpstream { connection: usize },
}

/// A request as the upstream read it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub connection: usize,
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

type Script = Arc<dyn Fn(usize, usize) -> Action + Send + Sync>;

/// A running scripted upstream.
pub(crate) struct ScriptedUpstream {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
    _stop: oneshot::Sender<()>,
}

impl ScriptedUpstream {
    /// Starts an upstream that answers request `r` on connection `c` (both counted
    /// from 0) with `script(c, r)`.
    pub(crate) async fn start(
        script: impl Fn(usize, usize) -> Action + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (events_tx, events) = mpsc::unbounded_channel();
        let (held_tx, _) = watch::channel(0usize);
        let held = Arc::new(held_tx);
        let script: Script = Arc::new(script);
        let (stop, mut stopped) = oneshot::channel::<()>();
        let counter = Arc::clone(&accepted);
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = &mut stopped => break,
                };
                let connection = counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(Connection {
                    index: connection,
                    stream,
                    script: Arc::clone(&script),
                    seen: Arc::clone(&log),
                    events: events_tx.clone(),
                    held: Arc::clone(&held),
                }));
            }
        });
        Self {
            addr,
            accepted,
            seen,
            events: tokio::sync::Mutex::new(events),
            _stop: stop,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Requests read so far, in order.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// Waits (at most [`EVENT_LIMIT`]) for `wanted`, skipping other events.
    pub(crate) async fn wait_for(&self, wanted: Event) {
        let mut events = self.events.lock().await;
        let found = tokio::time::timeout(EVENT_LIMIT, async {
            while let Some(event) = events.recv().await {
                if event == wanted {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "the upstream never saw {wanted:?}");
    }
}

impl ScriptedUpstream {
    /// Waits (at most [`EVENT_LIMIT`]) until `count` connections were closed by the
    /// client; returns which, skipping other events.
    pub(crate) async fn wait_for_client_closes(&self, count: usize) -> Vec<usize> {
        let mut events = self.events.lock().await;
        let mut closed = Vec::new();
        let _ = tokio::time::timeout(EVENT_LIMIT, async {
            while closed.len() < count {
                match events.recv().await {
                    Some(Event::ClosedByClient { connection }) => closed.push(connection),
                    Some(_) => {}
                    None => return,
                }
            }
        })
        .await;
        assert_eq!(closed.len(), count, "the client closed only {closed:?}");
        closed
    }
}

struct Connection {
    index: usize,
    stream: TcpStream,
    script: Script,
    seen: Arc<Mutex<Vec<Seen>>>,
    events: mpsc::UnboundedSender<Event>,
    held: Arc<watch::Sender<usize>>,
}

async fn serve(mut connection: Connection) {
    let mut buffer = Vec::new();
    for request in 0.. {
        let Some((method, path, framing)) = read_head(&mut connection.stream, &mut buffer).await
        else {
            let _ = connection.events.send(Event::ClosedByClient {
                connection: connection.index,
            });
            return;
        };
        let _ = connection.events.send(Event::Head {
            connection: connection.index,
        });
        let action = (connection.script)(connection.index, request);
        if let Action::RawBeforeBody(bytes) = action
            && connection.stream.write_all(bytes.as_bytes()).await.is_err()
        {
            return;
        }
        let Some(body) = read_body(&mut connection.stream, &mut buffer, framing).await else {
            let _ = connection.events.send(Event::ClosedByClient {
                connection: connection.index,
            });
            return;
        };
        connection.seen.lock().expect("not poisoned").push(Seen {
            connection: connection.index,
            method,
            path,
            body,
        });
        let stream = &mut connection.stream;
        match action {
            Action::Respond(body) => {
                if respond(stream, body).await.is_err() {
                    return;
                }
            }
            Action::RespondWhenHeld(count) => {
                connection.held.send_modify(|held| *held += 1);
                let mut held = connection.held.subscribe();
                let _ = held.wait_for(|held| *held >= count).await;
                if respond(stream, "held").await.is_err() {
                    return;
                }
            }
            Action::RespondBytes(length) => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
                let mut response = head.into_bytes();
                response.resize(response.len() + length, b'x');
                if stream.write_all(&response).await.is_err() {
                    return;
                }
            }
            Action::Raw(bytes) => {
                if stream.write_all(bytes.as_bytes()).await.is_err() {
                    return;
                }
            }
            Action::RawBeforeBody(_) => {}
            Action::RespondThenClose(body) => {
                let _ = respond(stream, body).await;
                return close(connection).await;
            }
            Action::CloseUnanswered => return close(connection).await,
            Action::PartialHeadThenClose => {
                let _ = stream.write_all(b"HTTP/1.1 200 O").await;
                let _ = stream.flush().await;
                return close(connection).await;
            }
            Action::StallMidBody => {
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&[b'x'; 1024]).await;
                // Nothing more: wait for the client to go away.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
                let _ = connection.events.send(Event::ClosedByClient {
                    connection: connection.index,
                });
                return;
            }
        }
    }
}

async fn close(mut connection: Connection) {
    let _ = connection.stream.shutdown().await;
    drop(connection.stream);
    let _ = connection.events.send(Event::ClosedByUpstream {
        connection: connection.index,
    });
}

async fn respond(stream: &mut TcpStream, body: &str) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}

enum Framing {
    Length(usize),
    Chunked,
}

/// Reads one request head; `None` when the client closed the connection.
async fn read_head(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Option<(String, String, Framing)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(length)) = request.parse(buffer) {
            let method = request.method.unwrap_or_default().to_owned();
            let path = request.path.unwrap_or_default().to_owned();
            let header = |name: &str| {
                request
                    .headers
                    .iter()
                    .find(|header| header.name.eq_ignore_ascii_case(name))
                    .map(|header| String::from_utf8_lossy(header.value).into_owned())
            };
            let framing = match header("content-length") {
                Some(length) => Framing::Length(length.trim().parse().unwrap_or(0)),
                None if header("transfer-encoding").is_some() => Framing::Chunked,
                None => Framing::Length(0),
            };
            buffer.drain(..length);
            return Some((method, path, framing));
        }
        if !read_more(stream, buffer).await {
            return None;
        }
    }
}

/// Reads the body that follows a head; `None` when the client closed first.
async fn read_body(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    framing: Framing,
) -> Option<Vec<u8>> {
    match framing {
        Framing::Length(length) => {
            while buffer.len() < length {
                if !read_more(stream, buffer).await {
                    return None;
                }
            }
            Some(buffer.drain(..length).collect())
        }
        // The tests' streamed bodies: chunks kept as they came, up to the last chunk.
        Framing::Chunked => loop {
            if let Some(end) = find(buffer, b"0\r\n\r\n") {
                return Some(buffer.drain(..end + 5).collect());
            }
            if !read_more(stream, buffer).await {
                return None;
            }
        },
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(read) => {
            buffer.extend_from_slice(&chunk[..read]);
            true
        }
    }
}
