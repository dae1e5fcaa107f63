//! [`Config`] → the redacted TOML that `ipproxy check` prints.
//!
//! Secrets never reach the serializer: each is replaced by [`REDACTED`] while building
//! the view below, so no formatting path can leak one.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use secrecy::ExposeSecret;

use super::{
    AllowRule, Config, CredentialConfig, CredentialSource, EgressConfig, EgressProxy, LogFormat,
    SecretSource, StoreConfig, TracingConfig,
};

/// What every secret is shown as.
pub(super) const REDACTED: &str = "***";

#[derive(Serialize)]
struct View {
    server: ServerView,
    upstream: UpstreamView,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<CredentialView>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    credentials: BTreeMap<String, CredentialView>,
    route: Vec<RouteView>,
    access: AccessView,
    log: LogView,
    store: StoreView,
    idempotency: IdempotencyView,
    tracing: TracingView,
}

#[derive(Serialize)]
struct IdempotencyView {
    ttl: String,
    max_response: String,
    max_entries: usize,
    on_store_down: &'static str,
}

#[derive(Serialize)]
struct TracingView {
    /// Absent: tracing is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    otlp_endpoint: Option<String>,
    service_name: String,
    sample_ratio: f64,
}

#[derive(Serialize)]
struct StoreView {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_ttl: Option<String>,
}

#[derive(Serialize)]
struct ServerView {
    listen: String,
    admin_listen: String,
    request_timeout: String,
    max_body: String,
    replay_limit: String,
    max_concurrency: u64,
    shutdown_grace: String,
    header_read_timeout: String,
    client_timeout: String,
}

#[derive(Serialize)]
struct UpstreamView {
    url: String,
    connect_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<String>,
    /// Set by `upstream.proxy` or `proxy_file`: the URL with the password as `***`.
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<String>,
}

#[derive(Serialize)]
struct CredentialView {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_reauth_interval: Option<String>,
    header: String,
    format: String,
}

#[derive(Serialize)]
struct RouteView {
    name: String,
    prefix: String,
    upstream: String,
    credential: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    strip_prefix: bool,
    idempotency: bool,
}

#[derive(Serialize)]
struct AccessView {
    #[serde(skip_serializing_if = "Option::is_none")]
    keys_file: Option<String>,
    allow: Vec<AllowView>,
    allow_origins: Vec<String>,
    allow_hosts: Vec<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum AllowView {
    Prefix(String),
    Rule {
        prefix: String,
        methods: Vec<String>,
    },
}

#[derive(Serialize)]
struct LogView {
    format: &'static str,
    level: String,
}

pub(super) fn redacted_toml(config: &Config) -> String {
    let mut credentials: BTreeMap<String, CredentialView> = config
        .credentials
        .iter()
        .map(|(name, credential)| (name.clone(), credential_view(credential)))
        .collect();
    let auth = credentials.remove(super::DEFAULT_CREDENTIAL);
    let view = View {
        server: ServerView {
            listen: config.server.listen.to_string(),
            admin_listen: config.server.admin_listen.to_string(),
            request_timeout: duration(config.server.request_timeout),
            max_body: size(config.server.max_body),
            replay_limit: size(config.server.replay_limit),
            max_concurrency: u64::try_from(config.server.max_concurrency).unwrap_or(u64::MAX),
            shutdown_grace: duration(config.server.shutdown_grace),
            header_read_timeout: duration(config.server.header_read_timeout),
            client_timeout: duration(config.server.client_timeout),
        },
        upstream: UpstreamView {
            url: config.upstream.url.to_string(),
            connect_timeout: duration(config.upstream.connect_timeout),
            ca_file: config
                .upstream
                .ca_file
                .as_ref()
                .map(|path| path.display().to_string()),
            proxy: config
                .upstream
                .egress
                .is_from_the_configuration()
                .then_some(config.upstream.egress.https.as_ref())
                .flatten()
                .map(ToString::to_string),
        },
        auth,
        credentials,
        route: config
            .routes
            .iter()
            .map(|route| RouteView {
                name: route.name.clone(),
                prefix: route.prefix.to_string(),
                upstream: route.upstream.to_string(),
                credential: route.credential.clone(),
                header: route.header.as_ref().map(ToString::to_string),
                format: route.format.as_ref().map(ToString::to_string),
                strip_prefix: route.strip_prefix,
                idempotency: route.idempotency,
            })
            .collect(),
        access: AccessView {
            keys_file: config
                .access
                .keys_file
                .as_ref()
                .map(|path| path.display().to_string()),
            allow: config.access.allow.iter().map(allow_view).collect(),
            allow_origins: config
                .access
                .allow_origins
                .iter()
                .map(ToString::to_string)
                .collect(),
            allow_hosts: config
                .access
                .allow_hosts
                .iter()
                .map(ToString::to_string)
                .collect(),
        },
        log: LogView {
            format: match config.log.format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
            },
            level: config.log.level.clone(),
        },
        store: store_view(&config.store),
        idempotency: IdempotencyView {
            ttl: duration(config.idempotency.ttl),
            max_response: size(config.idempotency.max_response),
            max_entries: config.idempotency.max_entries,
            on_store_down: config.idempotency.on_store_down.as_str(),
        },
        tracing: TracingView {
            otlp_endpoint: config
                .tracing
                .otlp_endpoint
                .as_ref()
                .map(ToString::to_string),
            service_name: config.tracing.service_name.clone(),
            sample_ratio: config.tracing.sample_ratio,
        },
    };
    // Only strings, numbers, booleans and tables in a fixed shape: serializing cannot fail.
    let body = toml::to_string(&view).expect("the redacted view is plain TOML");
    let ignored: String = config
        .warnings
        .iter()
        .map(|warning| format!("# {warning}\n"))
        .collect();
    format!(
        "{ignored}{}{}{body}",
        egress_comment(&config.upstream.egress),
        tracing_comment(&config.tracing)
    )
}

