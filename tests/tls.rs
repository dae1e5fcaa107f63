//! TLS to the upstream, verification always on: a local HTTPS upstream whose CA and
//! certificate are made in the test is trusted through `upstream.ca_file` and refused
//! without it. The login goes to the simulator over plain HTTP.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;
use support::{Proxy, Sim, client, vars};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};

/// A test CA and a `localhost` / `127.0.0.1` certificate it signed, as PEM.
struct TestPki {
    ca_pem: String,
    leaf_pem: String,
    leaf_key_pem: String,
}

impl TestPki {
    fn generate() -> Self {
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
}

/// An HTTPS upstream on 127.0.0.1 that answers 200 and records each request's
/// `Authorization` header.
struct TlsUpstream {
    addr: SocketAddr,
    authorizations: Arc<Mutex<Vec<String>>>,
    _stop: oneshot::Sender<()>,
}

impl TlsUpstream {
    async fn start(pki: &TestPki) -> Self {
        use rustls::pki_types::pem::PemObject;
        let certificate =
            pki_types::CertificateDer::from_pem_slice(pki.leaf_pem.as_bytes()).expect("leaf PEM");
        let key =
            pki_types::PrivateKeyDer::from_pem_slice(pki.leaf_key_pem.as_bytes()).expect("key PEM");
        // ring: the provider reqwest's rustls uses; no process-wide default needed.
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![certificate], key)
        .expect("server certificate");
        let acceptor = TlsAcceptor::from(Arc::new(tls));

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
                tokio::spawn(async move {
                    // A refused handshake (the untrusted case) ends here.
                    let Ok(tls_stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls_stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            authorizations,
            _stop: stop,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    fn authorizations(&self) -> Vec<String> {
        self.authorizations.lock().expect("not poisoned").clone()
    }
}

/// Login at the simulator, API calls to the TLS upstream.
fn proxy_vars(sim: &Sim, upstream: &TlsUpstream) -> Vec<(String, String)> {
    let mut all = sim.vars();
    all.retain(|(name, _)| name != "IPPROXY_UPSTREAM__URL");
    all.extend(vars(&[("IPPROXY_UPSTREAM__URL", &upstream.url())]));
    all
}

/// [`proxy_vars`] plus `upstream.ca_file` holding `ca_pem` (in a temp dir that must
/// outlive the proxy's start).
fn proxy_vars_trusting(
    sim: &Sim,
    upstream: &TlsUpstream,
    ca_pem: &str,
) -> (Vec<(String, String)>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write CA");
    let mut all = proxy_vars(sim, upstream);
    all.extend(vars(&[(
        "IPPROXY_UPSTREAM__CA_FILE",
        &ca_file.display().to_string(),
    )]));
    (all, dir)
}

/// `GET /_rest/v4/my/did` through the proxy, routed to the TLS upstream.
async fn get_did(proxy: &Proxy) -> reqwest::Response {
    client()
        .get(proxy.url("/_rest/v4/my/did"))
        .send()
        .await
        .expect("request reaches the proxy")
}

#[tokio::test]
async fn upstream_signed_by_the_configured_ca_is_trusted() {
    let pki = TestPki::generate();
    let sim = Sim::default().await;
    let upstream = TlsUpstream::start(&pki).await;
    let (proxy_vars, _ca_dir) = proxy_vars_trusting(&sim, &upstream, &pki.ca_pem);
    let proxy = Proxy::start(proxy_vars).await;

    let response = get_did(&proxy).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["upstream"], "tls");
    let authorizations = upstream.authorizations();
    assert_eq!(authorizations.len(), 1, "one request reached the upstream");
    assert!(
        authorizations[0].starts_with("Bearer "),
        "the token was injected over TLS: {authorizations:?}"
    );
    assert_eq!(sim.counters().auth_calls, 1);
}

#[tokio::test]
async fn upstream_with_an_unknown_ca_is_refused_with_502() {
    let pki = TestPki::generate();
    let sim = Sim::default().await;
    let upstream = TlsUpstream::start(&pki).await;
    // Standard web roots only: the test CA is not among them.
    let proxy = Proxy::start(proxy_vars(&sim, &upstream)).await;

    let response = get_did(&proxy).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "upstream_unreachable");
    assert!(
        upstream.authorizations().is_empty(),
        "no request (and no token) crossed an unverified connection"
    );
}

#[tokio::test]
async fn a_ca_file_for_another_ca_does_not_make_the_upstream_trusted() {
    let pki = TestPki::generate();
    let other = TestPki::generate();
    let sim = Sim::default().await;
    let upstream = TlsUpstream::start(&pki).await;
    let (proxy_vars, _ca_dir) = proxy_vars_trusting(&sim, &upstream, &other.ca_pem);
    let proxy = Proxy::start(proxy_vars).await;

    let response = get_did(&proxy).await;
    assert_eq!(response.status(), 502);
    assert!(upstream.authorizations().is_empty());
}
