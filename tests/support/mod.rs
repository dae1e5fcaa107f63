//! Shared spawning helpers for the integration tests: the simulator and the proxy run
//! in process on `127.0.0.1:0` sockets; everything is stopped when its handle drops.

#![allow(dead_code)] // each test binary uses a different subset

pub(crate) mod child;
pub(crate) mod forward_proxy;
pub(crate) mod keepalive;
pub(crate) mod metrics;
pub(crate) mod otlp;
pub(crate) mod prometheus;
pub(crate) mod redis;
pub(crate) mod scripted;
pub(crate) mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ipproxy::config;
use ipproxy::sim::{Counters, SimConfig, Simulator};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running simulator.
pub(crate) struct Sim {
    pub sim: Simulator,
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Sim {
    pub(crate) async fn start(config: SimConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
        let addr = listener.local_addr().expect("sim addr");
        let sim = Simulator::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(sim.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            sim,
            addr,
            _stop: stop,
        }
    }

    pub(crate) async fn default() -> Self {
        Self::start(SimConfig::default()).await
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn counters(&self) -> Counters {
        self.sim.counters()
    }

    /// How many times an SMS with `text` was sent (whatever its numbers).
    pub(crate) fn sends_of(&self, text: &str) -> u64 {
        self.sim
            .sends()
            .iter()
            .filter(|send| send.text == text)
            .map(|send| send.count)
            .sum()
    }

    /// Variables that point the default credential and upstream at this simulator.
    pub(crate) fn vars(&self) -> Vec<(String, String)> {
        let defaults = SimConfig::default();
        vars(&[
            ("IPPROXY_UPSTREAM__URL", &self.url()),
            (
                "IPPROXY_AUTH__URL",
                &format!("{}/_rest/v4/authenticate", self.url()),
            ),
            ("IPPROXY_AUTH__USERNAME", &defaults.username),
            ("IPPROXY_AUTH__PASSWORD", &defaults.password),
        ])
    }
}

/// `access.allow_hosts` for the proxies the helpers start, unless a test sets its own:
/// the host names that tests of other defences send as a placeholder (`Host: x`, an
/// absolute-form target at `attacker.invalid`). Every other name is refused `421`, as
/// in production; tests/browser.rs starts its proxies with lists of its own.
pub(crate) const TEST_ALLOW_HOSTS: &str = r#"["x", "attacker.invalid"]"#;

/// The variable that sets `access.allow_hosts`.
pub(crate) const ALLOW_HOSTS_VAR: &str = "IPPROXY_ACCESS__ALLOW_HOSTS";

/// `vars` with [`TEST_ALLOW_HOSTS`] first, unless `vars` or the file (`toml`) set
/// `access.allow_hosts` themselves.
pub(crate) fn with_test_hosts(
    toml: Option<&str>,
    vars: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let set = vars.iter().any(|(name, _)| name == ALLOW_HOSTS_VAR)
        || toml.is_some_and(|toml| toml.contains("allow_hosts"));
    if set {
        return vars;
    }
    let mut all = vec![(ALLOW_HOSTS_VAR.to_owned(), TEST_ALLOW_HOSTS.to_owned())];
    all.extend(vars);
    all
}

pub(crate) fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// A running proxy (proxy and admin listeners on ephemeral loopback ports).
pub(crate) struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ipproxy::server::ServeError>>>,
    _config_dir: Option<tempfile::TempDir>,
}

impl Proxy {
    /// Starts a proxy configured by `vars` only.
    pub(crate) async fn start(vars: Vec<(String, String)>) -> Self {
        Self::start_with(None, vars).await
    }

    /// Starts a proxy configured by a TOML file (written to a temp dir) and `vars`.
    pub(crate) async fn start_with_file(toml: &str, vars: Vec<(String, String)>) -> Self {
        Self::start_with(Some(toml), vars).await
    }

