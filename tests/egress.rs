//! Behind a corporate egress proxy: a real forward proxy (tinyproxy, started by the
//! test), an HTTPS upstream on `localhost` and an HTTPS auth endpoint (the simulator)
//! on `127.0.0.1`, both with a certificate from a test CA given as `upstream.ca_file`.
//!
//! What is proved: forwarding and logins both go through `CONNECT` tunnels (the
//! proxy's log shows one to each host) with TLS inside; `NO_PROXY` hosts are reached
//! directly; lower-case `http_proxy` is honoured and `HTTP_PROXY` is not; a tunnel
//! that is refused (407, 403), unreachable or silent gives `502 upstream_unreachable`
//! naming the egress proxy, within `connect_timeout`; the proxy's password appears in
//! no output.

mod support;

use std::time::{Duration, Instant};

use ipproxy::sim::{SimConfig, Simulator};
use serde_json::Value;
use support::child::ChildProxy;
use support::forward_proxy::{ForwardProxy, ForwardProxyConfig};
use support::tls::{TestPki, TlsUpstream, serve_tls_app};
use support::{Proxy, Sim, client, closed_port, vars};
use tokio::sync::oneshot;

const PROXY_USER: &str = "egress-user";
const PROXY_PASSWORD: &str = "Pr0xy-Secret-Qw8";
const WRONG_PROXY_PASSWORD: &str = "Wr0ng-Secret-Jk5";
const STATIC_TOKEN: &str = "static-Token-Lm3";

/// The HTTPS upstream (`https://localhost:A`), the HTTPS auth endpoint
/// (`https://127.0.0.1:B`) and the CA file that makes both trusted.
struct Remote {
    upstream: TlsUpstream,
    auth: Simulator,
    auth_port: u16,
    ca_file: String,
    _auth_stop: oneshot::Sender<()>,
    _ca_dir: tempfile::TempDir,
}

impl Remote {
    async fn start() -> Self {
        let pki = TestPki::generate();
        let upstream = TlsUpstream::start(&pki).await;
        let auth = Simulator::new(SimConfig::default());
        let (auth_addr, auth_stop) = serve_tls_app(auth.router(), &pki).await;
        let ca_dir = tempfile::tempdir().expect("temp dir");
        let ca_file = pki.write_ca(&ca_dir).display().to_string();
        Self {
            upstream,
            auth,
            auth_port: auth_addr.port(),
            ca_file,
            _auth_stop: auth_stop,
            _ca_dir: ca_dir,
        }
    }

    /// What `CONNECT` asks for to reach the upstream.
    fn upstream_target(&self) -> String {
        format!("localhost:{}", self.upstream.addr.port())
    }

    /// What `CONNECT` asks for to reach the auth endpoint.
    fn auth_target(&self) -> String {
        format!("127.0.0.1:{}", self.auth_port)
    }

    /// The ports the forward proxy must let `CONNECT` reach.
    fn ports(&self) -> Vec<u16> {
        vec![self.upstream.addr.port(), self.auth_port]
    }

    /// A session credential logging in at the HTTPS auth endpoint, the default route
    /// to the HTTPS upstream, the test CA trusted.
    fn session_vars(&self) -> Vec<(String, String)> {
        let defaults = SimConfig::default();
        vars(&[
            ("IPPROXY_UPSTREAM__URL", &self.upstream.url()),
            ("IPPROXY_UPSTREAM__CA_FILE", &self.ca_file),
            (
                "IPPROXY_AUTH__URL",
                &format!("https://127.0.0.1:{}/_rest/v4/authenticate", self.auth_port),
            ),
            ("IPPROXY_AUTH__USERNAME", &defaults.username),
            ("IPPROXY_AUTH__PASSWORD", &defaults.password),
        ])
    }

    /// A static token (no login) and the default route to the HTTPS upstream.
    fn static_vars(&self) -> Vec<(String, String)> {
        vars(&[
            ("IPPROXY_UPSTREAM__URL", &self.upstream.url()),
            ("IPPROXY_UPSTREAM__CA_FILE", &self.ca_file),
            ("IPPROXY_AUTH__KIND", "static"),
            ("IPPROXY_AUTH__TOKEN", STATIC_TOKEN),
        ])
    }
}

