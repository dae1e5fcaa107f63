//! Raw structs → the validated [`Config`]: every default and every rule.
//!
//! Each check pushes a [`Problem`] naming the key and carries on with the default, so
//! that one run reports everything; the caller discards the result when any problem
//! was found. Messages quote values only when they cannot be secrets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::raw::{
    RawAccess, RawAllow, RawConfig, RawCredential, RawKind, RawLog, RawLogFormat, RawRoute,
    RawServer, RawSize, RawUpstream,
};
use super::{
    AccessConfig, AllowRule, Config, CredentialConfig, CredentialSource, DEFAULT_CREDENTIAL,
    HeaderFormat, LogConfig, LogFormat, Problem, RouteConfig, ServerConfig, StaticToken,
    UpstreamConfig,
};

pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub(super) const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;
const DEFAULT_REPLAY_LIMIT: u64 = 1024 * 1024;
const DEFAULT_MAX_CONCURRENCY: usize = 1024;
/// Far beyond what one process has sockets for; keeps the permit count within what
/// the semaphore (and a shutdown that waits for every permit) can hold.
const MAX_CONCURRENCY_LIMIT: u64 = 1_000_000;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const DEFAULT_UPSTREAM_URL: &str = "https://api.intelepeer.com";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_AUTH_URL: &str = "https://customer.intelepeer.com/_rest/v4/authenticate";
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(60 * 60);
const DEFAULT_HEADER: &str = "authorization";
const DEFAULT_LOG_LEVEL: &str = "info";

/// Headers the token may not go in: the proxy sets or strips them itself.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Keys that only a session credential has.
const SESSION_ONLY_KEYS: &[&str] = &[
    "url",
    "username",
    "password",
    "password_file",
    "token_ttl",
    "refresh_before",
];
/// Keys that only a static credential has.
const STATIC_ONLY_KEYS: &[&str] = &["token", "token_file"];

/// Checks `raw` into a [`Config`], pushing every problem found. The result holds
/// defaults in place of bad values, so it is meaningless when `problems` grew.
pub(super) fn validate(raw: RawConfig, problems: &mut Vec<Problem>) -> Config {
    let mut check = Checker { problems };
    let server = check.server(raw.server);
    let upstream = check.upstream(raw.upstream);

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
    Config {
        server,
        upstream,
        credentials,
        routes,
        access,
        log,
    }
}

