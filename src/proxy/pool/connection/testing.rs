//! Real connections for the pool's unit tests: HTTP/1.1 over loopback TCP to a peer
//! that accepts and says nothing, and HTTP/2 over an in-memory pipe whose driver the
//! test holds, so that it can close the connection at an exact point.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::DuplexStream;
use tokio::net::{TcpListener, TcpStream};

use super::super::super::body::UpstreamBody;
use super::super::super::egress::EgressConnector;
use super::super::{ClientId, PoolSettings};
use super::{Http1, Http2, Opened, Origin, PoolKey, open};
use crate::config::EgressConfig;

/// A loopback origin of its own client: every connection it accepts is kept open.
pub(crate) struct Upstream {
    listener: TcpListener,
    pub home: PoolKey,
    peers: Vec<TcpStream>,
}

impl Upstream {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let home = PoolKey {
            client: ClientId::next(),
            origin: Origin {
                scheme: Scheme::HTTP,
                authority: Authority::try_from(address).expect("authority"),
            },
            settings: PoolSettings::default(),
        };
        Self {
            listener,
            home,
            peers: Vec::new(),
        }
    }

    /// A new HTTP/1.1 connection to this origin, opened as the pool opens one.
    pub(crate) async fn http1(&mut self) -> Http1 {
        let egress = EgressConnector::new(
            HttpConnector::new(),
            &EgressConfig::default(),
            Duration::from_secs(5),
        );
        // Plain `http`: the TLS configuration is not used.
        let tls = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        );
        let (opened, accepted) = tokio::join!(
            open(&egress, &tls, self.home.clone()),
            self.listener.accept()
        );
        self.peers.push(accepted.expect("accepted").0);
        match opened {
            Ok(Opened::Http1(connection)) => connection,
            _ => panic!("an HTTP/1.1 connection"),
        }
    }

    /// A new HTTP/2 connection with this origin's home, over a pipe.
    pub(crate) async fn http2(&self) -> Pipe {
        let (ours, peer) = tokio::io::duplex(64 * 1024);
        // The handshake only writes the preface: no server needs to answer.
        let (sender, driver) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake::<_, UpstreamBody>(TokioIo::new(ours))
            .await
            .expect("HTTP/2 handshake");
        Pipe {
            connection: Http2 {
                sender,
                home: self.home.clone(),
            },
            driver: Some(driver),
            _peer: peer,
        }
    }
}

/// An HTTP/2 connection and its driver, which the test runs or drops.
pub(crate) struct Pipe {
    pub connection: Http2,
    driver: Option<http2::Connection<TokioIo<DuplexStream>, UpstreamBody, TokioExecutor>>,
    _peer: DuplexStream,
}

impl Pipe {
    /// Ends the connection, as its task ending does: every handle sees it closed.
    pub(crate) fn close(&mut self) {
        self.driver = None;
    }
}