fn with(mut base: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    base.extend(vars(extra));
    base
}

/// `GET /_rest/v4/my/did` through the proxy at `url`.
async fn get_did(url: String) -> reqwest::Response {
    client()
        .get(url)
        .send()
        .await
        .expect("the request reaches ipproxy")
}

/// Asserts a request went through and reached the upstream with the session token.
async fn assert_forwarded(proxy: &Proxy, remote: &Remote) {
    let response = get_did(proxy.url("/_rest/v4/my/did")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["upstream"], "tls");
    let authorizations = remote.upstream.authorizations();
    assert_eq!(authorizations.len(), 1, "{authorizations:?}");
    assert!(
        authorizations[0].starts_with("Bearer "),
        "{authorizations:?}"
    );
    assert_eq!(remote.auth.counters().auth_calls, 1);
}

/// The JSON error body of a `502 upstream_unreachable`, asserted to name `proxy`.
async fn assert_502_naming(response: reqwest::Response, proxy: &str) -> String {
    assert_eq!(response.status(), 502);
    let body = response.text().await.expect("body");
    let json: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["error"], "upstream_unreachable", "{body}");
    let message = json["message"].as_str().expect("message");
    assert!(
        message.contains(&format!("the egress proxy {proxy} ")),
        "{message}"
    );
    body
}

#[tokio::test]
async fn requests_and_logins_go_through_connect_tunnels_to_both_hosts() {
    let remote = Remote::start().await;
    let forward = ForwardProxy::start(&remote.ports());
    let proxy = Proxy::start(with(
        remote.session_vars(),
        &[("IPPROXY_UPSTREAM__PROXY", &forward.url())],
    ))
    .await;

    assert_forwarded(&proxy, &remote).await;
    assert!(
        forward.saw_connect_to(&remote.upstream_target()),
        "forwarding was tunnelled: {:?}",
        forward.connect_requests()
    );
    assert!(
        forward.saw_connect_to(&remote.auth_target()),
        "the login was tunnelled: {:?}",
        forward.connect_requests()
    );
}

#[tokio::test]
async fn the_https_proxy_variable_sends_both_hosts_through_the_tunnel() {
    let remote = Remote::start().await;
    let forward = ForwardProxy::start(&remote.ports());
    let proxy = Proxy::start(with(
        remote.session_vars(),
        &[("HTTPS_PROXY", &forward.url())],
    ))
    .await;

    assert_forwarded(&proxy, &remote).await;
    assert!(forward.saw_connect_to(&remote.upstream_target()));
    assert!(forward.saw_connect_to(&remote.auth_target()));
}

#[tokio::test]
async fn hosts_matching_no_proxy_are_reached_directly() {
    let remote = Remote::start().await;
    let forward = ForwardProxy::start(&remote.ports());
    // A host name for the upstream, a CIDR block for the auth endpoint's address.
    let proxy = Proxy::start(with(
        remote.session_vars(),
        &[
            ("HTTPS_PROXY", &forward.url()),
            ("NO_PROXY", "localhost, 127.0.0.0/8"),
        ],
    ))
    .await;

    assert_forwarded(&proxy, &remote).await;
    assert_eq!(forward.connect_requests(), Vec::<String>::new());
}

#[tokio::test]
async fn a_proxy_requiring_basic_auth_opens_the_tunnel_for_the_right_credentials() {
    let remote = Remote::start().await;
    let forward = ForwardProxy::start_with(&ForwardProxyConfig {
        connect_ports: remote.ports(),
        basic_auth: Some((PROXY_USER.to_owned(), PROXY_PASSWORD.to_owned())),
    });
    let proxy = Proxy::start(with(
        remote.session_vars(),
        &[(
            "IPPROXY_UPSTREAM__PROXY",
            &forward.url_with(PROXY_USER, PROXY_PASSWORD),
        )],
    ))
    .await;

    assert_forwarded(&proxy, &remote).await;
    assert!(forward.saw_connect_to(&remote.upstream_target()));
    assert!(forward.saw_connect_to(&remote.auth_target()));
}

