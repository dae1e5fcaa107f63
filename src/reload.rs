//! Secrets change without restarts: the one file watcher (a `token_file` or
//! `access.keys_file` that changes takes effect within [`WATCH_POLL`]) and `SIGHUP`
//! (every secret file re-read at once).
//!
//! A `password_file` is not watched: it is read at every login. On `SIGHUP` a session
//! credential with no valid token or a changed password logs in now, the store's keys
//! are re-read, and a changed `store.url_file` makes the store reconnect. Nothing here
//! restarts anything or touches a connection; a file that has become unreadable keeps
//! its last good value, with an error naming the file. Log lines name files, never
//! their contents.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::access::ClientKeys;
use crate::config::{CredentialSource, RedisStoreConfig, SecretSource, StoreConfig};
use crate::secret::SecretFile;
use crate::task::BackgroundTask;
use crate::telemetry;
use crate::token::Registry;
use crate::token::store::{self, Store};

/// How often watched files are looked at (their metadata; the content only when it
/// changed): well within the 5 s in which a rotated file must take effect.
pub const WATCH_POLL: Duration = Duration::from_secs(1);

/// Everything whose secret files can be re-read.
#[derive(Debug, Clone)]
pub struct Reloader {
    credentials: Registry,
    /// Static credentials' token files, by credential name.
    token_files: Vec<(String, PathBuf)>,
    /// Session credentials' password files (for the `SIGHUP` log line).
    password_files: Vec<PathBuf>,
    keys: Option<ClientKeys>,
    store: Store,
    store_files: Option<RedisStoreConfig>,
    /// The store's `url_file`, when the URL comes from one (its content at start-up
    /// is its first value).
    store_url: Option<Arc<SecretFile>>,
}

impl Reloader {
    pub fn new(
        config: &crate::config::Config,
        credentials: Registry,
        keys: Option<ClientKeys>,
        store: Store,
    ) -> Self {
        let mut token_files = Vec::new();
        let mut password_files = Vec::new();
        for credential in credentials.iter() {
            match &config.credentials[credential.name()].source {
                CredentialSource::Static(SecretSource::File(path)) => {
                    token_files.push((credential.name().to_owned(), path.clone()));
                }
                CredentialSource::Session {
                    password: SecretSource::File(path),
                    ..
                } => password_files.push(path.clone()),
                _ => {}
            }
        }
        let store_files = match &config.store {
            StoreConfig::Redis(redis) => Some(redis.clone()),
            StoreConfig::Memory => None,
        };
        let store_url = store_files.as_ref().and_then(|redis| match &redis.url {
            SecretSource::File(path) => {
                let file = SecretFile::new(path.clone());
                // Remember the value the store was built with.
                let _ = file.current();
                Some(Arc::new(file))
            }
            SecretSource::Inline(_) => None,
        });
        Self {
            credentials,
            token_files,
            password_files,
            keys,
            store,
            store_files,
            store_url,
        }
    }

    /// `SIGHUP`: re-reads every secret file now, in one pass, and says so in one log
    /// line.
    pub fn reload_all(&self) {
        let mut read: Vec<String> = Vec::new();
        for credential in self.credentials.iter() {
            credential.reload();
        }
        read.extend(
            self.password_files
                .iter()
                .map(|path| path.display().to_string()),
        );
        read.extend(
            self.token_files
                .iter()
                .map(|(_, path)| path.display().to_string()),
        );
        if let Some(keys) = &self.keys {
            keys.reload();
            read.push(keys.path().display().to_string());
        }
        if let Some(redis) = &self.store_files {
            match store::read_sealer(&redis.key_file) {
                Ok(sealer) => self.store.replace_keys(sealer),
                Err(error) => tracing::error!(
                    cause = %error,
                    "keeping the token store's previous keys"
                ),
            }
            read.push(redis.key_file.display().to_string());
            if let Some(url_file) = &self.store_url {
                read.push(url_file.path().display().to_string());
                self.reconnect_if_changed(redis, url_file);
            }
        }
        tracing::info!(files = ?read, "SIGHUP: secret files re-read");
        telemetry::secret_files_reloaded("sighup");
    }

    /// A changed `store.url_file`: the store reconnects to the new URL (operations
    /// under way finish on the old connection).
    fn reconnect_if_changed(&self, redis: &RedisStoreConfig, url_file: &SecretFile) {
        let current = match url_file.current() {
            Ok(current) => current,
            Err(error) => {
                tracing::error!(cause = %error, "keeping the token store's connection");
                return;
            }
        };
        if !current.changed {
            return;
        }
        match store::redis_backend(redis, current.secret) {
            Ok(backend) => {
                self.store.replace_backend(backend);
                tracing::info!(
                    file = %url_file.path().display(),
                    "store.url_file changed: the token store reconnects to the new URL"
                );
            }
            Err(error) => tracing::error!(
                cause = %error,
                "the new store URL is not usable: keeping the token store's connection"
            ),
        }
    }

    /// Watches every `token_file` and the `access.keys_file`; a change takes effect
    /// within [`WATCH_POLL`]. `None` when there is nothing to watch.
    pub fn watch_files(&self) -> Option<BackgroundTask> {
        let mut watched: Vec<Watched> = Vec::new();
        for (name, path) in &self.token_files {
            if let Some(credential) = self.credentials.get(name).cloned() {
                watched.push(Watched::new(
                    path.clone(),
                    Box::new(move || {
                        credential.reload();
                    }),
                ));
            }
        }
        if let Some(keys) = self.keys.clone() {
            watched.push(Watched::new(
                keys.path().to_owned(),
                Box::new(move || {
                    keys.reload();
                }),
            ));
        }
        if watched.is_empty() {
            return None;
        }
        Some(BackgroundTask::spawn(watch_files(watched)))
    }
}

/// What identifies a file's content without reading it: a rewrite or a Kubernetes
/// Secret update (a symlink swap) changes one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Signature {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Signature {
    fn of(path: &std::path::Path) -> Option<Self> {
        let metadata = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Self {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode,
        })
    }
}

struct Watched {
    path: PathBuf,
    seen: Option<Signature>,
    on_change: Box<dyn Fn() + Send + Sync>,
}

impl Watched {
    fn new(path: PathBuf, on_change: Box<dyn Fn() + Send + Sync>) -> Self {
        Self {
            seen: Signature::of(&path),
            path,
            on_change,
        }
    }
}

/// Polls the files every [`WATCH_POLL`] (on a blocking thread: file system calls) and
/// runs the reload of each one that changed.
async fn watch_files(mut watched: Vec<Watched>) {
    let mut interval = tokio::time::interval(WATCH_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let polled = tokio::task::spawn_blocking(move || {
            let mut changed = false;
            for file in &mut watched {
                let now = Signature::of(&file.path);
                if now != file.seen {
                    file.seen = now;
                    (file.on_change)();
                    changed = true;
                }
            }
            (watched, changed)
        })
        .await;
        let Ok((files, changed)) = polled else {
            // A reload panicked: nothing sensible is left to watch.
            tracing::error!("the file watcher stopped");
            return;
        };
        watched = files;
        if changed {
            telemetry::secret_files_reloaded("file_changed");
        }
    }
}
