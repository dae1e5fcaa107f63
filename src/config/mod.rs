//! Configuration: the TOML file and `IPPROXY_<SECTION>__<KEY>` variables, layered and
//! checked as a whole into a validated [`Config`].
//!
//! Owns every default and every rule about what a valid configuration is; the rest of
//! the crate only ever sees the validated types below. Errors name the key at fault and
//! never contain a secret. Secrets are read here (`password_file`) and kept in
//! [`SecretString`] so that `Debug` and the `check` output show `***`.
//!
//! Layers, lowest first: the defaults (applied while validating), the TOML file, then
//! the `IPPROXY_*` variables. The pieces:
//!
//! - `raw`: the file's shape as serde structs (every key optional, loosely typed).
//! - `env`: `IPPROXY_<SECTION>__<KEY>` variables → a layer typed by the schema, so that
//!   a password that looks like a number stays a string.
//! - `browser`: `access.allow_origins` and `access.allow_hosts` entries.
//! - `egress`: `upstream.proxy` or the conventional `HTTPS_PROXY`-style variables →
//!   [`EgressConfig`].
//! - `validate`: raw → [`Config`], collecting every problem before failing.
//! - `render`: [`Config::to_redacted_toml`] for `ipproxy check`.
//!
//! It must not start anything (no sockets, no token fetches): loading is pure apart
//! from reading the files the configuration names.

mod browser;
pub mod defaults;
mod egress;
mod env;
mod idempotency;
mod parse;
mod raw;
mod render;
mod trace;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::value::{Dict, Value};
use http::HeaderName;
use secrecy::SecretString;
use url::Url;

pub use browser::{AllowedHost, AllowedOrigin};
pub use egress::{EgressConfig, EgressProxy, NoProxyList};
pub use idempotency::{IdempotencyConfig, OnStoreDown};
pub use trace::{OtlpEndpoint, TracingConfig};

/// The variable naming the configuration file when no `--config` is given.
pub const CONFIG_FILE_VAR: &str = "IPPROXY_CONFIG";

/// The name of the credential configured by `[auth]`.
pub const DEFAULT_CREDENTIAL: &str = "default";

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`: listeners and limits.
    pub server: ServerConfig,
    /// `[upstream]`: the default route's target.
    pub upstream: UpstreamConfig,
    /// Every credential by name; `[auth]` is [`DEFAULT_CREDENTIAL`].
    pub credentials: BTreeMap<String, CredentialConfig>,
    /// Routes as configured; without any `[[route]]`, one `/` route to `[upstream]`
    /// with the default credential.
    pub routes: Vec<RouteConfig>,
    /// `[access]`: inbound keys and the allowlist.
    pub access: AccessConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[store]`: where tokens live.
    pub store: StoreConfig,
    /// `[idempotency]`: kept answers for `Idempotency-Key` requests.
    pub idempotency: IdempotencyConfig,
    /// `[tracing]`: where OpenTelemetry spans go (off by default).
    pub tracing: TracingConfig,
    /// Keys that were ignored (they belong to the other kind of credential): `run`
    /// logs them and `check` prints them, one line each.
    pub warnings: Vec<Problem>,
}

/// `[server]`: listeners, timeouts and limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The proxy listener (loopback by default: a sidecar).
    pub listen: SocketAddr,
    /// The admin listener: `/healthz`, `/readyz`, `/refresh`, `/metrics`.
    pub admin_listen: SocketAddr,
    /// Per upstream attempt, until response headers arrive.
    pub request_timeout: Duration,
    /// Largest request body accepted (413 beyond).
    pub max_body: u64,
    /// Request bodies up to this size are buffered so a 401 can be retried.
    pub replay_limit: u64,
    /// Requests in flight beyond this are shed with `503 overloaded`.
    pub max_concurrency: usize,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long a connection may go without a complete request head: from accept, and
    /// from the moment it falls idle (no request in progress).
    pub header_read_timeout: Duration,
    /// How long the proxy waits for the next chunk of a request body, and for the
    /// client to take the next chunk of a response; past it the request is abandoned.
    pub client_timeout: Duration,
}

