//! The floor of the benchmark: the thinnest credential-injecting proxy hyper 1 makes,
//! on the same hyper as ipproxy (the lock file's). A current-thread runtime, HTTP/1.1
//! in and out, a `Vec` of idle upstream senders, the bearer and `Host` headers set,
//! nothing else: no limits, no timeouts, no metrics, no logs, no retry. It is what
//! bench/run.sh compares ipproxy and nginx with; it does not ship (a Cargo example,
//! built by `cargo build --release --example floor`).
//!
//! Configured by environment: `FLOOR_LISTEN` (127.0.0.1:PORT), `FLOOR_UPSTREAM`
//! (HOST:PORT to connect to), `FLOOR_HOST` (the `Host` header sent), `FLOOR_TOKEN`
//! (the bearer token), and for an HTTPS upstream `FLOOR_CA_FILE` (PEM) and
//! `FLOOR_SERVER_NAME` (verified against the certificate).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

type Sender = SendRequest<Incoming>;

struct Upstream {
    addr: String,
    host: HeaderValue,
    auth: HeaderValue,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    idle: Mutex<Vec<Sender>>,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

impl Upstream {
    fn from_env() -> Result<Self, Error> {
        let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
        let tls = match std::env::var("FLOOR_CA_FILE") {
            Ok(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(&path)? {
                    roots.add(cert?)?;
                }
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
                let name = ServerName::try_from(var("FLOOR_SERVER_NAME")?)?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            Err(_) => None,
        };
        Ok(Self {
            addr: var("FLOOR_UPSTREAM")?,
            host: HeaderValue::try_from(var("FLOOR_HOST")?)?,
            auth: HeaderValue::try_from(format!("Bearer {}", var("FLOOR_TOKEN")?))?,
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn connect(&self) -> Result<Sender, Error> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        if let Some((connector, name)) = &self.tls {
            let stream = connector.connect(name.clone(), stream).await?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            Ok(sender)
        } else {
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            Ok(sender)
        }
    }

    /// An idle sender that is still usable, or a new connection.
    async fn checkout(&self) -> Result<Sender, Error> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match idle {
                Some(mut sender) => {
                    if sender.ready().await.is_ok() {
                        return Ok(sender);
                    }
                }
                None => return self.connect().await,
            }
        }
    }

    async fn forward(
        self: &Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Returning>, Error> {
        let (mut parts, body) = request.into_parts();
        parts.headers.insert(AUTHORIZATION, self.auth.clone());
        parts.headers.insert(HOST, self.host.clone());
        let mut sender = self.checkout().await?;
        let response = sender
            .send_request(Request::from_parts(parts, body))
            .await?;
        Ok(response.map(|body| Returning {
            body: Some(body),
            sender: Some(sender),
            upstream: Arc::clone(self),
        }))
    }
}

/// The response body; gives its sender back to the idle list when dropped (a sender
/// whose response was not read to the end is found unusable at the next checkout).
struct Returning {
    body: Option<Incoming>,
    sender: Option<Sender>,
    upstream: Arc<Upstream>,
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take()
            && !sender.is_closed()
        {
            self.upstream
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(sender);
        }
    }
}

fn main() -> Result<(), Error> {
    let listen = std::env::var("FLOOR_LISTEN").map_err(|_| "FLOOR_LISTEN is not set")?;
    let upstream = Arc::new(Upstream::from_env()?);
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&listen).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let upstream = Arc::clone(&upstream);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let upstream = Arc::clone(&upstream);
                        async move {
                            Ok::<_, Infallible>(match upstream.forward(request).await {
                                Ok(response) => response,
                                Err(error) => {
                                    eprintln!("floor: {error}");
                                    let mut response = Response::new(Returning {
                                        body: None,
                                        sender: None,
                                        upstream,
                                    });
                                    *response.status_mut() = StatusCode::BAD_GATEWAY;
                                    response
                                }
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
}