struct Checker<'p> {
    problems: &'p mut Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem::new(key, message));
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

    fn upstream(&mut self, raw: RawUpstream) -> UpstreamConfig {
        let url = self.url("upstream.url", raw.url.as_deref(), DEFAULT_UPSTREAM_URL);
        let connect_timeout = self.positive_duration(
            "upstream.connect_timeout",
            raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        );
        if let Some(ca_file) = &raw.ca_file {
            self.existing_file("upstream.ca_file", ca_file);
        }
        UpstreamConfig {
            url,
            connect_timeout,
            ca_file: raw.ca_file,
        }
    }

    fn credential(&mut self, section: &str, name: &str, raw: RawCredential) -> CredentialConfig {
        let kind = raw.kind.unwrap_or(RawKind::Session);
        let present = |key: &str| match key {
            "url" => raw.url.is_some(),
            "username" => raw.username.is_some(),
            "password" => raw.password.is_some(),
            "password_file" => raw.password_file.is_some(),
            "token_ttl" => raw.token_ttl.is_some(),
            "refresh_before" => raw.refresh_before.is_some(),
            "token" => raw.token.is_some(),
            "token_file" => raw.token_file.is_some(),
            _ => false,
        };
        let (foreign, own_kind) = match kind {
            RawKind::Session => (STATIC_ONLY_KEYS, "session"),
            RawKind::Static => (SESSION_ONLY_KEYS, "static"),
        };
        let misplaced: Vec<&str> = foreign.iter().copied().filter(|key| present(key)).collect();
        for key in misplaced {
            self.problem(
                &format!("{section}.{key}"),
                format!("not a key of a kind = \"{own_kind}\" credential"),
            );
        }

        let header = match raw.header.as_deref() {
            None => HeaderName::from_static(DEFAULT_HEADER),
            Some(text) => self
                .header_name(&format!("{section}.header"), text)
                .unwrap_or(HeaderName::from_static(DEFAULT_HEADER)),
        };
        let format = match raw.format.as_deref() {
            None => HeaderFormat::default(),
            Some(text) => self
                .header_format(&format!("{section}.format"), text)
                .unwrap_or_default(),
        };

        let source = match kind {
            RawKind::Session => {
                let url = self.url(
                    &format!("{section}.url"),
                    raw.url.as_deref(),
                    DEFAULT_AUTH_URL,
                );
                let username = match raw.username {
                    Some(username) if !username.trim().is_empty() => username,
                    Some(_) => {
                        self.problem(&format!("{section}.username"), "is empty");
                        String::new()
                    }
                    None => {
                        self.problem(
                            &format!("{section}.username"),
                            "required for a kind = \"session\" credential",
                        );
                        String::new()
                    }
                };
                let password = match (raw.password, raw.password_file) {
                    (Some(password), None) => {
                        if password.0.expose_secret().is_empty() {
                            self.problem(&format!("{section}.password"), "is empty");
                        }
                        password.0
                    }
                    (None, Some(path)) => {
                        self.read_secret_file(&format!("{section}.password_file"), &path)
                    }
                    (Some(_), Some(_)) => {
                        self.problem(
                            &format!("{section}.password"),
                            "give either password or password_file, not both",
                        );
                        SecretString::from("")
                    }
                    (None, None) => {
                        self.problem(
                            &format!("{section}.password"),
                            "required: give password or password_file",
                        );
                        SecretString::from("")
                    }
                };
                CredentialSource::Session {
                    url,
                    username,
                    password,
                }
            }
            RawKind::Static => {
                let token = match (raw.token, raw.token_file) {
                    (Some(token), None) => {
                        let key = format!("{section}.token");
                        self.check_token(&key, token.0.expose_secret(), &format);
                        StaticToken::Inline(token.0)
                    }
                    (None, Some(path)) => {
                        let key = format!("{section}.token_file");
                        let token = self.read_secret_file(&key, &path);
                        if !token.expose_secret().is_empty() {
                            self.check_token(&key, token.expose_secret(), &format);
                        }
                        StaticToken::File(path)
                    }
                    (Some(token), Some(_)) => {
                        self.problem(
                            &format!("{section}.token"),
                            "give either token or token_file, not both",
                        );
                        StaticToken::Inline(token.0)
                    }
                    (None, None) => {
                        self.problem(
                            &format!("{section}.token"),
                            "required: give token or token_file",
                        );
                        StaticToken::Inline(SecretString::from(""))
                    }
                };
                CredentialSource::Static(token)
            }
        };

        CredentialConfig {
            name: name.to_owned(),
            source,
            token_ttl: self.positive_duration(
                &format!("{section}.token_ttl"),
                raw.token_ttl,
                DEFAULT_TOKEN_TTL,
            ),
            refresh_before: self.duration(
                &format!("{section}.refresh_before"),
                raw.refresh_before,
                DEFAULT_REFRESH_BEFORE,
            ),
            header,
            format,
        }
    }

    /// A static token must be non-empty and fit in a header value.
    fn check_token(&mut self, key: &str, token: &str, format: &HeaderFormat) {
        if token.is_empty() {
            self.problem(key, "is empty");
        } else if HeaderValue::from_str(&format.render(token)).is_err() {
            self.problem(
                key,
                "the token holds characters a header value cannot (it is not shown)",
            );
        }
    }

    /// Reads a secret file: one trailing newline or other whitespace is dropped; an
    /// empty file is a problem. Messages give the path, never the content.
    fn read_secret_file(&mut self, key: &str, path: &Path) -> SecretString {
        match std::fs::read_to_string(path) {
            Ok(content) => {
                let secret = content.trim_end();
                if secret.is_empty() {
                    self.problem(key, format!("{} is empty", path.display()));
                }
                SecretString::from(secret)
            }
            Err(error) => {
                self.problem(key, format!("cannot read {}: {error}", path.display()));
                SecretString::from("")
            }
        }
    }

    fn routes(
        &mut self,
        raw: Vec<RawRoute>,
        default_upstream: &Url,
        known: &BTreeSet<String>,
    ) -> Vec<RouteConfig> {
        if raw.is_empty() {
            return vec![RouteConfig {
                name: "/".to_owned(),
                prefix: "/".to_owned(),
                upstream: default_upstream.clone(),
                credential: DEFAULT_CREDENTIAL.to_owned(),
                header: None,
                format: None,
                strip_prefix: false,
            }];
        }
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut prefixes: BTreeMap<String, usize> = BTreeMap::new();
        let mut routes = Vec::with_capacity(raw.len());
        for (index, route) in raw.into_iter().enumerate() {
            let section = format!("route[{index}]");
            let prefix = match route.prefix {
                Some(prefix) => {
                    self.path_prefix(&format!("{section}.prefix"), &prefix);
                    if let Some(first) = prefixes.insert(prefix.clone(), index) {
                        self.problem(
                            &format!("{section}.prefix"),
                            format!("{prefix:?} is already the prefix of route[{first}]"),
                        );
                    }
                    prefix
                }
                None => {
                    self.problem(&format!("{section}.prefix"), "required");
                    "/".to_owned()
                }
            };
            let name = route.name.unwrap_or_else(|| prefix.clone());
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
                Some(text) => self.url(
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
            self.path_prefix(&key, &prefix);
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
                        match standard_method(&name) {
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
        AccessConfig {
            keys_file: raw.keys_file,
            allow,
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

    fn socket_addr(&mut self, key: &str, raw: Option<String>, default: &str) -> SocketAddr {
        let fallback = || default.parse().expect("the default listen addresses parse");
        match raw {
            None => fallback(),
            Some(text) => text.trim().parse().unwrap_or_else(|_| {
                self.problem(
                    key,
                    format!("{text:?} is not an IP address and port such as \"127.0.0.1:8080\""),
                );
                fallback()
            }),
        }
    }

    fn duration(&mut self, key: &str, raw: Option<String>, default: Duration) -> Duration {
        match raw {
            None => default,
            Some(text) => humantime::parse_duration(text.trim()).unwrap_or_else(|error| {
                self.problem(key, format!("{text:?} is not a duration such as \"500ms\", \"30s\", \"5m\" or \"24h\" ({error})"));
                default
            }),
        }
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
        match raw {
            None => default,
            Some(RawSize::Bytes(bytes)) => bytes,
            Some(RawSize::Text(text)) => match text.trim().parse::<bytesize::ByteSize>() {
                Ok(size) => size.as_u64(),
                Err(_) => {
                    self.problem(key, format!("{text:?} is not a size such as \"64KiB\" or \"10MiB\" or a number of bytes"));
                    default
                }
            },
        }
    }

    /// An `http`/`https` URL with a host and no query, fragment or user info. The
    /// value is not quoted back: user info would be a secret.
    fn url(&mut self, key: &str, raw: Option<&str>, default: &str) -> Url {
        let fallback = || Url::parse(default).expect("the default URLs parse");
        let Some(text) = raw else {
            return fallback();
        };
        let url = match Url::parse(text.trim()) {
            Ok(url) => url,
            Err(error) => {
                self.problem(key, format!("not a URL: {error}"));
                return fallback();
            }
        };
        let mut wrong = Vec::new();
        if !matches!(url.scheme(), "http" | "https") {
            wrong.push("the scheme must be http or https");
        }
        if url.host_str().is_none_or(str::is_empty) {
            wrong.push("it needs a host");
        }
        if !url.username().is_empty() || url.password().is_some() {
            wrong.push("it must not hold a user name or password");
        }
        if url.query().is_some() {
            wrong.push("it must not have a query (?...)");
        }
        if url.fragment().is_some() {
            wrong.push("it must not have a fragment (#...)");
        }
        // The proxy builds its upstream requests from the parsed parts.
        if http::Uri::try_from(url.as_str()).is_err() {
            wrong.push("it is not a valid HTTP URI");
        }
        if wrong.is_empty() {
            url
        } else {
            self.problem(key, wrong.join("; "));
            fallback()
        }
    }

    /// A path prefix: starts with `/`; no `..`, `//`, `%`, `?`, `#`, spaces or control
    /// characters, so it matches what the proxy's path normalisation lets through.
    fn path_prefix(&mut self, key: &str, prefix: &str) {
        let mut wrong = Vec::new();
        if !prefix.starts_with('/') {
            wrong.push("must start with \"/\"");
        }
        if prefix.contains("..") {
            wrong.push("must not contain \"..\"");
        }
        if prefix.contains("//") {
            wrong.push("must not contain \"//\"");
        }
        if prefix.contains('%') {
            wrong.push("must not contain \"%\" (write the path decoded)");
        }
        if prefix.contains(['?', '#']) {
            wrong.push("must not contain \"?\" or \"#\"");
        }
        if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            wrong.push("must not contain spaces or control characters");
        }
        if !wrong.is_empty() {
            self.problem(key, format!("{prefix:?} {}", wrong.join("; ")));
        }
    }

    fn header_name(&mut self, key: &str, text: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(text.trim().as_bytes()) {
            Ok(name) if RESERVED_HEADERS.contains(&name.as_str()) => {
                self.problem(
                    key,
                    format!("{text:?} is set or removed by the proxy itself"),
                );
                None
            }
            Ok(name) => Some(name),
            Err(_) => {
                self.problem(key, format!("{text:?} is not a valid header name"));
                None
            }
        }
    }

    fn header_format(&mut self, key: &str, text: &str) -> Option<HeaderFormat> {
        let Some(format) = HeaderFormat::parse(text) else {
            self.problem(
                key,
                format!(
                    "{text:?} must contain {} exactly once",
                    HeaderFormat::PLACEHOLDER
                ),
            );
            return None;
        };
        let valid = |part: &str| part.is_empty() || HeaderValue::from_str(part).is_ok();
        if !valid(&format.prefix) || !valid(&format.suffix) {
            self.problem(
                key,
                format!("{text:?} holds characters a header value cannot"),
            );
            return None;
        }
        Some(format)
    }

    fn existing_file(&mut self, key: &str, path: &Path) {
        if !path.is_file() {
            self.problem(
                key,
                format!("{} does not exist or is not a file", path.display()),
            );
        }
    }
}

/// The standard methods of RFC 9110 and PATCH, upper-cased; anything else is most
/// likely a typo.
fn standard_method(name: &str) -> Option<Method> {
    let method = Method::from_bytes(name.trim().to_ascii_uppercase().as_bytes()).ok()?;
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ]
    .contains(&method)
    .then_some(method)
}