    async fn start_with(toml: Option<&str>, vars: Vec<(String, String)>) -> Self {
        let dir = toml.map(|_| tempfile::tempdir().expect("temp dir"));
        let file = dir.as_ref().zip(toml).map(|(dir, toml)| {
            let path = dir.path().join("ipproxy.toml");
            std::fs::write(&path, toml).expect("write config");
            path
        });
        let vars = with_test_hosts(toml, vars);
        let config = config::load(file.as_deref(), vars).expect("valid test configuration");
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = proxy.local_addr().expect("proxy addr");
        let admin_addr = admin.local_addr().expect("admin addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ipproxy::serve(
            config,
            ipproxy::Listeners { proxy, admin },
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            admin: admin_addr,
            stop: Some(stop),
            task: Some(task),
            _config_dir: dir,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Waits for `/readyz` to answer 200; fails the test after [`PATIENCE`].
    pub(crate) async fn until_ready(&self) {
        until_ready(&self.admin_url("/readyz")).await;
    }

    /// Signals shutdown and waits for `serve` to return.
    pub(crate) async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("serve task").expect("serve result");
        }
    }
}

/// A client that never pools connections across tests and never follows redirects.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// How long an "eventually" waits for something that normally takes a moment: long,
/// because a deadline costs nothing when things go right and a busy machine (other
/// builds, `stress-ng`) can stall a process for seconds.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// Waits for `readyz` (a proxy's admin `/readyz` URL) to answer 200; fails the test
/// after [`PATIENCE`].
pub(crate) async fn until_ready(readyz: &str) {
    let client = client();
    let ready = eventually(PATIENCE, || async {
        client
            .get(readyz)
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
    assert!(ready, "the proxy became ready");
}

/// Waits until `condition` holds, checking every 20 ms, at most `limit`. Returns
/// whether it held. For conditions that are driven by time passing (a token's
/// refresh time), not a stand-in for an awaitable event.
pub(crate) async fn eventually<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A test upstream that answers every request with `status` and `body`, counting
/// requests; for 401 pass-through and retry limits.
pub(crate) struct FixedUpstream {
    pub addr: SocketAddr,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _stop: oneshot::Sender<()>,
}

impl FixedUpstream {
    pub(crate) async fn start(status: u16, body: &'static str) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let hits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&hits);
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let counter = Arc::clone(&counter);
            async move {
                // Read the whole body, as a real upstream would.
                let _ = axum::body::to_bytes(request.into_body(), usize::MAX).await;
                counter.fetch_add(1, Ordering::SeqCst);
                (
                    http::StatusCode::from_u16(status).expect("test status"),
                    [
                        ("content-type", "application/json"),
                        ("x-upstream", "fixed"),
                    ],
                    body,
                )
            }
        });
        let (addr, stop) = serve_app(app).await;
        Self {
            addr,
            hits,
            _stop: stop,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A loopback port where nothing listens, reserved for as long as the returned socket
/// lives: it is bound but never listening, so connections are refused and no other
/// test's server can take the port meanwhile.
pub(crate) fn closed_port() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("loopback"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    (addr, socket)
}

/// Sends `head` (a raw request head, without the final blank line) on a fresh
/// connection with `Connection: close`, and returns the raw response. For requests a
/// normal client would rewrite (dot segments, odd encodings).
pub(crate) async fn raw_request(addr: SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("{head}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("response within 5 s")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// The status code of a raw HTTP/1.1 response.
pub(crate) fn raw_status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line")
}

/// Serves a test app on `127.0.0.1:0` until the returned sender is dropped.
pub(crate) async fn serve_app(app: axum::Router) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind test app");
    let addr = listener.local_addr().expect("test app addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    (addr, stop)
}

/// The path of a server binary the tests need (`tinyproxy`, `redis-server`), from
/// `PATH` or the usual Debian places; a test that needs it fails with `hint` without
/// it: never a silent skip.
pub(crate) fn server_binary(name: &str, hint: &str) -> std::path::PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/bin", "/usr/sbin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join(name));
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} is not installed: {hint}");
}

/// Whether the server process in `child` has exited (a start that failed); one that
/// has is cleared, so that nothing signals its pid, which may be reused, later.
pub(crate) fn exited(child: &mut Option<std::process::Child>) -> bool {
    let gone = child
        .as_mut()
        .is_some_and(|running| matches!(running.try_wait(), Ok(Some(_))));
    if gone {
        *child = None;
    }
    gone
}

/// A loopback port that was free a moment ago (for servers started by the tests,
/// which cannot be handed a bound socket).
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