/// Every line and body that could carry the proxy's password.
fn assert_no_password(outputs: &[&str]) {
    for output in outputs {
        assert!(
            !output.contains(WRONG_PROXY_PASSWORD) && !output.contains(PROXY_PASSWORD),
            "the egress proxy's password leaked:\n{output}"
        );
    }
}

#[tokio::test]
async fn a_wrong_proxy_password_gives_502_naming_the_egress_proxy_and_leaks_nothing() {
    let remote = Remote::start().await;
    let forward = ForwardProxy::start_with(&ForwardProxyConfig {
        connect_ports: remote.ports(),
        basic_auth: Some((PROXY_USER.to_owned(), PROXY_PASSWORD.to_owned())),
    });
    let proxy_url = forward.url_with(PROXY_USER, WRONG_PROXY_PASSWORD);
    let env = with(
        remote.static_vars(),
        &[
            ("IPPROXY_UPSTREAM__PROXY", &proxy_url),
            // Everything the proxy logs, hyper's and rustls' lines included.
            ("IPPROXY_LOG__LEVEL", "debug"),
        ],
    );
    let mut child = ChildProxy::start(&env).await;

    let response = get_did(child.url("/_rest/v4/my/did")).await;
    let body = assert_502_naming(response, &forward.addr.to_string()).await;
    // tinyproxy answers a wrong password with 401 (a missing one with 407).
    assert!(
        body.contains("with 401 Unauthorized: the user:password in upstream.proxy is not accepted"),
        "{body}"
    );
    assert!(
        forward.saw_connect_to(&remote.upstream_target()),
        "the tunnel was asked for and refused"
    );
    assert!(
        remote.upstream.authorizations().is_empty(),
        "nothing reached the upstream"
    );

    let check = std::process::Command::new(env!("CARGO_BIN_EXE_ipproxy"))
        .arg("check")
        .env_clear()
        .envs(env.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("run ipproxy check");
    assert!(check.status.success());
    let check_output = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        check_output.contains(&format!(
            "proxy = \"http://{PROXY_USER}:***@{}\"",
            forward.addr
        )),
        "{check_output}"
    );

    child.signal("TERM");
    assert!(child.wait_exit(Duration::from_secs(10)).await.is_some());
    let lines = child.all_lines().join("\n");
    assert!(!lines.is_empty());
    assert_no_password(&[&body, &check_output, &lines]);
}

