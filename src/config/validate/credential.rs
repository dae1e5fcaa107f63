//! Checking one credential section (`[auth]`, `[credentials.<name>]`): its kind, the
//! keys that kind allows, and its secrets, each given inline or as a file (the rule
//! for a secret, [`Checker::secret_source`], serves the store's URL too).

use std::path::PathBuf;

use http::{HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use super::Checker;
use crate::config::defaults::*;
use crate::config::raw::{RawCredential, RawKind, RawSecret};
use crate::config::{CredentialConfig, CredentialSource, HeaderFormat, SecretSource};
use crate::secret;

/// Keys that only a session credential has.
const SESSION_ONLY_KEYS: &[&str] = &[
    "url",
    "username",
    "password",
    "password_file",
    "token_ttl",
    "refresh_before",
    "min_reauth_interval",
];
/// Keys that only a static credential has.
const STATIC_ONLY_KEYS: &[&str] = &["token", "token_file"];

impl Checker<'_> {
    pub(super) fn credential(
        &mut self,
        section: &str,
        name: &str,
        raw: RawCredential,
    ) -> CredentialConfig {
        let kind = raw.kind.unwrap_or(RawKind::Session);
        let present = |key: &str| match key {
            "url" => raw.url.is_some(),
            "username" => raw.username.is_some(),
            "password" => raw.password.is_some(),
            "password_file" => raw.password_file.is_some(),
            "token_ttl" => raw.token_ttl.is_some(),
            "refresh_before" => raw.refresh_before.is_some(),
            "min_reauth_interval" => raw.min_reauth_interval.is_some(),
            "token" => raw.token.is_some(),
            "token_file" => raw.token_file.is_some(),
            _ => false,
        };
        let (foreign, own_kind) = match kind {
            RawKind::Session => (STATIC_ONLY_KEYS, "session"),
            RawKind::Static => (SESSION_ONLY_KEYS, "static"),
        };
        // Keys of the other kind are ignored, so that a file written for one kind (the
        // image's, a chart's) can be switched to the other by variables alone.
        let misplaced: Vec<&str> = foreign.iter().copied().filter(|key| present(key)).collect();
        for key in misplaced {
            self.warning(
                &format!("{section}.{key}"),
                format!("ignored: not a key of a kind = \"{own_kind}\" credential"),
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
                let url = self
                    .target(
                        &format!("{section}.url"),
                        raw.url.as_deref(),
                        DEFAULT_AUTH_URL,
                    )
                    .url()
                    .clone();
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
                let password = self.secret_source(
                    section,
                    ("password", raw.password),
                    ("password_file", raw.password_file),
                    |_, _| {},
                );
                CredentialSource::Session {
                    url,
                    username,
                    password,
                }
            }
            RawKind::Static => {
                let token = self.secret_source(
                    section,
                    ("token", raw.token),
                    ("token_file", raw.token_file),
                    |check, (key, token)| check.check_token(key, token, &format),
                );
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
            min_reauth_interval: self.duration(
                &format!("{section}.min_reauth_interval"),
                raw.min_reauth_interval,
                DEFAULT_MIN_REAUTH_INTERVAL,
            ),
            header,
            format,
        }
    }

    /// A secret given as `inline` or as `file` (read now to check it, and again
    /// whenever it is used): exactly one of the two. `check` looks at the value.
    pub(super) fn secret_source(
        &mut self,
        section: &str,
        (inline_key, inline): (&str, Option<RawSecret>),
        (file_key, file): (&str, Option<PathBuf>),
        check: impl FnOnce(&mut Self, (&str, &str)),
    ) -> SecretSource {
        let inline_at = format!("{section}.{inline_key}");
        let file_at = format!("{section}.{file_key}");
        match (inline, file) {
            (Some(secret), None) => {
                if secret.0.expose_secret().is_empty() {
                    self.problem(&inline_at, "is empty");
                } else {
                    check(self, (&inline_at, secret.0.expose_secret()));
                }
                SecretSource::Inline(secret.0)
            }
            (None, Some(path)) => {
                match secret::read_secret(&path) {
                    Ok(secret) => check(self, (&file_at, secret.expose_secret())),
                    Err(error) => self.problem(&file_at, error.to_string()),
                }
                SecretSource::File(path)
            }
            (Some(_), Some(_)) => {
                self.problem(
                    &inline_at,
                    format!("give either {inline_key} or {file_key}, not both"),
                );
                SecretSource::Inline(SecretString::from(""))
            }
            (None, None) => {
                self.problem(
                    &inline_at,
                    format!("required: give {inline_key} or {file_key}"),
                );
                SecretSource::Inline(SecretString::from(""))
            }
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
}
