//! The contract every backend keeps, checked against the in-process one (in paused
//! time) and a real `redis-server` (started on a free loopback port with persistence
//! off, stopped by PID; a missing binary fails the test, `scripts/test.sh` installs
//! it): compare-and-set by generation, the lock's compare-and-expire and
//! compare-and-delete, and expiry.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant as StdInstant};

use secrecy::SecretString;

use super::{Backend, Failure, MemoryBackend, RedisBackend, RedisSettings};

const MINUTE: Duration = Duration::from_secs(60);

async fn get(backend: &dyn Backend, key: &str) -> Option<Vec<u8>> {
    backend.get(key).await.expect("the backend is up")
}

/// The answers of every operation, whatever the backend.
async fn keeps_the_contract(backend: &dyn Backend) {
    assert_eq!(get(backend, "absent").await, None);

    assert!(
        backend
            .set_if_absent("once", b"first", MINUTE)
            .await
            .expect("up")
    );
    assert!(
        !backend
            .set_if_absent("once", b"second", MINUTE)
            .await
            .expect("up")
    );
    assert_eq!(get(backend, "once").await.as_deref(), Some(&b"first"[..]));

    // An absent entry is generation 0; a write names the generation it replaces.
    let write = |expected, value: &'static [u8]| {
        backend.set_if_generation("entry", expected, value, MINUTE)
    };
    assert!(
        !write(1, b"v1:1:a").await.expect("up"),
        "absent is 0, not 1"
    );
    assert!(write(0, b"v1:1:a").await.expect("up"));
    assert!(!write(0, b"v1:2:b").await.expect("up"), "it is 1 now");
    assert!(write(1, b"v1:2:b").await.expect("up"));
    assert_eq!(get(backend, "entry").await.as_deref(), Some(&b"v1:2:b"[..]));
    // An unreadable value counts as 0: it is replaced, never kept for good.
    assert!(
        backend
            .set_if_absent("garbage", b"not an entry", MINUTE)
            .await
            .expect("up")
    );
    assert!(
        backend
            .set_if_generation("garbage", 0, b"v1:1:c", MINUTE)
            .await
            .expect("up")
    );

    // The lock: only its holder's value renews or releases it.
    assert!(
        backend
            .set_if_absent("lock", b"mine", MINUTE)
            .await
            .expect("up")
    );
    assert!(
        !backend
            .expire_if_equal("lock", b"theirs", MINUTE)
            .await
            .expect("up")
    );
    assert!(
        backend
            .expire_if_equal("lock", b"mine", MINUTE)
            .await
            .expect("up")
    );
    assert!(
        !backend
            .delete_if_equal("lock", b"theirs")
            .await
            .expect("up")
    );
    assert_eq!(get(backend, "lock").await.as_deref(), Some(&b"mine"[..]));
    assert!(backend.delete_if_equal("lock", b"mine").await.expect("up"));
    assert_eq!(get(backend, "lock").await, None);
    assert!(!backend.delete_if_equal("lock", b"mine").await.expect("up"));
    assert!(
        !backend
            .expire_if_equal("lock", b"mine", MINUTE)
            .await
            .expect("up")
    );

    backend.ping().await.expect("up");
}

#[tokio::test(start_paused = true)]
async fn the_memory_backend_keeps_the_contract_and_expires_entries() {
    let backend = MemoryBackend::default();
    keeps_the_contract(&backend).await;

    let ten = Duration::from_secs(10);
    let second = Duration::from_secs(1);
    assert!(backend.set_if_absent("short", b"x", ten).await.expect("up"));
    assert!(
        backend
            .set_if_generation("entry2", 0, b"v1:1:a", ten)
            .await
            .expect("up")
    );
    assert!(
        backend
            .set_if_absent("lock2", b"mine", ten)
            .await
            .expect("up")
    );
    tokio::time::advance(ten - second).await;
    assert!(get(&backend, "short").await.is_some(), "not yet expired");
    assert!(
        backend
            .expire_if_equal("lock2", b"mine", ten)
            .await
            .expect("up")
    );
    tokio::time::advance(second * 2).await;
    assert_eq!(get(&backend, "short").await, None, "expired");
    assert_eq!(get(&backend, "entry2").await, None, "expired");
    assert!(get(&backend, "lock2").await.is_some(), "renewed");
    assert!(backend.set_if_absent("short", b"y", ten).await.expect("up"));
    // The renewal at 9 s runs out at 19 s; it is 11 s now.
    let millisecond = Duration::from_millis(1);
    tokio::time::advance(second * 8 - millisecond).await;
    assert!(
        get(&backend, "lock2").await.is_some(),
        "a millisecond before it runs out"
    );
    tokio::time::advance(millisecond).await;
    assert_eq!(
        get(&backend, "lock2").await,
        None,
        "gone at its instant, as in Redis"
    );
}

