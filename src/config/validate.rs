//! Raw structs → the validated [`Config`]: every default and every rule.
//!
//! Each check pushes a [`Problem`] naming the key and carries on with the default, so
//! that one run reports everything; the caller discards the result when any problem
//! was found. Messages quote values only when they cannot be secrets.
//!
//! A credential section is checked in `validate/credential.rs`, `[store]` in
//! `validate/store.rs`; the rest (server, upstream, routes, access, log) and the
//! shared value parsers are here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::defaults::*;
use super::parse;
use super::raw::{
    RawAccess, RawAllow, RawConfig, RawCredential, RawLog, RawLogFormat, RawRoute, RawServer,
    RawSize, RawUpstream,
};
use super::{
    AccessConfig, AllowRule, AllowedHost, AllowedOrigin, Config, DEFAULT_CREDENTIAL, HeaderFormat,
    LogConfig, LogFormat, Problem, RouteConfig, ServerConfig, UpstreamConfig, UpstreamTarget,
};
use crate::secret;
use http::{HeaderName, Method};

mod credential;
mod store;

/// Far beyond what one process has sockets for; keeps the permit count within what
/// the semaphore (and a shutdown that waits for every permit) can hold.
const MAX_CONCURRENCY_LIMIT: u64 = 1_000_000;