/// `[upstream]`: the default route's target and how to reach upstreams.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The default route's target.
    pub url: UpstreamTarget,
    /// Limit for establishing a connection to any upstream.
    pub connect_timeout: Duration,
    /// An extra CA (PEM) trusted besides the standard web roots, by forwarding and
    /// logins alike.
    pub ca_file: Option<PathBuf>,
    /// The egress proxy, if any, for every connection to IntelePeer.
    pub egress: EgressConfig,
}

/// How a credential obtains its token.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// IntelePeer's 24-hour session token from a username/password login.
    Session {
        /// The authenticate endpoint.
        url: Url,
        /// The login name (not a secret).
        username: String,
        /// `password`, or `password_file` (read again at every login).
        password: SecretSource,
    },
    /// A long-standing token copied from a portal: `token`, or `token_file` (read
    /// again when it changes).
    Static(SecretSource),
}

/// A secret given in the configuration or by a file that is read when it is used.
#[derive(Debug, Clone)]
pub enum SecretSource {
    Inline(SecretString),
    /// The file was readable and not empty when the configuration was loaded.
    File(PathBuf),
}

/// `[store]`: where tokens live.
#[derive(Debug, Clone, Default)]
pub enum StoreConfig {
    /// In each process (the default): one token and one login per replica.
    #[default]
    Memory,
    /// In Redis (or Valkey), shared by the fleet.
    Redis(RedisStoreConfig),
}

/// `[store] kind = "redis"`.
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// `url`, or `url_file` when it carries a password.
    pub url: SecretSource,
    /// The keys that seal entries: 64 hex characters a line, the first seals.
    pub key_file: PathBuf,
    /// A CA (PEM) to trust for `rediss://` instead of the standard web roots.
    pub ca_file: Option<PathBuf>,
    /// Key prefix (`<prefix>:{<credential>}:token`).
    pub prefix: String,
    /// Per Redis command; slower counts as unreachable.
    pub timeout: Duration,
    /// The refresh lock's lease, renewed while a login runs.
    pub lock_ttl: Duration,
}

/// One credential: `[auth]` (named [`DEFAULT_CREDENTIAL`]) or `[credentials.NAME]`.
#[derive(Debug, Clone)]
pub struct CredentialConfig {
    /// The key of [`Config::credentials`]; the `credential` label in logs and metrics.
    pub name: String,
    /// How the token is obtained.
    pub source: CredentialSource,
    /// Lifetime assumed when the token carries no JWT `exp`.
    pub token_ttl: Duration,
    /// Refresh this long before expiry (capped at half the token's lifetime).
    pub refresh_before: Duration,
    /// At most one 401-caused login per this interval.
    pub min_reauth_interval: Duration,
    /// Header the token goes in, e.g. `authorization`.
    pub header: HeaderName,
    /// Header value template, containing `{token}` once.
    pub format: HeaderFormat,
}

/// A header value template such as `Bearer {token}`: the text before and after the
/// single `{token}` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFormat {
    /// Text before the token, e.g. `Bearer `.
    pub prefix: String,
    /// Text after the token (usually empty).
    pub suffix: String,
}

impl HeaderFormat {
    /// The placeholder a template must contain exactly once.
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

/// A path prefix of a route or an allow rule: starts with `/`, no `..`, `//`, `%`,
/// `?`, `#`, spaces or control characters, so that it means what the proxy's path
/// check lets through. Matches whole segments ([`prefix_matches`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RoutePrefix(String);

impl RoutePrefix {
    /// A prefix from text, checked (see the type).
    pub fn parse(text: &str) -> Result<Self, String> {
        parse::route_prefix(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `path` is under this prefix, on a segment boundary.
    pub fn matches(&self, path: &str) -> bool {
        prefix_matches(&self.0, path)
    }

    /// `path` with this prefix removed (its trailing `/` kept on the path), for
    /// `strip_prefix`; `path` itself when it does not start with the prefix.
    pub fn strip<'a>(&self, path: &'a str) -> &'a str {
        path.strip_prefix(self.0.trim_end_matches('/'))
            .unwrap_or(path)
    }

