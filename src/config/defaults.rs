//! The default of every configuration key that has one, in one table: what
//! validation fills in for a key left out, and what a store built without a
//! configuration (tests, the simulator) uses.

use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;
pub const DEFAULT_REPLAY_LIMIT: u64 = 1024 * 1024;
pub const DEFAULT_MAX_CONCURRENCY: usize = 1024;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_UPSTREAM_URL: &str = "https://api.intelepeer.com";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_AUTH_URL: &str = "https://customer.intelepeer.com/_rest/v4/authenticate";
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(60 * 60);
pub const DEFAULT_MIN_REAUTH_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_STORE_PREFIX: &str = "ipproxy";
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_HEADER: &str = "authorization";
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// How long an `Idempotency-Key`'s answer is kept for repeats.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Larger answers pass through and are not kept.
pub const DEFAULT_IDEMPOTENCY_MAX_RESPONSE: u64 = 1024 * 1024;
/// The memory store's bound on keys (oldest dropped first).
pub const DEFAULT_IDEMPOTENCY_MAX_ENTRIES: usize = 100_000;
