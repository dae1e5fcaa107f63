//! The store's files: its key file and its URL (inline or a `url_file`), read at
//! start-up and re-read on SIGHUP ([`super::Store::reload`]).
//!
//! A key file that became unreadable keeps the previous keys; a changed `url_file`
//! makes the store reconnect (operations under way finish on the old connection); an
//! unusable new URL keeps the old connection. Each is logged, never with a secret.

use std::path::PathBuf;

use secrecy::SecretString;

use super::{Backend, RedisBackend, RedisSettings, Sealer, StoreConfigError};
use crate::config::{RedisStoreConfig, SecretSource};
use crate::secret::SecretFile;

/// A Redis store's configuration and the `url_file` it was built from, if any.
#[derive(Debug)]
pub(super) struct StoreFiles {
    redis: RedisStoreConfig,
    /// Read once at start-up, so that its first value counts as unchanged.
    url_file: Option<SecretFile>,
}

/// What a reload asks of the store.
pub(super) struct Reloaded {
    pub sealer: Option<Sealer>,
    pub backend: Option<Box<dyn Backend>>,
    /// The files read, for the SIGHUP log line.
    pub read: Vec<PathBuf>,
}

impl StoreFiles {
    /// Reads the key file and the URL for `redis`: the store's first keys and
    /// backend.
    pub(super) fn open(
        redis: &RedisStoreConfig,
    ) -> Result<(Self, Sealer, Box<dyn Backend>), StoreConfigError> {
        let sealer = read_sealer(&redis.key_file)?;
        let (url, url_file) = match &redis.url {
            SecretSource::Inline(url) => (url.clone(), None),
            SecretSource::File(path) => {
                let file = SecretFile::new(path.clone());
                let url = file
                    .current()
                    .map_err(|error| StoreConfigError::UrlFile(error.to_string()))?
                    .secret;
                (url, Some(file))
            }
        };
        let backend = redis_backend(redis, url)?;
        let files = Self {
            redis: redis.clone(),
            url_file,
        };
        Ok((files, sealer, backend))
    }

    /// Re-reads the key file and the `url_file`: new keys when they could be read, a
    /// new backend when the URL changed and is usable.
    pub(super) fn reload(&self) -> Reloaded {
        let mut read = vec![self.redis.key_file.clone()];
        let sealer = read_sealer(&self.redis.key_file)
            .inspect_err(|error| {
                tracing::error!(cause = %error, "keeping the token store's previous keys");
            })
            .ok();
        let backend = self.url_file.as_ref().and_then(|url_file| {
            read.push(url_file.path().to_owned());
            self.reconnect_if_changed(url_file)
        });
        Reloaded {
            sealer,
            backend,
            read,
        }
    }

    fn reconnect_if_changed(&self, url_file: &SecretFile) -> Option<Box<dyn Backend>> {
        let current = url_file
            .current()
            .inspect_err(|error| {
                tracing::error!(cause = %error, "keeping the token store's connection");
            })
            .ok()?;
        if !current.changed {
            return None;
        }
        match redis_backend(&self.redis, current.secret) {
            Ok(backend) => {
                tracing::info!(
                    file = %url_file.path().display(),
                    "store.url_file changed: the token store reconnects to the new URL"
                );
                Some(backend)
            }
            Err(error) => {
                tracing::error!(
                    cause = %error,
                    "the new store URL is not usable: keeping the token store's connection"
                );
                None
            }
        }
    }
}

/// A Redis backend for `redis` at `url`.
fn redis_backend(
    redis: &RedisStoreConfig,
    url: SecretString,
) -> Result<Box<dyn Backend>, StoreConfigError> {
    let backend = RedisBackend::connect_lazily(&RedisSettings {
        url,
        ca_file: redis.ca_file.clone(),
        timeout: redis.timeout,
    })
    .map_err(|error| StoreConfigError::Url(error.message))?;
    Ok(Box::new(backend))
}

/// The keys of a store key file.
fn read_sealer(path: &std::path::Path) -> Result<Sealer, StoreConfigError> {
    let text = crate::secret::read_text(path, crate::secret::MAX_SECRET_FILE)
        .map_err(|error| StoreConfigError::KeyFile(error.to_string()))?;
    Sealer::from_key_lines(&text)
        .map_err(|error| StoreConfigError::KeyFile(format!("{}: {error}", path.display())))
}
