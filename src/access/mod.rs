//! Who may come in and where. The pipeline runs the checks in this order — client key,
//! browsers (Host, then Origin and `Sec-Fetch-Site`), method, path form, allowlist —
//! so a caller without a key learns nothing about which methods are forwarded, which
//! paths exist or are allowed, or which hosts and origins are listed.
//!
//! - `keys`: inbound client keys (`access.keys_file`), checked in constant time and
//!   re-read when the file changes.
//! - `host`: the `Host` must be one of the proxy's own names (DNS rebinding).
//! - `browser`: requests from web pages (`Origin`, `Sec-Fetch-Site`) are refused.
//! - `method`: `CONNECT` and `TRACE` are never forwarded.
//! - `path`: the path form check (refused, never rewritten).
//! - `allow`: the path allowlist (`[access] allow`).
//!
//! Must not: log, count or echo a presented key or a line of the keys file (an operator
//! may paste a raw key there by mistake).

mod allow;
mod browser;
mod host;
mod keys;
mod method;
mod path;

use std::net::SocketAddr;

use http::{HeaderMap, Method, Uri};

use crate::config::AccessConfig;
use crate::error::ProxyError;
use allow::Allowlist;
use browser::BrowserOrigins;
use host::OwnHosts;
pub use keys::{Caller, ClientKeys, is_caller_name};
pub use method::check_method;
pub use path::check_path;

/// The inbound checks: client keys (when `access.keys_file` is set), browsers, and the
/// allowlist.
#[derive(Debug, Default)]
pub struct Access {
    allow: Allowlist,
    origins: BrowserOrigins,
    hosts: OwnHosts,
    /// `None` when no `keys_file` is configured: every caller is let in.
    keys: Option<ClientKeys>,
}

impl Access {
    /// Takes the allowlist and reads `access.keys_file` once. A file that cannot be
    /// read, has a malformed line, or holds no digest at all is an error: better not
    /// to start than to start letting nobody (or the wrong callers) in.
    pub fn new(config: &AccessConfig) -> Result<Self, AccessError> {
        let keys = match &config.keys_file {
            None => None,
            Some(path) => Some(ClientKeys::load(path)?),
        };
        Ok(Self {
            allow: Allowlist::new(config.allow.clone()),
            origins: BrowserOrigins::new(config.allow_origins.clone()),
            hosts: OwnHosts::new(&config.allow_hosts),
            keys,
        })
    }

    /// Adds the proxy listener's address (`server.listen`) to the proxy's own names.
    #[must_use]
    pub fn listening_on(mut self, listen: SocketAddr) -> Self {
        self.hosts.listen(listen);
        self
    }

    /// The client keys, for reloading them; `None` without a keys file.
    pub fn keys(&self) -> Option<&ClientKeys> {
        self.keys.as_ref()
    }

    /// Checks the client key in `Proxy-Authorization: Bearer <key>` when keys are
    /// configured, and says whose it is. Missing, repeated, malformed or unknown →
    /// `407`. Without keys, every client is the one caller `-`.
    pub fn check_key(&self, headers: &HeaderMap) -> Result<Caller, ProxyError> {
        match &self.keys {
            None => Ok(Caller::default()),
            Some(keys) => keys.check(headers),
        }
    }

    /// Refuses what a web page in a browser could send: a `Host` (or target authority)
    /// that is not one of the proxy's names → `421` (two `Host`s → `400`), then an
    /// `Origin` not in `access.allow_origins` or a `Sec-Fetch-Site` other than `none`
    /// → `403`.
    pub fn check_browser(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), ProxyError> {
        self.hosts.check(uri, headers)?;
        self.origins.check(headers)
    }

    /// Checks the path allowlist (`path` already passed [`check_path`]).
    pub fn check_allowed(&self, method: &Method, path: &str) -> Result<(), ProxyError> {
        self.allow.check(method, path)
    }
}

/// Problems with `access.keys_file`. Never carries the content of a line.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The file cannot be read (the message names it).
    #[error("access.keys_file {0}")]
    File(String),
    #[error(
        "access.keys_file {path} line {line}: not a SHA-256 digest (64 hex digits, one a \
         line) optionally followed by a space and a name of 1 to 64 characters of \
         A-Z a-z 0-9 . _ - (`ipproxy hash-key [--name NAME]` makes the line from a key)"
    )]
    Malformed { path: String, line: usize },
    #[error("access.keys_file {path}: holds no key digest, so no client could get in")]
    Empty { path: String },
}
