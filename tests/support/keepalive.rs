//! One HTTP/1.1 connection kept open across requests, as an app's client pool does:
//! for what only one connection shows (a drain, a reload that must not drop it).

use bytes::Bytes;
use serde_json::Value;
use tokio::net::TcpStream;

/// One HTTP/1.1 connection kept open across requests, as an app's client pool does.
pub(crate) struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
}

impl KeepAlive {
    pub(crate) async fn open(addr: std::net::SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        Self { sender }
    }

    /// Status, `Connection` header and JSON body (`null` when not JSON).
    pub(crate) async fn get(&mut self, path: &str) -> (u16, Option<String>, Value) {
        use http_body_util::BodyExt as _;
        self.sender
            .ready()
            .await
            .expect("the connection is still open");
        let request = http::Request::get(path)
            .header("host", "localhost")
            .body(http_body_util::Empty::new())
            .expect("request");
        let response = self.sender.send_request(request).await.expect("answered");
        let status = response.status().as_u16();
        let connection = response
            .headers()
            .get("connection")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, connection, body)
    }
}