/// Checks `raw` into a [`Config`], pushing every problem found, and every key it
/// ignored to `warnings`. The result holds defaults in place of bad values, so it is
/// meaningless when `problems` grew.
///
/// `standard_vars` are the conventional proxy variables (`HTTPS_PROXY`, …), used when
/// `upstream.proxy` is not set, and the OpenTelemetry ones, used when `[tracing]`
/// does not set their keys.
pub(super) fn validate(
    raw: RawConfig,
    standard_vars: &[(String, String)],
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Config {
    let mut check = Checker { problems, warnings };
    let server = check.server(raw.server);
    let upstream = check.upstream(raw.upstream, standard_vars);

    let routes_use_default = raw.route.is_empty()
        || raw.route.iter().any(|route| {
            route.credential.as_deref().unwrap_or(DEFAULT_CREDENTIAL) == DEFAULT_CREDENTIAL
        });
    let mut credentials = BTreeMap::new();
    // Names that are configured, valid or not, so a bad credential is not also
    // reported as missing by every route using it.
    let mut known: BTreeSet<String> = BTreeSet::new();
    match raw.auth {
        Some(auth) => {
            known.insert(DEFAULT_CREDENTIAL.to_owned());
            credentials.insert(
                DEFAULT_CREDENTIAL.to_owned(),
                check.credential("auth", DEFAULT_CREDENTIAL, auth),
            );
        }
        // Needed but absent: check an empty one so the missing keys get named.
        None if routes_use_default => {
            known.insert(DEFAULT_CREDENTIAL.to_owned());
            credentials.insert(
                DEFAULT_CREDENTIAL.to_owned(),
                check.credential("auth", DEFAULT_CREDENTIAL, RawCredential::default()),
            );
        }
        None => {}
    }
    for (name, credential) in raw.credentials {
        let key = format!("credentials.{name}");
        if name == DEFAULT_CREDENTIAL {
            check.problem(&key, "the name \"default\" is reserved for [auth]");
            continue;
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            check.problem(&key, "a credential name may only hold a-z, 0-9, _ and -");
        }
        known.insert(name.clone());
        let validated = check.credential(&key, &name, credential);
        credentials.insert(name, validated);
    }

    let routes = check.routes(raw.route, &upstream.url, &known);
    let access = check.access(raw.access);
    let log = check.log(raw.log);
    let store = check.store(raw.store);
    let tracing = super::trace::resolve(raw.tracing, standard_vars, check.problems);
    let idempotency = super::idempotency::resolve(raw.idempotency, check.problems);
    Config {
        server,
        upstream,
        credentials,
        routes,
        access,
        log,
        store,
        idempotency,
        tracing,
        warnings: Vec::new(),
    }
}

struct Checker<'p> {
    problems: &'p mut Vec<Problem>,
    warnings: &'p mut Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem::new(key, message));
    }

    fn warning(&mut self, key: &str, message: impl Into<String>) {
        self.warnings.push(Problem::new(key, message));
    }

    fn server(&mut self, raw: RawServer) -> ServerConfig {
        let listen = self.socket_addr("server.listen", raw.listen, DEFAULT_LISTEN);
        let admin_listen = self.socket_addr(
            "server.admin_listen",
            raw.admin_listen,
            DEFAULT_ADMIN_LISTEN,
        );
        let request_timeout = self.positive_duration(
            "server.request_timeout",
            raw.request_timeout,
            DEFAULT_REQUEST_TIMEOUT,
        );
        let max_body = self.size("server.max_body", raw.max_body, DEFAULT_MAX_BODY);
        // Unset, the replay limit follows a smaller max_body rather than refusing it.
        let replay_limit = match raw.replay_limit {
            None => DEFAULT_REPLAY_LIMIT.min(max_body),
            Some(raw) => {
                let replay_limit =
                    self.size("server.replay_limit", Some(raw), DEFAULT_REPLAY_LIMIT);
                if replay_limit > max_body {
                    self.problem(
                        "server.replay_limit",
                        format!(
                            "{replay_limit} bytes is more than server.max_body ({max_body} bytes)"
                        ),
                    );
                }
                replay_limit
            }
        };
        let max_concurrency = match raw.max_concurrency {
            None => DEFAULT_MAX_CONCURRENCY,
            Some(0) => {
                self.problem("server.max_concurrency", "must be at least 1");
                DEFAULT_MAX_CONCURRENCY
            }
            Some(limit) if limit > MAX_CONCURRENCY_LIMIT => {
                self.problem(
                    "server.max_concurrency",
                    format!("must be at most {MAX_CONCURRENCY_LIMIT}"),
                );
                DEFAULT_MAX_CONCURRENCY
            }
            Some(limit) => limit as usize,
        };
        ServerConfig {
            listen,
            admin_listen,
            request_timeout,
            max_body,
            replay_limit,
            max_concurrency,
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                raw.shutdown_grace,
                DEFAULT_SHUTDOWN_GRACE,
            ),
            header_read_timeout: self.positive_duration(
                "server.header_read_timeout",
                raw.header_read_timeout,
                DEFAULT_HEADER_READ_TIMEOUT,
            ),
            client_timeout: self.positive_duration(
                "server.client_timeout",
                raw.client_timeout,
                DEFAULT_CLIENT_TIMEOUT,
            ),
        }
    }

    fn upstream(&mut self, raw: RawUpstream, egress_vars: &[(String, String)]) -> UpstreamConfig {
        let url = self.target("upstream.url", raw.url.as_deref(), DEFAULT_UPSTREAM_URL);
        let connect_timeout = self.positive_duration(
            "upstream.connect_timeout",
            raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        );
        if let Some(ca_file) = &raw.ca_file {
            self.existing_file("upstream.ca_file", ca_file);
        }
        let explicit_proxy = match (raw.proxy, raw.proxy_file) {
            (Some(_), Some(_)) => {
                self.problem(
                    "upstream.proxy",
                    "give either proxy or proxy_file, not both",
                );
                None
            }
            (Some(proxy), None) => Some(("upstream.proxy", proxy.0)),
            (None, Some(path)) => match secret::read_secret(&path) {
                Ok(proxy) => Some(("upstream.proxy_file", proxy)),
                Err(error) => {
                    self.problem("upstream.proxy_file", error.to_string());
                    None
                }
            },
            (None, None) => None,
        };
        let egress = super::egress::resolve(explicit_proxy, egress_vars, self.problems);
        UpstreamConfig {
            url,
            connect_timeout,
            ca_file: raw.ca_file,
            egress,
        }
    }

    fn routes(
        &mut self,
        raw: Vec<RawRoute>,
        default_upstream: &UpstreamTarget,
        known: &BTreeSet<String>,
    ) -> Vec<RouteConfig> {
        let root = || parse::route_prefix("/").expect("/ is a prefix");
        if raw.is_empty() {
            return vec![RouteConfig {
                name: "/".to_owned(),
                prefix: root(),
                upstream: default_upstream.clone(),
                credential: DEFAULT_CREDENTIAL.to_owned(),
                header: None,
                format: None,
                strip_prefix: false,
                idempotency: false,
            }];
        }
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut prefixes: BTreeMap<String, usize> = BTreeMap::new();
        let mut routes = Vec::with_capacity(raw.len());
        for (index, route) in raw.into_iter().enumerate() {
            let section = format!("route[{index}]");
            let key = format!("{section}.prefix");
            let prefix = match route.prefix {
                Some(text) => {
                    if let Some(first) = prefixes.insert(text.clone(), index) {
                        self.problem(
                            &key,
                            format!("{text:?} is already the prefix of route[{first}]"),
                        );
                    }
                    self.parsed(&key, parse::route_prefix(&text))
                        .unwrap_or_else(root)
                }
                None => {
                    self.problem(&key, "required");
                    root()
                }
            };
            let name = route.name.unwrap_or_else(|| prefix.to_string());
            if name.is_empty() {
                self.problem(&format!("{section}.name"), "is empty");
            }
            if let Some(first) = names.insert(name.clone(), index) {
                self.problem(
                    &format!("{section}.name"),
                    format!("{name:?} is already the name of route[{first}]"),
                );
            }
            let upstream = match route.upstream.as_deref() {
                None => default_upstream.clone(),
                Some(text) => self.target(
                    &format!("{section}.upstream"),
                    Some(text),
                    DEFAULT_UPSTREAM_URL,
                ),
            };
            let credential = route
                .credential
                .unwrap_or_else(|| DEFAULT_CREDENTIAL.to_owned());
            if !known.contains(&credential) {
                self.problem(
                    &format!("{section}.credential"),
                    format!("no credential named {credential:?} (define it as [credentials.{credential}])"),
                );
            }
            let header = route
                .header
                .as_deref()
                .and_then(|text| self.header_name(&format!("{section}.header"), text));
            let format = route
                .format
                .as_deref()
                .and_then(|text| self.header_format(&format!("{section}.format"), text));
            routes.push(RouteConfig {
                name,
                prefix,
                upstream,
                credential,
                header,
                format,
                strip_prefix: route.strip_prefix.unwrap_or(false),
                idempotency: route.idempotency.unwrap_or(false),
            });
        }
        routes
    }

    fn access(&mut self, raw: RawAccess) -> AccessConfig {
        if let Some(keys_file) = &raw.keys_file {
            self.existing_file("access.keys_file", keys_file);
        }
        let mut allow = Vec::with_capacity(raw.allow.len());
        for (index, entry) in raw.allow.into_iter().enumerate() {
            let key = format!("access.allow[{index}]");
            let (prefix, methods) = match entry {
                RawAllow::Prefix(prefix) => (Some(prefix), None),
                RawAllow::Rule(rule) => (rule.prefix, rule.methods),
            };
            let Some(prefix) = prefix else {
                self.problem(&format!("{key}.prefix"), "required");
                continue;
            };
            let Some(prefix) = self.parsed(&key, parse::route_prefix(&prefix)) else {
                continue;
            };
            let methods = match methods {
                None => Vec::new(),
                Some(names) if names.is_empty() => {
                    self.problem(
                        &format!("{key}.methods"),
                        "is empty (leave it out to allow every method)",
                    );
                    Vec::new()
                }
                Some(names) => {
                    let mut methods: Vec<Method> = Vec::new();
                    for name in names {
                        match parse::standard_method(&name) {
                            Some(method) if !methods.contains(&method) => methods.push(method),
                            Some(_) => {}
                            None => self.problem(
                                &format!("{key}.methods"),
                                format!("{name:?} is not an HTTP method"),
                            ),
                        }
                    }
                    methods
                }
            };
            allow.push(AllowRule { prefix, methods });
        }
        let allow_origins = self.each(
            "access.allow_origins",
            raw.allow_origins,
            AllowedOrigin::parse,
        );
        let allow_hosts = self.each("access.allow_hosts", raw.allow_hosts, AllowedHost::parse);
        AccessConfig {
            keys_file: raw.keys_file,
            allow,
            allow_origins,
            allow_hosts,
        }
    }

    fn log(&mut self, raw: RawLog) -> LogConfig {
        let format = match raw.format {
            None | Some(RawLogFormat::Json) => LogFormat::Json,
            Some(RawLogFormat::Text) => LogFormat::Text,
        };
        let level = raw.level.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned());
        if level.trim().is_empty() {
            self.problem("log.level", "is empty");
        } else if let Err(error) = tracing_subscriber::EnvFilter::try_new(&level) {
            self.problem(
                "log.level",
                format!("not a log filter such as \"info\" or \"ipproxy=debug,info\": {error}"),
            );
        }
        LogConfig { format, level }
    }

    /// Each entry of the list `key` parsed, the bad ones recorded as `key[index]`.
    fn each<T>(
        &mut self,
        key: &str,
        entries: Vec<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let mut parsed = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            if let Some(value) = self.parsed(&format!("{key}[{index}]"), parse(entry)) {
                parsed.push(value);
            }
        }
        parsed
    }

    /// The parsed value, or `None` with the problem recorded under `key`.
    fn parsed<T>(&mut self, key: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.problem(key, message)).ok()
    }

    fn socket_addr(&mut self, key: &str, raw: Option<String>, default: &str) -> SocketAddr {
        raw.and_then(|text| self.parsed(key, parse::socket_addr(&text)))
            .unwrap_or_else(|| default.parse().expect("the default listen addresses parse"))
    }

    fn duration(&mut self, key: &str, raw: Option<String>, default: Duration) -> Duration {
        raw.and_then(|text| self.parsed(key, parse::duration(&text)))
            .unwrap_or(default)
    }

    fn positive_duration(&mut self, key: &str, raw: Option<String>, default: Duration) -> Duration {
        let duration = self.duration(key, raw, default);
        if duration.is_zero() {
            self.problem(key, "must be longer than zero");
            return default;
        }
        duration
    }

    fn size(&mut self, key: &str, raw: Option<RawSize>, default: u64) -> u64 {
        raw.and_then(|raw| self.parsed(key, parse::size(&raw)))
            .unwrap_or(default)
    }

    /// An `http`/`https` URL (see [`parse::upstream_target`]), `default` when unset
    /// or wrong.
    fn target(&mut self, key: &str, raw: Option<&str>, default: &str) -> UpstreamTarget {
        raw.and_then(|text| self.parsed(key, parse::upstream_target(text)))
            .unwrap_or_else(|| {
                parse::upstream_target(default).expect("the default URLs are valid upstreams")
            })
    }

    fn header_name(&mut self, key: &str, text: &str) -> Option<HeaderName> {
        self.parsed(key, parse::header_name(text))
    }

    fn header_format(&mut self, key: &str, text: &str) -> Option<HeaderFormat> {
        self.parsed(key, parse::header_format(text))
    }

    fn existing_file(&mut self, key: &str, path: &Path) {
        let _ = self.parsed(key, parse::existing_file(path));
    }
}
