//! HTTPS test servers with a CA made in the test: [`TestPki`] (a CA and a
//! `localhost` / `127.0.0.1` certificate it signed), [`serve_tls_app`] (any axum app
//! over TLS, e.g. the simulator as an HTTPS auth endpoint) and [`TlsUpstream`] (an
//! HTTPS upstream that records the `Authorization` header of each request).

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};

/// A test CA and a `localhost` / `127.0.0.1` certificate it signed, as PEM.
pub(crate) struct TestPki {
    pub ca_pem: String,
    pub leaf_pem: String,
    pub leaf_key_pem: String,
}

impl TestPki {
    pub(crate) fn generate() -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ipproxy test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.use_authority_key_identifier_extension = true;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("leaf certificate");
        Self {
            ca_pem: ca_cert.pem(),
            leaf_pem: leaf_cert.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `ca.pem` in `dir`, for `upstream.ca_file`.
    pub(crate) fn write_ca(&self, dir: &tempfile::TempDir) -> PathBuf {
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA");
        path
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::new(self.server_config()))
    }

    /// A server configuration with the `localhost` certificate (no ALPN; rustls's
    /// default session cache, so clients can resume).
    pub(crate) fn server_config(&self) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        let certificate =
            pki_types::CertificateDer::from_pem_slice(self.leaf_pem.as_bytes()).expect("leaf PEM");
        let key = pki_types::PrivateKeyDer::from_pem_slice(self.leaf_key_pem.as_bytes())
            .expect("key PEM");
        // ring: the provider the proxy's rustls uses; no process-wide default needed.
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![certificate], key)
        .expect("server certificate")
    }
}

/// Serves `app` over TLS with `pki`'s certificate on `127.0.0.1:0` until the returned
/// sender is dropped.
pub(crate) async fn serve_tls_app(
    app: axum::Router,
    pki: &TestPki,
) -> (SocketAddr, oneshot::Sender<()>) {
    serve_tls(pki.acceptor(), app, true, |_| {}).await
}

/// Serves `app` over TLS with `acceptor` on `127.0.0.1:0` until the returned sender is
/// dropped: HTTP/1.1 keep-alive as `keep_alive` says, or HTTP/2; `handshaken` sees
/// each connection whose handshake succeeded.
async fn serve_tls(
    acceptor: TlsAcceptor,
    app: axum::Router,
    keep_alive: bool,
    handshaken: impl Fn(&rustls::ServerConnection) + Clone + Send + 'static,
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
                _ = &mut stopped => break,
            };
            let acceptor = acceptor.clone();
            let service = TowerToHyperService::new(app.clone());
            let handshaken = handshaken.clone();
            tokio::spawn(async move {
                // A refused handshake (the untrusted case) ends here.
                let Ok(tls_stream) = acceptor.accept(stream).await else {
                    return;
                };
                handshaken(tls_stream.get_ref().1);
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().keep_alive(keep_alive);
                let _ = builder
                    .serve_connection(TokioIo::new(tls_stream), service)
                    .await;
            });
        }
    });
    (addr, stop)
}

/// An HTTPS upstream on 127.0.0.1 that answers 200 and records each request's
/// `Authorization` header.
pub(crate) struct TlsUpstream {
    pub addr: SocketAddr,
    authorizations: Arc<Mutex<Vec<String>>>,
    _stop: oneshot::Sender<()>,
}

impl TlsUpstream {
    pub(crate) async fn start(pki: &TestPki) -> Self {
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&authorizations);
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let seen = Arc::clone(&seen);
            async move {
                let authorization = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                    .unwrap_or_default();
                seen.lock().expect("not poisoned").push(authorization);
                (
                    [("content-type", "application/json")],
                    r#"{"upstream":"tls"}"#,
                )
            }
        });
        let (addr, stop) = serve_tls_app(app, pki).await;
        Self {
            addr,
            authorizations,
            _stop: stop,
        }
    }

    /// `https://localhost:PORT` (the certificate names `localhost` and `127.0.0.1`).
    pub(crate) fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub(crate) fn authorizations(&self) -> Vec<String> {
        self.authorizations.lock().expect("not poisoned").clone()
    }
}

/// An HTTPS server that counts its TLS handshakes and how many resumed an earlier
/// session, offering `alpn` by ALPN and serving `app` over HTTP/1.1 or HTTP/2.
pub(crate) struct HandshakeCounter {
    pub addr: SocketAddr,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    resumed: Arc<std::sync::atomic::AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl HandshakeCounter {
    /// `close_each`: HTTP/1.1 answers carry `Connection: close`, so every request
    /// needs a new connection.
    pub(crate) async fn start(
        pki: &TestPki,
        alpn: &[&[u8]],
        close_each: bool,
        app: axum::Router,
    ) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let mut config = pki.server_config();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let resumed = Arc::new(AtomicUsize::new(0));
        let (all, again) = (Arc::clone(&handshakes), Arc::clone(&resumed));
        let count = move |connection: &rustls::ServerConnection| {
            all.fetch_add(1, Ordering::SeqCst);
            if connection.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                again.fetch_add(1, Ordering::SeqCst);
            }
        };
        let (addr, stop) = serve_tls(acceptor, app, !close_each, count).await;
        Self {
            addr,
            handshakes,
            resumed,
            _stop: stop,
        }
    }

    /// `https://localhost:PORT`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// TLS handshakes completed (one per connection).
    pub(crate) fn handshakes(&self) -> usize {
        self.handshakes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Handshakes that resumed an earlier session.
    pub(crate) fn resumed(&self) -> usize {
        self.resumed.load(std::sync::atomic::Ordering::SeqCst)
    }
}
