//! `IPPROXY_<SECTION>__<KEY>` variables → a configuration layer, typed by the schema.
//!
//! Owns the table of keys a variable may set and how each value is read: a text key
//! takes the value as it is (`IPPROXY_AUTH__PASSWORD=12345` is the string `"12345"`),
//! a number key parses a number, a list key parses a TOML array. Guessing the type
//! from the value, as generic environment providers do, would turn such a password
//! into a number. Unknown variables are problems, never ignored.

use std::collections::BTreeMap;

use figment::value::{Dict, Value};

use super::{Problem, insert_at};

/// Every configuration variable starts with this.
pub(super) const PREFIX: &str = "IPPROXY_";

/// Separates section, (credential name,) and key in a variable name.
const SEPARATOR: &str = "__";

/// How a variable's text becomes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EnvKind {
    /// Taken as it is: names, addresses, durations, sizes, URLs, paths and secrets.
    Text,
    /// A whole number.
    Integer,
    /// A TOML array, e.g. `["/a/", {prefix = "/b/", methods = ["GET"]}]`.
    List,
}

/// The keys of each plain section that a variable may set.
pub(super) const SECTION_KEYS: &[(&str, &[(&str, EnvKind)])] = &[
    (
        "server",
        &[
            ("listen", EnvKind::Text),
            ("admin_listen", EnvKind::Text),
            ("request_timeout", EnvKind::Text),
            ("max_body", EnvKind::Text),
            ("replay_limit", EnvKind::Text),
            ("max_concurrency", EnvKind::Integer),
            ("shutdown_grace", EnvKind::Text),
            ("header_read_timeout", EnvKind::Text),
            ("client_timeout", EnvKind::Text),
        ],
    ),
    (
        "upstream",
        &[
            ("url", EnvKind::Text),
            ("connect_timeout", EnvKind::Text),
            ("ca_file", EnvKind::Text),
            ("proxy", EnvKind::Text),
            ("proxy_file", EnvKind::Text),
        ],
    ),
    (
        "access",
        &[
            ("keys_file", EnvKind::Text),
            ("allow", EnvKind::List),
            ("allow_origins", EnvKind::List),
            ("allow_hosts", EnvKind::List),
        ],
    ),
    (
        "log",
        &[("format", EnvKind::Text), ("level", EnvKind::Text)],
    ),
    (
        "store",
        &[
            ("kind", EnvKind::Text),
            ("url", EnvKind::Text),
            ("url_file", EnvKind::Text),
            ("key_file", EnvKind::Text),
            ("ca_file", EnvKind::Text),
            ("prefix", EnvKind::Text),
            ("timeout", EnvKind::Text),
            ("lock_ttl", EnvKind::Text),
        ],
    ),
    (
        "idempotency",
        &[
            ("ttl", EnvKind::Text),
            ("max_response", EnvKind::Text),
            ("max_entries", EnvKind::Integer),
            ("on_store_down", EnvKind::Text),
        ],
    ),
    (
        "tracing",
        &[
            ("otlp_endpoint", EnvKind::Text),
            ("service_name", EnvKind::Text),
            ("sample_ratio", EnvKind::Text),
        ],
    ),
];

/// The keys of a credential (`[auth]` and `[credentials.NAME]`); all are text.
pub(super) const CREDENTIAL_KEYS: &[&str] = &[
    "kind",
    "url",
    "username",
    "password",
    "password_file",
    "token",
    "token_file",
    "token_ttl",
    "refresh_before",
    "min_reauth_interval",
    "header",
    "format",
];

/// The two forms of each secret: a variable setting one replaces the other form
/// coming from the file, so `IPPROXY_AUTH__PASSWORD_FILE` can stand in for a file's
/// `password` (and the other way round), and `IPPROXY_UPSTREAM__PROXY_FILE` for a
/// file's `upstream.proxy`.
const SECRET_FORMS: &[(&str, &str)] = &[
    ("password", "password_file"),
    ("token", "token_file"),
    ("proxy", "proxy_file"),
    ("url", "url_file"),
];

/// The variables, shaped as the file's tables, and which variable set which key.
#[derive(Debug)]
pub(super) struct EnvLayer {
    dict: Dict,
    /// Dotted key (`auth.password`) → the variable that set it.
    sources: BTreeMap<String, String>,
}

