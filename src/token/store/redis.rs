//! The Redis (or Valkey, or managed Redis) backend, over redis-rs's connection
//! manager: one multiplexed connection, re-established in the background after a
//! failure, created lazily so that a Redis that is down at start-up delays nothing.
//!
//! The compare-and-set, compare-and-delete and compare-and-expire run as Lua scripts,
//! so that each is one atomic step in Redis. Errors are described without the URL (it
//! may carry a password).

use std::path::PathBuf;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, TlsCertificates};
use secrecy::{ExposeSecret, SecretString};

use super::{Backend, BackendError};

/// Sets the entry when the generation in its value's clear prefix is ARGV[1] (a
/// missing or unreadable value counts as 0).
const SET_IF_GENERATION: &str = r"
local current = redis.call('GET', KEYS[1])
local generation = 0
if current then
  generation = tonumber(string.match(current, '^v1:(%d+):')) or 0
end
if generation == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Releases the lock only for its holder.
const DELETE_IF_EQUAL: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Renews the lock only for its holder.
const EXPIRE_IF_EQUAL: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Replaces a value only for the holder of the value it expects (an idempotency
/// claim becoming its answer).
const SET_IF_EQUAL: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS), with credentials and database as Redis URLs
    /// carry them.
    pub url: SecretString,
    /// A CA (PEM) to trust for `rediss://` instead of the standard web roots.
    pub ca_file: Option<PathBuf>,
    /// Connect and response timeout of the connection.
    pub timeout: Duration,
}

/// A Redis server.
pub struct RedisBackend {
    connection: ConnectionManager,
    set_if_generation: Script,
    delete_if_equal: Script,
    expire_if_equal: Script,
    set_if_equal: Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("RedisBackend")
    }
}

impl RedisBackend {
    /// Prepares the connection; nothing is sent until the first operation.
    pub fn connect_lazily(settings: &RedisSettings) -> Result<Self, BackendError> {
        let url = settings.url.expose_secret();
        let client = match &settings.ca_file {
            None => redis::Client::open(url),
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|error| {
                    BackendError::unreachable(format!("store.ca_file {}: {error}", path.display()))
                })?;
                redis::Client::build_with_tls(
                    url,
                    TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
            }
        }
        .map_err(|error| backend_error(&error))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let connection = client
            .get_connection_manager_lazy(config)
            .map_err(|error| backend_error(&error))?;
        Ok(Self {
            connection,
            set_if_generation: Script::new(SET_IF_GENERATION),
            delete_if_equal: Script::new(DELETE_IF_EQUAL),
            expire_if_equal: Script::new(EXPIRE_IF_EQUAL),
            set_if_equal: Script::new(SET_IF_EQUAL),
        })
    }

    async fn flag(&self, invocation: redis::ScriptInvocation<'_>) -> Result<bool, BackendError> {
        let mut connection = self.connection.clone();
        let done: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|error| backend_error(&error))?;
        Ok(done == 1)
    }

    /// Runs a compare-and-set `script` (`set_if_generation`, `set_if_equal`): on `key`,
    /// when its value matches `expected`, set `value` with `ttl`.
    async fn compare_and_set(
        &self,
        script: &Script,
        key: &str,
        expected: impl redis::ToRedisArgs,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(key)
            .arg(expected)
            .arg(value)
            .arg(millis(ttl));
        self.flag(invocation).await
    }
}

/// A Redis error as the store sees it: an error answer (`OOM`, `READONLY`,
/// `NOPERM`, …) means Redis is there but refuses; anything else (I/O, a dropped
/// connection, a server still loading or without its master) counts as unreachable.
fn backend_error(error: &redis::RedisError) -> BackendError {
    /// Error answers that mean "not available just now", as an outage does.
    const TRANSIENT: [&str; 4] = ["LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN"];
    let message = describe(error);
    match error.code() {
        Some(code) if !error.is_io_error() && !TRANSIENT.contains(&code) => {
            BackendError::refused(message)
        }
        _ => BackendError::unreachable(message),
    }
}

/// A Redis error as a sentence without a URL.
fn describe(error: &redis::RedisError) -> String {
    let kind = format!("{:?}", error.kind());
    match error.detail() {
        Some(detail) => format!("{kind}: {detail}"),
        None if error.is_io_error() => format!("{kind}: {}", io_cause(error)),
        None => kind,
    }
}

fn io_cause(error: &redis::RedisError) -> String {
    use std::error::Error as _;
    error
        .source()
        .map_or_else(|| "connection failed".to_owned(), ToString::to_string)
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Backend for RedisBackend {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>> {
        async move {
            let mut connection = self.connection.clone();
            redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
                .map_err(|error| backend_error(&error))
        }
        .boxed()
    }

    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        async move {
            let mut connection = self.connection.clone();
            let reply: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl))
                .query_async(&mut connection)
                .await
                .map_err(|error| backend_error(&error))?;
            Ok(reply.is_some())
        }
        .boxed()
    }

    fn set_if_generation<'a>(
        &'a self,
        key: &'a str,
        expected: u64,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.compare_and_set(&self.set_if_generation, key, expected, value, ttl)
            .boxed()
    }

    fn delete_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        async move {
            let mut invocation = self.delete_if_equal.prepare_invoke();
            invocation.key(key).arg(value);
            self.flag(invocation).await
        }
        .boxed()
    }

    fn expire_if_equal<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        async move {
            let mut invocation = self.expire_if_equal.prepare_invoke();
            invocation.key(key).arg(value).arg(millis(ttl));
            self.flag(invocation).await
        }
        .boxed()
    }

    fn set_if_equal<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.compare_and_set(&self.set_if_equal, key, expected, value, ttl)
            .boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        async move {
            let mut connection = self.connection.clone();
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map(|_| ())
                .map_err(|error| backend_error(&error))
        }
        .boxed()
    }
}
