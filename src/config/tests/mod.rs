//! Unit tests of loading, layering, validation and redaction. Hermetic: variables are
//! passed to [`load`] as a list, files live in temporary directories.
//!
//! One file a concern, in the order of the configuration reference; the helpers they
//! share are in this file.

mod access_log;
mod credentials;
mod egress;
mod examples;
mod layering;
mod redaction;
mod routes;
mod server_upstream;
mod tracing;
mod unknown_keys;
mod variable_table;

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::*;

const PASSWORD: &str = "s3cret-Pass-Zq9";
const TOKEN: &str = "static-Token-Xw7";

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn login() -> Vec<(&'static str, &'static str)> {
    vec![
        ("IPPROXY_AUTH__USERNAME", "api-user"),
        ("IPPROXY_AUTH__PASSWORD", PASSWORD),
    ]
}

/// A temporary directory holding files for one test.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        Self(tempfile::tempdir().expect("a temporary directory"))
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, content).expect("write a test file");
        path
    }

    fn missing(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// Loads `toml` as the file, with `extra` variables over it.
fn load_toml(toml: &str, extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let files = Files::new();
    let path = files.write("ipproxy.toml", toml);
    load(Some(&path), vars(extra))
}

/// `toml` plus a valid `[auth]` section.
fn with_auth(toml: &str) -> String {
    format!("[auth]\nusername = \"api-user\"\npassword = \"{PASSWORD}\"\n{toml}")
}

fn keys(error: &ConfigError) -> Vec<&str> {
    error.problems().iter().map(|p| p.key.as_str()).collect()
}

#[track_caller]
fn expect_problem(result: Result<Config, ConfigError>, key: &str) -> ConfigError {
    let error = result.expect_err("the configuration should be refused");
    assert!(
        keys(&error).contains(&key),
        "expected a problem at {key}, got:\n{error}"
    );
    let text = error.to_string();
    assert!(
        !text.contains(PASSWORD) && !text.contains(TOKEN),
        "a secret leaked:\n{text}"
    );
    error
}

#[track_caller]
fn expect_ok(result: Result<Config, ConfigError>) -> Config {
    match result {
        Ok(config) => config,
        Err(error) => panic!("the configuration should load, got:\n{error}"),
    }
}

fn password_of(config: &Config, name: &str) -> String {
    match &config.credentials[name].source {
        CredentialSource::Session { password, .. } => secret_text(password),
        CredentialSource::Static(_) => panic!("{name} is not a session credential"),
    }
}

/// A secret's value, read from its file when it has one.
fn secret_text(source: &SecretSource) -> String {
    match source {
        SecretSource::Inline(secret) => secret.expose_secret().to_owned(),
        SecretSource::File(path) => crate::secret::read_secret(path)
            .expect("a readable secret file")
            .expose_secret()
            .to_owned(),
    }
}