impl EnvLayer {
    /// Reads the `IPPROXY_*` entries of `vars` (except `IPPROXY_CONFIG`); bad ones are
    /// pushed to `problems` and left out.
    pub(super) fn from_vars(vars: &[(String, String)], problems: &mut Vec<Problem>) -> Self {
        let mut layer = Self {
            dict: Dict::new(),
            sources: BTreeMap::new(),
        };
        for (name, text) in vars {
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            if name == super::CONFIG_FILE_VAR {
                continue;
            }
            let parts: Vec<String> = rest.split(SEPARATOR).map(str::to_ascii_lowercase).collect();
            let path: Vec<&str> = parts.iter().map(String::as_str).collect();
            let Some(kind) = kind_of(&path) else {
                let message = if path.first() == Some(&"route") {
                    "routes can only be configured in the file ([[route]])".to_owned()
                } else {
                    format!("unknown variable (no key {})", path.join("."))
                };
                problems.push(Problem::new(name.as_str(), message));
                continue;
            };
            match value_of(kind, text) {
                Ok(value) => {
                    insert_at(&mut layer.dict, &path, value);
                    layer.sources.insert(path.join("."), name.clone());
                }
                Err(message) => problems.push(Problem::new(name.as_str(), message)),
            }
        }
        layer
    }

    /// The variables as nested tables.
    pub(super) fn dict(&self) -> &Dict {
        &self.dict
    }

    /// The variable that set the dotted `key`, if one did.
    pub(super) fn source_of(&self, key: &str) -> Option<&str> {
        self.sources.get(key).map(String::as_str)
    }

    /// Removes from the merged tree the form of a secret that a variable replaced with
    /// the other form (see `SECRET_FORMS`); when variables set both forms, both stay
    /// (and validation names them).
    pub(super) fn drop_replaced_secrets(&self, merged: &mut Value) {
        let Value::Dict(_, root) = merged else {
            return;
        };
        let mut tables: Vec<(String, &mut Dict)> = Vec::new();
        for (section, value) in root.iter_mut() {
            match (section.as_str(), value) {
                ("auth", Value::Dict(_, auth)) => tables.push(("auth".to_owned(), auth)),
                ("store", Value::Dict(_, store)) => tables.push(("store".to_owned(), store)),
                ("upstream", Value::Dict(_, upstream)) => {
                    tables.push(("upstream".to_owned(), upstream));
                }
                ("credentials", Value::Dict(_, credentials)) => {
                    for (name, credential) in credentials.iter_mut() {
                        if let Value::Dict(_, credential) = credential {
                            tables.push((format!("credentials.{name}"), credential));
                        }
                    }
                }
                _ => {}
            }
        }
        for (prefix, table) in tables {
            for (inline, file) in SECRET_FORMS {
                let by_var = |key: &str| self.sources.contains_key(&format!("{prefix}.{key}"));
                if by_var(inline) && !by_var(file) {
                    table.remove(*file);
                } else if by_var(file) && !by_var(inline) {
                    table.remove(*inline);
                }
            }
        }
    }
}

/// The kind of the key at `path`, or `None` when no variable may set it.
fn kind_of(path: &[&str]) -> Option<EnvKind> {
    match path {
        ["auth", key] | ["credentials", _, key] => CREDENTIAL_KEYS
            .contains(key)
            .then_some(EnvKind::Text)
            .filter(|_| path.iter().all(|part| !part.is_empty())),
        [section, key] => SECTION_KEYS
            .iter()
            .find(|(name, _)| name == section)
            .and_then(|(_, keys)| keys.iter().find(|(name, _)| name == key))
            .map(|(_, kind)| *kind),
        _ => None,
    }
}

/// Reads a variable's text as `kind`. Messages never repeat the text (it may be a
/// secret set under the wrong name).
fn value_of(kind: EnvKind, text: &str) -> Result<Value, String> {
    match kind {
        EnvKind::Text => Ok(Value::from(text.to_owned())),
        // A non-number is passed on as text so the type error names the key.
        EnvKind::Integer => Ok(text
            .trim()
            .parse::<i64>()
            .map_or_else(|_| Value::from(text.to_owned()), Value::from)),
        EnvKind::List => {
            let document = format!("list = {text}");
            let table: toml::Table = toml::from_str(&document).map_err(|error| {
                format!(
                    "not a TOML array such as [\"/a/\", \"/b/\"]: {}",
                    error.message()
                )
            })?;
            let list = table
                .get("list")
                .filter(|value| value.is_array())
                .ok_or_else(|| "not a TOML array such as [\"/a/\", \"/b/\"]".to_owned())?;
            Value::serialize(list).map_err(|error| error.kind.to_string())
        }
    }
}