    /// The number of bytes: the longest prefix wins.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for RoutePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `prefix` matches `path` on a segment boundary (`/a/b` matches `/a/b` and `/a/b/c`,
/// not `/a/bc`; `/a/` matches everything under `/a/`).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// An upstream: an `http`/`https` URL with a host, optional port and base path, no
/// query, fragment or user info, parsed once into the parts every request is built
/// from.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    url: Url,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// Without a trailing `/` (empty for none).
    base_path: String,
    /// `Host` for the upstream: the authority (the port only when not the default).
    host: http::HeaderValue,
}

impl UpstreamTarget {
    /// A target from text, checked (see the type).
    pub fn parse(text: &str) -> Result<Self, String> {
        parse::upstream_target(text)
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn scheme(&self) -> &http::uri::Scheme {
        &self.scheme
    }

    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    pub fn host(&self) -> &http::HeaderValue {
        &self.host
    }
}

impl fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.url, f)
    }
}

/// One `[[route]]` (or the implicit `/` route).
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The `route` label in logs and metrics.
    pub name: String,
    /// Path prefix the route matches.
    pub prefix: RoutePrefix,
    /// Where matching requests go.
    pub upstream: UpstreamTarget,
    /// A key of [`Config::credentials`].
    pub credential: String,
    /// Overrides the credential's header name.
    pub header: Option<HeaderName>,
    /// Overrides the credential's header format.
    pub format: Option<HeaderFormat>,
    /// Remove `prefix` from the path before forwarding.
    pub strip_prefix: bool,
    /// Honour `Idempotency-Key` on POST and PATCH.
    pub idempotency: bool,
}

/// `[access]`: who may call the proxy, and which paths.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// SHA-256 hex digests of client keys, one a line.
    pub keys_file: Option<PathBuf>,
    /// Allowed path prefixes; empty = every route.
    pub allow: Vec<AllowRule>,
    /// Browser origins whose pages may use the proxy port; empty = none.
    pub allow_origins: Vec<AllowedOrigin>,
    /// Host names (or addresses) the proxy answers to besides loopback and its listen
    /// address.
    pub allow_hosts: Vec<AllowedHost>,
}

/// One entry of `[access] allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// Path prefix the rule allows.
    pub prefix: RoutePrefix,
    /// Upper-case methods; empty = every method.
    pub methods: Vec<http::Method>,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Line format on stdout.
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive, e.g. `info` or `ipproxy=debug`.
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line (the default).
    Json,
    /// Human-readable lines.
    Text,
}

/// Everything wrong with a configuration, found in one pass so that a user fixes all of
/// it at once. `Display` writes one line per problem, `KEY: what is wrong`; no line
/// ever contains a secret.
#[derive(Debug, thiserror::Error)]
#[error("{}", render_lines(.problems))]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    /// Every problem found, in the order found.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

