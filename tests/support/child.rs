//! The real `ipproxy` binary as a child process, for what only a process shows: exit
//! status, signals, and every byte it writes. Configured by `IPPROXY_*` variables only
//! (the parent's environment is not inherited), listening on `127.0.0.1:0`; the
//! addresses come from its "listening" log line.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the child may take to print its "listening" line.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A running `ipproxy run`. Killed when dropped, if still running.
pub(crate) struct ChildProxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl ChildProxy {
    /// Starts `ipproxy run` with exactly `vars` (plus loopback listeners on port 0,
    /// JSON logs and `access.allow_hosts` = [`super::TEST_ALLOW_HOSTS`] unless `vars`
    /// says otherwise) and waits for its "listening" line.
    pub(crate) async fn start(vars: &[(String, String)]) -> Self {
        let vars = super::with_test_hosts(None, vars.to_vec());
        let mut command = Command::new(env!("CARGO_BIN_EXE_ipproxy"));
        command
            .arg("run")
            .env_clear()
            .env("IPPROXY_SERVER__LISTEN", "127.0.0.1:0")
            .env("IPPROXY_SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("IPPROXY_LOG__FORMAT", "json")
            .envs(vars.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn ipproxy");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            read_lines(child.stdout.take().expect("stdout"), Arc::clone(&lines)),
            read_lines(child.stderr.take().expect("stderr"), Arc::clone(&lines)),
        ];
        let deadline = Instant::now() + START_LIMIT;
        let (addr, admin) = loop {
            if let Some(addresses) = listening_addresses(&lines.lock().expect("lines")) {
                break addresses;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "ipproxy exited ({status}) before listening: {:?}",
                    lines.lock().expect("lines")
                );
            }
            assert!(Instant::now() < deadline, "ipproxy did not start listening");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Self {
            child,
            addr,
            admin,
            lines,
            readers,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Waits for `/readyz` to answer 200; fails the test after [`super::PATIENCE`].
    pub(crate) async fn until_ready(&self) {
        super::until_ready(&self.admin_url("/readyz")).await;
    }

    /// Sends a signal by name (`TERM`, `INT`) with `kill(1)`.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Kills the process at once (SIGKILL): a replica that dies mid-work.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status if the child exits within `limit`.
    pub(crate) async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every line printed so far (stdout and stderr, interleaved).
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// The JSON `request` log line of the request whose id is `request_id`, once
    /// written; `None` if it is not written within `within`.
    pub(crate) async fn request_line(
        &self,
        request_id: &str,
        within: Duration,
    ) -> Option<serde_json::Value> {
        let mut found = None;
        super::eventually(within, || {
            found = self.lines().iter().find_map(|line| {
                let event: serde_json::Value = serde_json::from_str(line).ok()?;
                (event["message"] == "request" && event["request_id"] == request_id)
                    .then_some(event)
            });
            let done = found.is_some();
            async move { done }
        })
        .await;
        found
    }

    /// After the child exited: every line it ever printed.
    pub(crate) fn all_lines(mut self) -> Vec<String> {
        assert!(
            self.child.try_wait().expect("try_wait").is_some(),
            "the child has exited"
        );
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread");
        }
        self.lines()
    }
}

/// Runs `ipproxy run` with exactly `vars` (plus loopback listeners on port 0) and
/// waits for it to exit, for a start that must fail: its exit status and everything
/// it printed (stdout, then stderr). Killed, and the test failed, if it is still
/// running after [`START_LIMIT`].
pub(crate) async fn run_to_exit(vars: &[(String, String)]) -> (ExitStatus, String) {
    let vars = super::with_test_hosts(None, vars.to_vec());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ipproxy"))
        .arg("run")
        .env_clear()
        .env("IPPROXY_SERVER__LISTEN", "127.0.0.1:0")
        .env("IPPROXY_SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .envs(vars.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ipproxy");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        read_lines(child.stdout.take().expect("stdout"), Arc::clone(&lines)),
        read_lines(child.stderr.take().expect("stderr"), Arc::clone(&lines)),
    ];
    let deadline = Instant::now() + START_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ipproxy still running after {START_LIMIT:?}: {:?}",
                lines.lock().expect("lines")
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for reader in readers {
        reader.join().expect("reader thread");
    }
    let output = lines.lock().expect("lines").join("\n");
    (status, output)
}

impl Drop for ChildProxy {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_lines(
    stream: impl std::io::Read + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            lines.lock().expect("lines").push(line);
        }
    })
}

fn listening_addresses(lines: &[String]) -> Option<(SocketAddr, SocketAddr)> {
    lines.iter().find_map(|line| {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            return text_listening_addresses(line);
        };
        if event["message"] != "listening" {
            return None;
        }
        let proxy = event["proxy"].as_str()?.parse().ok()?;
        let admin = event["admin"].as_str()?.parse().ok()?;
        Some((proxy, admin))
    })
}

/// The addresses of a text-format "listening" line (`... listening proxy=A admin=B`).
fn text_listening_addresses(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if !line.contains(" listening") {
        return None;
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .map(|value| value.trim_matches('"'))
            .and_then(|value| value.parse().ok())
    };
    Some((field("proxy=")?, field("admin=")?))
}
