//! A real `redis-server` for the token store tests: Debian's, started on a free
//! loopback port with persistence off, stopped by PID when dropped; it can be killed
//! and started again on the same port (an outage). A missing `redis-server` fails the
//! test that needs it (`scripts/test.sh` and `.ci/run` install it): never a skip.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long redis-server may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(10);
/// Attempts at a free port (another process may take the one just found).
const START_ATTEMPTS: usize = 3;

/// TLS settings for a `rediss://` server.
#[derive(Debug, Clone)]
pub(crate) struct RedisTls {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A running (or stopped, between [`kill`](Self::kill) and
/// [`restart`](Self::restart)) redis-server.
pub(crate) struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
    tls: Option<RedisTls>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A plain server without a password.
    pub(crate) fn start() -> Self {
        Self::start_with(None, None)
    }

    /// A server that requires `password` (`requirepass`), over TLS when `tls` is set.
    pub(crate) fn start_with(password: Option<&str>, tls: Option<RedisTls>) -> Self {
        for _ in 0..START_ATTEMPTS {
            let mut server = Self {
                child: None,
                port: super::free_port(),
                password: password.map(str::to_owned),
                tls: tls.clone(),
                dir: tempfile::tempdir().expect("temp dir"),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start in {START_ATTEMPTS} attempts");
    }

    /// `redis://` (or `rediss://`) URL, with the password when there is one.
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let host = if self.tls.is_some() {
            "localhost"
        } else {
            "127.0.0.1"
        };
        match &self.password {
            Some(password) => format!("{scheme}://:{password}@{host}:{}/0", self.port),
            None => format!("{scheme}://{host}:{}/0", self.port),
        }
    }

    /// Stops the server at once (SIGKILL): an outage, or a crashed Redis.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): it holds its connections but answers nothing,
    /// as a hung Redis does, until [`resume`](Self::resume).
    pub(crate) fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server go on (SIGCONT), with everything it held.
    pub(crate) fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{name}");
    }

    /// Runs one command (`CONFIG SET maxmemory 1`, `REPLICAOF`, …) and returns its
    /// answer as text.
    pub(crate) fn command(&self, args: &[&str]) -> String {
        let mut connection = self.connection();
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        let answer: redis::Value = command.query(&mut connection).expect("the command");
        format!("{answer:?}")
    }

    /// Commands the server has processed so far (`INFO stats`), this query's own
    /// connection included.
    pub(crate) fn commands_processed(&self) -> u64 {
        let mut connection = self.connection();
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut connection)
            .expect("INFO");
        info.lines()
            .find_map(|line| line.strip_prefix("total_commands_processed:"))
            .and_then(|count| count.trim().parse().ok())
            .expect("total_commands_processed")
    }

    /// Starts it again on the same port, empty (persistence is off).
    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        assert!(self.spawn(), "redis-server restarted on port {}", self.port);
    }

    /// Every key and its value (plain `redis-cli`-free access through the client
    /// crate): for scanning what the store wrote.
    pub(crate) fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let mut connection = self.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut connection)
            .expect("KEYS");
        keys.into_iter()
            .map(|key| {
                let value: Vec<u8> = redis::cmd("GET")
                    .arg(&key)
                    .query(&mut connection)
                    .expect("GET");
                (key, value)
            })
            .collect()
    }

    /// Sets `key` to `value` (for planting garbage).
    pub(crate) fn set(&self, key: &str, value: &[u8]) {
        let mut connection = self.connection();
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query(&mut connection)
            .expect("SET");
    }

    fn connection(&self) -> redis::Connection {
        assert!(self.tls.is_none(), "plain servers only");
        redis::Client::open(self.url())
            .expect("client")
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test redis")
    }

    /// Spawns redis-server and waits until it accepts; false when it exited first.
    fn spawn(&mut self) -> bool {
        let mut command = Command::new(redis_server());
        command
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(password) = &self.password {
            command.arg("--requirepass").arg(password);
        }
        match &self.tls {
            None => {
                command.arg("--port").arg(self.port.to_string());
            }
            Some(tls) => {
                let cert = write(self.dir.path(), "redis.crt", &tls.cert_pem);
                let key = write(self.dir.path(), "redis.key", &tls.key_pem);
                command
                    .arg("--port")
                    .arg("0")
                    .arg("--tls-port")
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .arg("--tls-auth-clients")
                    .arg("no");
            }
        }
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            if super::exited(&mut self.child) {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not accept connections within {START_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_server() -> PathBuf {
    super::server_binary(
        "redis-server",
        "the token store tests need a real one: run `apt-get install -y redis-server` (scripts/test.sh does it when it can)",
    )
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write");
    path
}