/// A redis-server of its own, killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("redis-server did not start ({error}): apt-get install redis-server")
            });
        let started = StdInstant::now();
        // A child process coming up: polled, bounded.
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                child.try_wait().expect("wait").is_none(),
                "redis-server exited"
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server is not up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_backend(url: String) -> RedisBackend {
    RedisBackend::connect_lazily(&RedisSettings {
        url: SecretString::from(url),
        ca_file: None,
        timeout: Duration::from_secs(2),
    })
    .expect("a valid URL")
}

#[tokio::test]
async fn the_redis_backend_keeps_the_contract_with_the_expiry_asked_for() {
    let server = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}/0", server.port);
    let backend = redis_backend(url.clone());
    keeps_the_contract(&backend).await;
    assert_eq!(format!("{backend:?}"), "RedisBackend");

    let mut redis = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connected");
    let mut ttl_ms = async |key: &str| -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .expect("PTTL")
    };
    let about = |ms: i64, ttl: Duration| {
        let ttl = i64::try_from(ttl.as_millis()).expect("small");
        ms <= ttl && ms > ttl - 5_000
    };
    assert!(backend.set_if_absent("t1", b"x", MINUTE).await.expect("up"));
    assert!(about(ttl_ms("t1").await, MINUTE));
    let half = MINUTE / 2;
    assert!(
        backend
            .set_if_generation("t2", 0, b"v1:1:a", half)
            .await
            .expect("up")
    );
    assert!(about(ttl_ms("t2").await, half));
    assert!(
        backend
            .expire_if_equal("t1", b"x", MINUTE * 3)
            .await
            .expect("up")
    );
    assert!(about(ttl_ms("t1").await, MINUTE * 3));
    // Redis refuses `PX 0`: a zero lifetime is sent as the shortest one.
    assert!(
        backend
            .set_if_absent("t0", b"x", Duration::ZERO)
            .await
            .expect("up")
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_described_without_its_url() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    // Bound and dropped: nothing listens there now.
    let backend = redis_backend(format!("redis://:hunter2-pw@{closed}/0"));
    let error = backend.get("entry").await.expect_err("nothing listens");
    assert!(error.message.contains("Connection refused"), "{error}");
    assert!(!error.message.contains("hunter2-pw") && !error.message.contains(&closed.to_string()));
    assert_eq!(error.failure, Failure::Unreachable);
}

/// Sends one command to `server` on a connection of the test's own.
async fn command(server: &RedisServer, args: &[&str]) {
    let mut redis = redis::Client::open(format!("redis://127.0.0.1:{}/0", server.port))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connected");
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    let () = command.query_async(&mut redis).await.expect("the command");
}

#[tokio::test]
async fn a_redis_that_refuses_writes_answers_refused_and_still_reads() {
    for refusal in [
        // Over maxmemory with noeviction: every write is refused with OOM.
        &["CONFIG", "SET", "maxmemory", "1"][..],
        // A read-only replica (of a master that is not there): READONLY.
        &["REPLICAOF", "127.0.0.1", "1"][..],
    ] {
        let server = RedisServer::start();
        let backend = redis_backend(format!("redis://127.0.0.1:{}/0", server.port));
        assert!(backend.set_if_absent("k", b"x", MINUTE).await.expect("up"));
        command(
            &server,
            &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
        )
        .await;
        command(&server, refusal).await;
        let refused = backend
            .set_if_absent("other", b"x", MINUTE)
            .await
            .expect_err("writes are refused");
        assert_eq!(refused.failure, Failure::Refused, "{refusal:?}: {refused}");
        let script = backend
            .set_if_generation("k", 0, b"v1:1:a", MINUTE)
            .await
            .expect_err("scripted writes are refused");
        assert_eq!(script.failure, Failure::Refused, "{refusal:?}: {script}");
        assert_eq!(
            backend.get("k").await.expect("reads go on").as_deref(),
            Some(&b"x"[..])
        );
        backend.ping().await.expect("it answers");
    }
}