fn render_lines(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is at fault: a dotted key (`auth.password`, `route[1].prefix`), a variable
    /// (`IPPROXY_AUTH__PASWORD`) or the configuration file's path.
    pub key: String,
    /// What is wrong, for a person; never contains a secret.
    pub message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Loads and validates the configuration from `file` (or, when `file` is `None`, the
/// file named by an `IPPROXY_CONFIG` entry of `vars`, if any) with the `IPPROXY_*`
/// entries of `vars` over it. Of the other entries only the conventional proxy
/// variables (`HTTPS_PROXY`, `https_proxy`, `http_proxy`, `NO_PROXY`, `no_proxy`) are
/// read, for [`UpstreamConfig::egress`], and `OTEL_EXPORTER_OTLP_ENDPOINT` and
/// `OTEL_SERVICE_NAME`, for [`TracingConfig`]; the rest are ignored, so the whole
/// process environment may be passed.
///
/// Every problem found is reported in the one error.
pub fn load(
    file: Option<&Path>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let (vars, standard_vars): (Vec<_>, Vec<_>) = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(env::PREFIX) || is_standard_var(name))
        .partition(|(name, _)| name.starts_with(env::PREFIX));
    let file = file.map(Path::to_path_buf).or_else(|| {
        vars.iter()
            .find(|(name, value)| name == CONFIG_FILE_VAR && !value.is_empty())
            .map(|(_, value)| PathBuf::from(value))
    });

    let mut problems = Vec::new();
    let file_layer = match &file {
        Some(path) => raw::read_file(path, &mut problems),
        None => Some(Dict::new()),
    };
    let env_layer = env::EnvLayer::from_vars(&vars, &mut problems);
    let Some(file_layer) = file_layer else {
        // Without the file, validating would only add noise about keys it may hold.
        return Err(ConfigError { problems });
    };

    let figment = Figment::new()
        .merge(Layer {
            name: "TOML file",
            dict: file_layer,
        })
        .merge(Layer {
            name: "environment variables",
            dict: env_layer.dict().clone(),
        });
    let mut merged = match figment.find_value("") {
        Ok(value) => value,
        Err(error) => {
            problems.push(Problem::new("configuration", error.kind.to_string()));
            return Err(ConfigError { problems });
        }
    };
    env_layer.drop_replaced_secrets(&mut merged);

    if let Some(raw) = raw::deserialize(&merged, &env_layer, &mut problems) {
        let mut warnings = Vec::new();
        let mut config = validate::validate(raw, &standard_vars, &mut problems, &mut warnings);
        if problems.is_empty() {
            config.warnings = warnings;
            return Ok(config);
        }
    }
    Err(ConfigError { problems })
}

/// The variables read besides `IPPROXY_*`: the conventional proxy variables and the
/// OpenTelemetry ones.
fn is_standard_var(name: &str) -> bool {
    egress::is_egress_var(name) || trace::is_otel_var(name)
}

/// [`load`] with the process environment: reads `IPPROXY_CONFIG` (when `file` is
/// `None`), every `IPPROXY_*` variable, the conventional proxy variables and the
/// OpenTelemetry ones.
pub fn load_from_process(file: Option<&Path>) -> Result<Config, ConfigError> {
    let mut vars = Vec::new();
    let mut problems = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else {
            continue;
        };
        if !name.starts_with(env::PREFIX) && !is_standard_var(name) {
            continue;
        }
        match value.into_string() {
            Ok(value) => vars.push((name.to_owned(), value)),
            Err(_) => problems.push(Problem::new(name, "the value is not valid UTF-8")),
        }
    }
    match load(file, vars) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(ConfigError { problems }),
        Err(error) => {
            problems.extend(error.problems);
            Err(ConfigError { problems })
        }
    }
}

impl Config {
    /// The effective configuration as TOML, for `ipproxy check`: defaults filled in,
    /// the implicit `/` route spelled out, every password and token shown as `***`
    /// (`token_file` paths are shown, their contents never).
    pub fn to_redacted_toml(&self) -> String {
        render::redacted_toml(self)
    }
}

/// One layer of configuration values for [`Figment`]: the parsed file or the
/// variables, already shaped as nested tables.
struct Layer {
    name: &'static str,
    dict: Dict,
}

impl figment::Provider for Layer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name)
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.dict.clone()))
    }
}

/// Inserts `value` at the dotted `path` of `dict`, creating tables on the way (a
/// non-table in the way is replaced).
fn insert_at(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [leaf] => {
            dict.insert((*leaf).to_owned(), value);
        }
        [head, rest @ ..] => {
            let entry = dict
                .entry((*head).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_at(inner, rest, value);
            }
        }
    }
}
