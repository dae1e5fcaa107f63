//! Checking `[store]`: memory (this replica alone) or Redis (the fleet), with the
//! Redis URL held as a secret, its timings and its key prefix.

use std::path::PathBuf;
use std::time::Duration;

use super::Checker;
use crate::config::defaults::*;
use crate::config::parse;
use crate::config::raw::{RawStore, RawStoreKind};
use crate::config::{RedisStoreConfig, StoreConfig};
use crate::secret;

impl Checker<'_> {
    pub(super) fn store(&mut self, raw: RawStore) -> StoreConfig {
        let kind = raw.kind.unwrap_or(RawStoreKind::Memory);
        if kind == RawStoreKind::Memory {
            let set: Vec<&str> = [
                ("url", raw.url.is_some()),
                ("url_file", raw.url_file.is_some()),
                ("key_file", raw.key_file.is_some()),
                ("ca_file", raw.ca_file.is_some()),
                ("prefix", raw.prefix.is_some()),
                ("timeout", raw.timeout.is_some()),
                ("lock_ttl", raw.lock_ttl.is_some()),
            ]
            .into_iter()
            .filter_map(|(key, set)| set.then_some(key))
            .collect();
            for key in set {
                self.warning(&format!("store.{key}"), "ignored: store.kind is \"memory\"");
            }
            return StoreConfig::Memory;
        }
        let url = self.secret_source(
            "store",
            ("url", raw.url),
            ("url_file", raw.url_file),
            |check, (key, url)| {
                let _ = check.parsed(key, parse::redis_url(url));
            },
        );
        let key_file = match raw.key_file {
            Some(path) => {
                match secret::read_text(&path, secret::MAX_SECRET_FILE) {
                    Ok(text) => {
                        if let Err(error) = secret::parse_keys(&text) {
                            self.problem("store.key_file", format!("{}: {error}", path.display()));
                        }
                    }
                    Err(error) => self.problem("store.key_file", error.to_string()),
                }
                path
            }
            None => {
                self.problem(
                    "store.key_file",
                    "required for kind = \"redis\": a bearer token is never stored in the \
                     clear (make a key with `openssl rand -hex 32`)",
                );
                PathBuf::new()
            }
        };
        if let Some(ca_file) = &raw.ca_file {
            self.existing_file("store.ca_file", ca_file);
        }
        let prefix = raw
            .prefix
            .unwrap_or_else(|| DEFAULT_STORE_PREFIX.to_owned());
        if prefix.is_empty()
            || prefix.contains(['{', '}', ' '])
            || prefix.chars().any(char::is_control)
        {
            self.problem(
                "store.prefix",
                format!(
                    "{prefix:?} must be non-empty, without braces, spaces or control characters"
                ),
            );
        }
        let timeout = self.positive_duration("store.timeout", raw.timeout, DEFAULT_STORE_TIMEOUT);
        let lock_ttl = self.positive_duration("store.lock_ttl", raw.lock_ttl, DEFAULT_LOCK_TTL);
        if lock_ttl < Duration::from_millis(300) {
            self.problem(
                "store.lock_ttl",
                "must be at least 300ms (it is renewed every third of it)",
            );
        }
        StoreConfig::Redis(RedisStoreConfig {
            url,
            key_file,
            ca_file: raw.ca_file,
            prefix,
            timeout,
            lock_ttl,
        })
    }
}