#[tokio::test]
async fn a_login_through_a_refusing_egress_proxy_logs_which_proxy_refused() {
    let remote = Remote::start().await;
    let forward = ForwardProxy::start_with(&ForwardProxyConfig {
        connect_ports: remote.ports(),
        basic_auth: Some((PROXY_USER.to_owned(), PROXY_PASSWORD.to_owned())),
    });
    let env = with(
        remote.session_vars(),
        &[(
            "HTTPS_PROXY",
            &forward.url_with(PROXY_USER, WRONG_PROXY_PASSWORD),
        )],
    );
    let mut child = ChildProxy::start(&env).await;

    let failure_line = |lines: &[String]| {
        lines
            .iter()
            .find(|line| line.contains("token fetch failed"))
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(line) = failure_line(&child.lines()) {
            break line;
        }
        assert!(Instant::now() < deadline, "no login failure was logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let event: Value = serde_json::from_str(&line).expect("a JSON log line");
    let error = event["error"].as_str().expect("error field");
    assert!(
        error.contains(&format!("the egress proxy {} ", forward.addr)),
        "{line}"
    );
    assert!(
        error.contains("with 401 Unauthorized: the user:password in HTTPS_PROXY is not accepted"),
        "{line}"
    );
    assert!(forward.saw_connect_to(&remote.auth_target()));
    assert_eq!(remote.auth.counters().auth_calls, 0);

    let readiness = client()
        .get(child.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(readiness.status(), 503);
    let readiness = readiness.text().await.expect("body");
    assert!(readiness.contains(&forward.addr.to_string()), "{readiness}");

    child.signal("TERM");
    assert!(child.wait_exit(Duration::from_secs(10)).await.is_some());
    let lines = child.all_lines().join("\n");
    assert_no_password(&[&readiness, &lines]);
}

#[tokio::test]
async fn an_egress_proxy_that_refuses_the_port_gives_502_naming_it() {
    let remote = Remote::start().await;
    // CONNECT is allowed to the auth endpoint's port only: tinyproxy answers 403.
    let forward = ForwardProxy::start(&[remote.auth_port]);
    let proxy = Proxy::start(with(
        remote.static_vars(),
        &[("IPPROXY_UPSTREAM__PROXY", &forward.url())],
    ))
    .await;

    let response = get_did(proxy.url("/_rest/v4/my/did")).await;
    let body = assert_502_naming(response, &forward.addr.to_string()).await;
    assert!(
        body.contains(&format!(
            "refused the tunnel to {} with 403 Access violation",
            remote.upstream_target()
        )),
        "{body}"
    );
    assert!(remote.upstream.authorizations().is_empty());
}

#[tokio::test]
async fn an_unreachable_egress_proxy_gives_502_naming_it() {
    let remote = Remote::start().await;
    let (closed, _reserved) = closed_port();
    let proxy = Proxy::start(with(
        remote.static_vars(),
        &[("IPPROXY_UPSTREAM__PROXY", &format!("http://{closed}"))],
    ))
    .await;

    let response = get_did(proxy.url("/_rest/v4/my/did")).await;
    let body = assert_502_naming(response, &closed.to_string()).await;
    assert!(body.contains("could not be reached"), "{body}");
}

#[tokio::test]
async fn connect_timeout_bounds_a_tunnel_that_never_answers() {
    let remote = Remote::start().await;
    // Accepts connections and never answers a byte.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let (_stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                accepted = silent.accept() => match accepted {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => break,
                },
                _ = &mut stopped => break,
            }
        }
    });
    let proxy = Proxy::start(with(
        remote.static_vars(),
        &[
            ("IPPROXY_UPSTREAM__PROXY", &format!("http://{silent_addr}")),
            ("IPPROXY_UPSTREAM__CONNECT_TIMEOUT", "300ms"),
            ("IPPROXY_SERVER__REQUEST_TIMEOUT", "20s"),
        ],
    ))
    .await;

    let started = Instant::now();
    let response = get_did(proxy.url("/_rest/v4/my/did")).await;
    let elapsed = started.elapsed();
    let body = assert_502_naming(response, &silent_addr.to_string()).await;
    assert!(body.contains("within 300ms"), "{body}");
    assert!(
        elapsed < Duration::from_secs(10),
        "bounded by connect_timeout, not request_timeout: {elapsed:?}"
    );
}

#[tokio::test]
async fn lower_case_http_proxy_is_honoured_for_an_http_target() {
    let sim = Sim::default().await;
    let forward = ForwardProxy::start(&[sim.addr.port()]);
    let proxy = Proxy::start(with(sim.vars(), &[("http_proxy", &forward.url())])).await;

    let response = get_did(proxy.url("/_rest/v4/my/did")).await;
    assert_eq!(response.status(), 200);
    assert!(
        forward.saw_connect_to(&sim.addr.to_string()),
        "{:?}",
        forward.connect_requests()
    );
    assert_eq!(sim.counters().auth_calls, 1);
}

#[tokio::test]
async fn upper_case_http_proxy_is_ignored() {
    let sim = Sim::default().await;
    let forward = ForwardProxy::start(&[sim.addr.port()]);
    let proxy = Proxy::start(with(sim.vars(), &[("HTTP_PROXY", &forward.url())])).await;

    let response = get_did(proxy.url("/_rest/v4/my/did")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(forward.connect_requests(), Vec::<String>::new());
    assert_eq!(sim.counters().auth_calls, 1);
}
