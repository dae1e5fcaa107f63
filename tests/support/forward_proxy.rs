//! A real forward proxy for the egress tests: Debian's `tinyproxy`, started on a free
//! loopback port with a generated configuration, its log in a temporary directory,
//! stopped by PID when dropped. A missing `tinyproxy` fails the test that needs it
//! (`scripts/test.sh` and `.ci/run` install it): it is never skipped silently.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long tinyproxy may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(10);
/// Attempts at a free port (another process may take the one just found).
const START_ATTEMPTS: usize = 3;

/// How the forward proxy is set up.
#[derive(Debug, Default, Clone)]
pub(crate) struct ForwardProxyConfig {
    /// The only ports `CONNECT` may reach (tinyproxy's `ConnectPort`); at least one.
    pub connect_ports: Vec<u16>,
    /// `BasicAuth user password`: the proxy then requires these credentials.
    pub basic_auth: Option<(String, String)>,
}

/// A running tinyproxy.
pub(crate) struct ForwardProxy {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ForwardProxy {
    /// Starts tinyproxy allowing `CONNECT` to `connect_ports` only, without
    /// credentials.
    pub(crate) fn start(connect_ports: &[u16]) -> Self {
        Self::start_with(&ForwardProxyConfig {
            connect_ports: connect_ports.to_vec(),
            basic_auth: None,
        })
    }

    /// Starts tinyproxy as `config` says and waits until it accepts connections.
    pub(crate) fn start_with(config: &ForwardProxyConfig) -> Self {
        assert!(
            !config.connect_ports.is_empty(),
            "name the ports CONNECT may reach"
        );
        let binary = tinyproxy();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = super::free_port();
            let conf = write_config(dir.path(), port, config);
            let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
            let child = Command::new(&binary)
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn tinyproxy");
            let mut proxy = Self {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                log: dir.path().join("tinyproxy.log"),
                _dir: dir,
            };
            if proxy.wait_until_accepting() {
                return proxy;
            }
            // It exited (another process took the port meanwhile): dropped, try another.
        }
        panic!("tinyproxy did not start in {START_ATTEMPTS} attempts");
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://user:password@127.0.0.1:PORT`.
    pub(crate) fn url_with(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@{}", self.addr)
    }

    /// Its log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The request lines of the `CONNECT` requests it received so far, e.g.
    /// `CONNECT localhost:4443 HTTP/1.1` (tinyproxy logs each request line before it
    /// acts on it, so a request that got its answer is in the log).
    pub(crate) fn connect_requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|line| line.split_once("): ").map(|(_, request)| request))
            .filter(|request| request.starts_with("CONNECT "))
            .map(str::to_owned)
            .collect()
    }

    /// Whether a `CONNECT` to `host_port` was received.
    pub(crate) fn saw_connect_to(&self, host_port: &str) -> bool {
        let wanted = format!("CONNECT {host_port} ");
        self.connect_requests()
            .iter()
            .any(|request| request.starts_with(&wanted))
    }

    /// True once a TCP connection is accepted; false if tinyproxy exits first. Panics
    /// after [`START_LIMIT`].
    fn wait_until_accepting(&mut self) -> bool {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            if let Ok(Some(_status)) = self.child.try_wait() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not accept connections within {START_LIMIT:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        // `Child::kill` signals this child's PID only.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tinyproxy() -> PathBuf {
    super::server_binary(
        "tinyproxy",
        "the egress tests need a real forward proxy: run `apt-get install -y tinyproxy` (scripts/test.sh does it when it can)",
    )
}

fn write_config(dir: &Path, port: u16, config: &ForwardProxyConfig) -> PathBuf {
    let mut text = format!(
        "Port {port}\n\
         Listen 127.0.0.1\n\
         Timeout 30\n\
         MaxClients 64\n\
         Allow 127.0.0.1\n\
         DisableViaHeader Yes\n\
         LogFile \"{}\"\n\
         LogLevel Connect\n",
        dir.join("tinyproxy.log").display()
    );
    for connect_port in &config.connect_ports {
        text.push_str(&format!("ConnectPort {connect_port}\n"));
    }
    if let Some((user, password)) = &config.basic_auth {
        text.push_str(&format!("BasicAuth {user} {password}\n"));
    }
    let path = dir.join("tinyproxy.conf");
    std::fs::write(&path, text).expect("write tinyproxy.conf");
    path
}
