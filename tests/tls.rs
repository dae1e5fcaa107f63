//! TLS to the upstream and to the auth endpoint, verification always on: a local
//! HTTPS server whose CA and certificate are made in the test is trusted through
//! `upstream.ca_file` and refused without it. Unless the test says otherwise, the
//! login goes to the simulator over plain HTTP.

mod support;

use ipproxy::sim::{SimConfig, Simulator};
use serde_json::Value;
use support::tls::{TestPki, TlsUpstream, serve_tls_app};
use support::{Proxy, Sim, client, vars};

/// Login at the simulator, API calls to the TLS upstream.
fn proxy_vars(sim: &Sim, upstream: &TlsUpstream) -> Vec<(String, String)> {
    let mut all = sim.vars();
    all.retain(|(name, _)| name != "IPPROXY_UPSTREAM__URL");
    all.extend(vars(&[("IPPROXY_UPSTREAM__URL", &upstream.url())]));
    all
}

/// A proxy started with `proxy_vars` plus `upstream.ca_file` holding `ca_pem`, and the
/// temp dir of that file, which must outlive the proxy's start.
async fn proxy_trusting(
    mut proxy_vars: Vec<(String, String)>,
    ca_pem: &str,
) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write CA");
    proxy_vars.extend(vars(&[(
        "IPPROXY_UPSTREAM__CA_FILE",
        &ca_file.display().to_string(),
    )]));
    (Proxy::start(proxy_vars).await, dir)
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
    let (proxy, _ca_dir) = proxy_trusting(proxy_vars(&sim, &upstream), &pki.ca_pem).await;

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
    let (proxy, _ca_dir) = proxy_trusting(proxy_vars(&sim, &upstream), &other.ca_pem).await;

    let response = get_did(&proxy).await;
    assert_eq!(response.status(), 502);
    assert!(upstream.authorizations().is_empty());
}

/// `POST /refresh` on the admin listener: a login now.
async fn refresh(proxy: &Proxy) -> reqwest::Response {
    client()
        .post(proxy.admin_url("/refresh"))
        .send()
        .await
        .expect("refresh")
}

/// The simulator as an HTTPS auth endpoint on `https://127.0.0.1:PORT`, and variables
/// that log in there (and send API calls to the plain-HTTP `api` simulator).
async fn https_login(
    pki: &TestPki,
    api: &Sim,
) -> (
    Simulator,
    Vec<(String, String)>,
    tokio::sync::oneshot::Sender<()>,
) {
    let auth = Simulator::new(SimConfig::default());
    let (addr, stop) = serve_tls_app(auth.router(), pki).await;
    let mut all = api.vars();
    all.retain(|(name, _)| name != "IPPROXY_AUTH__URL");
    all.extend(vars(&[(
        "IPPROXY_AUTH__URL",
        &format!("https://127.0.0.1:{}/_rest/v4/authenticate", addr.port()),
    )]));
    (auth, all, stop)
}

#[tokio::test]
async fn login_endpoint_signed_by_the_configured_ca_is_trusted() {
    let pki = TestPki::generate();
    let api = Sim::default().await;
    let (auth, proxy_vars, _auth_stop) = https_login(&pki, &api).await;
    let (proxy, _ca_dir) = proxy_trusting(proxy_vars, &pki.ca_pem).await;

    let response = refresh(&proxy).await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    assert!(
        auth.counters().auth_calls >= 1,
        "the HTTPS endpoint was used"
    );
}

#[tokio::test]
async fn login_endpoint_with_an_unknown_ca_is_refused() {
    let pki = TestPki::generate();
    let api = Sim::default().await;
    let (auth, proxy_vars, _auth_stop) = https_login(&pki, &api).await;
    let proxy = Proxy::start(proxy_vars).await;

    let response = refresh(&proxy).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.expect("json");
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("invalid peer certificate"), "{body}");
    assert_eq!(
        auth.counters().auth_calls,
        0,
        "no login crossed an unverified connection"
    );
}
