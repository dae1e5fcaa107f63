//! The file's shape: raw serde structs in which every key is optional and loosely
//! typed (durations and sizes as text), so that the checks in `validate` can name the
//! key and explain the rule instead of serde's "invalid type".
//!
//! Also reads the file and turns the merged layers into these structs, naming every
//! unknown key (via `serde_ignored`) and the key of a type error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::value::{Dict, Value};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::Problem;
use super::env::EnvLayer;

/// The whole file. Not deserialized in one go: each section (each credential, each
/// route) is read on its own so that one type error does not hide the problems of
/// the others.
#[derive(Debug, Default)]
pub(super) struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    /// `None` when neither the file nor a variable mentions `[auth]`.
    pub auth: Option<RawCredential>,
    pub credentials: BTreeMap<String, RawCredential>,
    pub route: Vec<RawRoute>,
    pub access: RawAccess,
    pub log: RawLog,
    pub store: RawStore,
    pub idempotency: RawIdempotency,
    pub tracing: RawTracing,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub request_timeout: Option<String>,
    pub max_body: Option<RawSize>,
    pub replay_limit: Option<RawSize>,
    pub max_concurrency: Option<u64>,
    pub shutdown_grace: Option<String>,
    pub header_read_timeout: Option<String>,
    pub client_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawUpstream {
    pub url: Option<String>,
    pub connect_timeout: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// May carry a password: read as a secret, never echoed.
    pub proxy: Option<RawSecret>,
    pub proxy_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawKind {
    Session,
    Static,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawCredential {
    pub kind: Option<RawKind>,
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<RawSecret>,
    pub password_file: Option<PathBuf>,
    pub token: Option<RawSecret>,
    pub token_file: Option<PathBuf>,
    pub token_ttl: Option<String>,
    pub refresh_before: Option<String>,
    pub min_reauth_interval: Option<String>,
    pub header: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawRoute {
    pub name: Option<String>,
    pub prefix: Option<String>,
    pub upstream: Option<String>,
    pub credential: Option<String>,
    pub header: Option<String>,
    pub format: Option<String>,
    pub strip_prefix: Option<bool>,
    pub idempotency: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawAccess {
    pub keys_file: Option<PathBuf>,
    pub allow: Vec<RawAllow>,
    pub allow_origins: Vec<String>,
    pub allow_hosts: Vec<String>,
}

/// An `allow` entry: `"/prefix/"` or `{prefix = "/prefix/", methods = ["GET"]}`.
#[derive(Debug)]
pub(super) enum RawAllow {
    Prefix(String),
    Rule(RawAllowRule),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawAllowRule {
    pub prefix: Option<String>,
    pub methods: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for RawAllow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AllowVisitor;
        impl<'de> Visitor<'de> for AllowVisitor {
            type Value = RawAllow;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path prefix or a table {prefix = \"/x/\", methods = [\"GET\"]}")
            }
            fn visit_str<E: de::Error>(self, prefix: &str) -> Result<RawAllow, E> {
                Ok(RawAllow::Prefix(prefix.to_owned()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawAllow, A::Error> {
                // Through the same map access, so unknown keys are still reported.
                RawAllowRule::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawAllow::Rule)
            }
        }
        deserializer.deserialize_any(AllowVisitor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawStoreKind {
    Memory,
    Redis,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawStore {
    pub kind: Option<RawStoreKind>,
    pub url: Option<RawSecret>,
    pub url_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub prefix: Option<String>,
    pub timeout: Option<String>,
    pub lock_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawIdempotency {
    pub ttl: Option<String>,
    pub max_response: Option<RawSize>,
    pub max_entries: Option<u64>,
    pub on_store_down: Option<RawStoreDown>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawStoreDown {
    Local,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawLogFormat {
    Json,
    Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawLog {
    pub format: Option<RawLogFormat>,
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawTracing {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<RawRatio>,
}

/// A ratio: a number (`1`, `0.25`), or text from a variable (`"0.25"`).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RawRatio {
    Number(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawRatio {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RatioVisitor;
        impl Visitor<'_> for RatioVisitor {
            type Value = RawRatio;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number from 0.0 to 1.0")
            }
            fn visit_f64<E: de::Error>(self, ratio: f64) -> Result<RawRatio, E> {
                Ok(RawRatio::Number(ratio))
            }
            fn visit_u64<E: de::Error>(self, ratio: u64) -> Result<RawRatio, E> {
                Ok(RawRatio::Number(ratio as f64))
            }
            fn visit_i64<E: de::Error>(self, ratio: i64) -> Result<RawRatio, E> {
                Ok(RawRatio::Number(ratio as f64))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawRatio, E> {
                Ok(RawRatio::Text(text.to_owned()))
            }
        }
        deserializer.deserialize_any(RatioVisitor)
    }
}

/// A size: a number of bytes or text such as `64KiB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RawSize {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64KiB\" or \"10MiB\", or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(bytes))
            }
            fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<RawSize, E> {
                u64::try_from(bytes)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(text.to_owned()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A password or token. Unlike a plain `String`, a value of the wrong type is refused
/// without repeating it (serde's message would quote a secret written as a number).
#[derive(Debug, Clone)]
pub(super) struct RawSecret(pub SecretString);

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const NOT_TEXT: &str = "expected a string (quote the value; it is not shown here)";
        struct SecretVisitor;
        impl Visitor<'_> for SecretVisitor {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawSecret, E> {
                Ok(RawSecret(SecretString::from(text)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawSecret, E> {
                Err(E::custom(NOT_TEXT))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawSecret, E> {
                Err(E::custom(NOT_TEXT))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawSecret, E> {
                Err(E::custom(NOT_TEXT))
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<RawSecret, E> {
                Err(E::custom(NOT_TEXT))
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<RawSecret, E> {
                Err(E::custom(NOT_TEXT))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawSecret, E> {
                Err(E::custom(NOT_TEXT))
            }
        }
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// Reads and parses the configuration file. Problems name the file; a parse error
/// gives line and column but never the offending text (it may hold a secret).
pub(super) fn read_file(path: &Path, problems: &mut Vec<Problem>) -> Option<Dict> {
    let key = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            problems.push(Problem::new(
                key,
                format!("cannot read the configuration file: {error}"),
            ));
            return None;
        }
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(table) => table,
        Err(error) => {
            let place = error
                .span()
                .map(|span| {
                    let (line, column) = line_and_column(&text, span.start);
                    format!(" at line {line}, column {column}")
                })
                .unwrap_or_default();
            let message = error.message().trim_end().replace('\n', "; ");
            problems.push(Problem::new(
                key,
                format!("not valid TOML{place}: {message}"),
            ));
            return None;
        }
    };
    match Value::serialize(&table) {
        Ok(Value::Dict(_, dict)) => Some(dict),
        Ok(_) => Some(Dict::new()),
        Err(error) => {
            problems.push(Problem::new(key, error.kind.to_string()));
            None
        }
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count())
        + 1;
    (line, column)
}

/// Deserializes the merged layers, pushing every unknown key and type error (named by
/// key, with the variable when one set it) to `problems`. `None` when any type error
/// was found.
pub(super) fn deserialize(
    merged: &Value,
    env: &EnvLayer,
    problems: &mut Vec<Problem>,
) -> Option<RawConfig> {
    let mut reader = Reader {
        env,
        problems,
        failed: false,
    };
    let mut raw = RawConfig::default();
    let empty = Dict::new();
    let root = match merged {
        Value::Dict(_, root) => root,
        _ => &empty,
    };
    for (key, value) in root {
        match key.as_str() {
            "server" => raw.server = reader.read(value, key),
            "upstream" => raw.upstream = reader.read(value, key),
            "auth" => raw.auth = Some(reader.read(value, key)),
            "credentials" => raw.credentials = reader.read_each_entry(value, key),
            "route" => raw.route = reader.read_each_element(value, key),
            "access" => raw.access = reader.read(value, key),
            "log" => raw.log = reader.read(value, key),
            "store" => raw.store = reader.read(value, key),
            "idempotency" => raw.idempotency = reader.read(value, key),
            "tracing" => raw.tracing = reader.read(value, key),
            _ => reader
                .problems
                .push(Problem::new(key.as_str(), "unknown key")),
        }
    }
    (!reader.failed).then_some(raw)
}

struct Reader<'a> {
    env: &'a EnvLayer,
    problems: &'a mut Vec<Problem>,
    failed: bool,
}

impl Reader<'_> {
    /// Reads `value`, found at the user-facing key `at`, as a `T`.
    fn read<T: for<'de> Deserialize<'de> + Default>(&mut self, value: &Value, at: &str) -> T {
        let mut unknown = Vec::new();
        let result = serde_ignored::deserialize(value, |path| unknown.push(dotted(&path)));
        for key in unknown {
            self.problems
                .push(Problem::new(join(at, &key), "unknown key"));
        }
        match result {
            Ok(read) => read,
            Err(errors) => {
                self.failed = true;
                for error in errors {
                    let key = join(at, &dotted_segments(&error.path));
                    let mut message = error.kind.to_string();
                    let set_as = key.split('[').next().unwrap_or(&key);
                    if let Some(var) = self.env.source_of(set_as) {
                        message.push_str(&format!(" (from {var})"));
                    }
                    self.problems.push(Problem::new(key, message));
                }
                T::default()
            }
        }
    }

    /// Reads a table of tables (`[credentials.NAME]`) entry by entry.
    fn read_each_entry<T: for<'de> Deserialize<'de> + Default>(
        &mut self,
        value: &Value,
        at: &str,
    ) -> BTreeMap<String, T> {
        match value {
            Value::Dict(_, entries) => entries
                .iter()
                .map(|(name, entry)| (name.clone(), self.read(entry, &format!("{at}.{name}"))))
                .collect(),
            _ => self.read(value, at),
        }
    }

    /// Reads an array of tables (`[[route]]`) element by element.
    fn read_each_element<T: for<'de> Deserialize<'de> + Default>(
        &mut self,
        value: &Value,
        at: &str,
    ) -> Vec<T> {
        match value {
            Value::Array(_, elements) => elements
                .iter()
                .enumerate()
                .map(|(index, element)| self.read(element, &format!("{at}[{index}]")))
                .collect(),
            _ => self.read(value, at),
        }
    }
}

/// `at` followed by the relative key `key`, which may start with a list index.
fn join(at: &str, key: &str) -> String {
    if key.is_empty() {
        at.to_owned()
    } else if key.starts_with('[') {
        format!("{at}{key}")
    } else {
        format!("{at}.{key}")
    }
}

/// A `serde_ignored` path as the user writes it: `auth.pasword`, `route[0].nme`.
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    let mut out = String::new();
    write_path(path, &mut out);
    out
}

fn write_path(path: &serde_ignored::Path<'_>, out: &mut String) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            write_path(parent, out);
            out.push_str(&format!("[{index}]"));
        }
        Path::Map { parent, key } => {
            write_path(parent, out);
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => {
            write_path(parent, out);
        }
    }
}

/// A figment error path (relative to a section) as the user writes it; indexes of
/// the lists below sections (`allow`, `methods`) in brackets.
fn dotted_segments(path: &[String]) -> String {
    let mut out = String::new();
    let mut previous: Option<&str> = None;
    for segment in path {
        let after_list = matches!(previous, Some("allow" | "methods"));
        if after_list && segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
        previous = Some(segment);
    }
    out
}