/// `[tracing]` values taken from the OpenTelemetry variables are shown in the section
/// (they are its effective values) and named in a comment line above the TOML.
fn tracing_comment(tracing: &TracingConfig) -> String {
    if tracing.from_variables.is_empty() {
        return String::new();
    }
    format!(
        "# tracing from the environment: {}\n",
        tracing.from_variables.join(", ")
    )
}

/// An egress proxy taken from the variables is not a key of the file: it is shown as
/// comment lines above the TOML, so the output stays a valid configuration.
fn egress_comment(egress: &EgressConfig) -> String {
    if egress.is_direct() || egress.is_from_the_configuration() {
        return String::new();
    }
    let through = |proxy: Option<&EgressProxy>| {
        proxy.map_or_else(
            || "direct".to_owned(),
            |proxy| format!("through {proxy} ({})", proxy.source),
        )
    };
    let mut comment = format!(
        "# egress from the environment: HTTPS targets {}; plain-HTTP targets {}\n",
        through(egress.https.as_ref()),
        through(egress.http.as_ref()),
    );
    if let Some(no_proxy) = &egress.no_proxy {
        comment.push_str(&format!(
            "# reached directly ({}): {}\n",
            no_proxy.source,
            no_proxy.entries.replace(['\n', '\r'], " ")
        ));
    }
    comment
}

fn credential_view(credential: &CredentialConfig) -> CredentialView {
    let mut view = CredentialView {
        kind: "session",
        url: None,
        username: None,
        password: None,
        password_file: None,
        token: None,
        token_file: None,
        token_ttl: None,
        refresh_before: None,
        min_reauth_interval: None,
        header: credential.header.to_string(),
        format: credential.format.to_string(),
    };
    match &credential.source {
        CredentialSource::Session {
            url,
            username,
            password,
        } => {
            view.url = Some(url.to_string());
            view.username = Some(username.clone());
            match password {
                SecretSource::Inline(_) => view.password = Some(REDACTED),
                SecretSource::File(path) => view.password_file = Some(path.display().to_string()),
            }
            view.token_ttl = Some(duration(credential.token_ttl));
            view.refresh_before = Some(duration(credential.refresh_before));
            view.min_reauth_interval = Some(duration(credential.min_reauth_interval));
        }
        CredentialSource::Static(SecretSource::Inline(_)) => {
            view.kind = "static";
            view.token = Some(REDACTED);
        }
        CredentialSource::Static(SecretSource::File(path)) => {
            view.kind = "static";
            view.token_file = Some(path.display().to_string());
        }
    }
    view
}

fn store_view(store: &StoreConfig) -> StoreView {
    let StoreConfig::Redis(redis) = store else {
        return StoreView {
            kind: "memory",
            url: None,
            url_file: None,
            key_file: None,
            ca_file: None,
            prefix: None,
            timeout: None,
            lock_ttl: None,
        };
    };
    let (url, url_file) = match &redis.url {
        SecretSource::Inline(url) => (Some(redacted_url(url.expose_secret())), None),
        SecretSource::File(path) => (None, Some(path.display().to_string())),
    };
    StoreView {
        kind: "redis",
        url,
        url_file,
        key_file: Some(redis.key_file.display().to_string()),
        ca_file: redis
            .ca_file
            .as_ref()
            .map(|path| path.display().to_string()),
        prefix: Some(redis.prefix.clone()),
        timeout: Some(duration(redis.timeout)),
        lock_ttl: Some(duration(redis.lock_ttl)),
    }
}

/// A URL with its password (and a user name, which may be one) shown as `***`.
pub(super) fn redacted_url(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text.trim()) else {
        return REDACTED.to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some(REDACTED));
    }
    url.to_string()
}

fn allow_view(rule: &AllowRule) -> AllowView {
    if rule.methods.is_empty() {
        AllowView::Prefix(rule.prefix.to_string())
    } else {
        AllowView::Rule {
            prefix: rule.prefix.to_string(),
            methods: rule.methods.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Durations in the largest unit that divides them exactly (`24h`, `90s`, `500ms`),
/// as the file reads them.
fn duration(duration: Duration) -> String {
    const UNITS: &[(u128, &str)] = &[
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
    ];
    let nanos = duration.as_nanos();
    UNITS
        .iter()
        .find(|(unit, _)| nanos != 0 && nanos % unit == 0)
        .map_or_else(
            || format!("{nanos}ns"),
            |(unit, name)| format!("{}{name}", nanos / unit),
        )
}

/// Exact sizes in the largest binary unit that divides them, as the file reads them.
fn size(bytes: u64) -> String {
    const UNITS: &[(u64, &str)] = &[(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        .find(|(unit, _)| bytes != 0 && bytes % unit == 0)
        .map_or_else(
            || bytes.to_string(),
            |(unit, name)| format!("{}{name}", bytes / unit),
        )
}
