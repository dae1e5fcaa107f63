//! Configuration: the TOML file and `IPPROXY_<SECTION>__<KEY>` variables, layered and
//! checked as a whole into a validated [`Config`].
//!
//! Owns every default and every rule about what a valid configuration is; the rest of
//! the crate only ever sees the validated types below. Errors name the key at fault.
//! Secrets are read here (`*_file`) and kept in [`SecretString`] so that `Debug` and the
//! `check` output show `***`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use secrecy::SecretString;
use url::Url;

/// The name of the credential configured by `[auth]`.
pub const DEFAULT_CREDENTIAL: &str = "default";

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    /// Every credential by name; `[auth]` is [`DEFAULT_CREDENTIAL`].
    pub credentials: BTreeMap<String, CredentialConfig>,
    /// Routes as configured; without any `[[route]]`, one `/` route to `[upstream]`
    /// with the default credential.
    pub routes: Vec<RouteConfig>,
    pub access: AccessConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Per upstream attempt, until response headers arrive.
    pub request_timeout: Duration,
    /// Largest request body accepted (413 beyond).
    pub max_body: u64,
    /// Request bodies up to this size are buffered so a 401 can be retried.
    pub replay_limit: u64,
    /// Requests in flight beyond this are shed with `503 overloaded`.
    pub max_concurrency: usize,
    pub shutdown_grace: Duration,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The default route's target (scheme, host, optional port; no path).
    pub url: Url,
    pub connect_timeout: Duration,
    /// An extra CA (PEM) trusted besides the standard web roots.
    pub ca_file: Option<PathBuf>,
}

/// How a credential obtains its token.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// IntelePeer's 24-hour session token from a username/password login.
    Session {
        url: Url,
        username: String,
        password: SecretString,
    },
    /// A long-standing token copied from a portal.
    Static(StaticToken),
}

#[derive(Debug, Clone)]
pub enum StaticToken {
    Inline(SecretString),
    /// Re-read when its content changes.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct CredentialConfig {
    pub name: String,
    pub source: CredentialSource,
    /// Lifetime assumed when the token carries no JWT `exp`.
    pub token_ttl: Duration,
    /// Refresh this long before expiry (capped at half the token's lifetime).
    pub refresh_before: Duration,
    /// Header the token goes in, e.g. `authorization`.
    pub header: HeaderName,
    /// Header value template, containing `{token}` once.
    pub format: HeaderFormat,
}

/// A header value template such as `Bearer {token}`: the text before and after the
/// single `{token}` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFormat {
    pub prefix: String,
    pub suffix: String,
}

impl HeaderFormat {
    pub const PLACEHOLDER: &'static str = "{token}";

    /// Parses a template; `None` unless it holds `{token}` exactly once.
    pub fn parse(template: &str) -> Option<Self> {
        let (prefix, suffix) = template.split_once(Self::PLACEHOLDER)?;
        if suffix.contains(Self::PLACEHOLDER) {
            return None;
        }
        Some(Self {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    /// The header value text for `token`.
    pub fn render(&self, token: &str) -> String {
        let mut value = String::with_capacity(self.prefix.len() + token.len() + self.suffix.len());
        value.push_str(&self.prefix);
        value.push_str(token);
        value.push_str(&self.suffix);
        value
    }
}

impl std::fmt::Display for HeaderFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}", self.prefix, Self::PLACEHOLDER, self.suffix)
    }
}

impl Default for HeaderFormat {
    fn default() -> Self {
        Self::parse("Bearer {token}").expect("the default format holds the placeholder once")
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The `route` label in logs and metrics.
    pub name: String,
    /// Path prefix, starting with `/`.
    pub prefix: String,
    /// Scheme, host and optional port (and optional base path) of the target.
    pub upstream: Url,
    /// A key of [`Config::credentials`].
    pub credential: String,
    /// Overrides the credential's header name.
    pub header: Option<HeaderName>,
    /// Overrides the credential's header format.
    pub format: Option<HeaderFormat>,
    /// Remove `prefix` from the path before forwarding.
    pub strip_prefix: bool,
}

#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// SHA-256 hex digests of client keys, one a line.
    pub keys_file: Option<PathBuf>,
    /// Allowed path prefixes; empty = every route.
    pub allow: Vec<AllowRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub prefix: String,
    /// Upper-case methods; empty = every method.
    pub methods: Vec<http::Method>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}
