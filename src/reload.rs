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
use std::time::{Duration, SystemTime};

use crate::access::ClientKeys;
use crate::config::{CredentialSource, SecretSource};
use crate::task::BackgroundTask;
use crate::telemetry;
use crate::token::Registry;
use crate::token::store::Store;

/// How often watched files are looked at (their metadata; the content only when it
/// changed): well within the 5 s in which a rotated file must take effect.
pub(crate) const WATCH_POLL: Duration = Duration::from_secs(1);

/// Everything whose secret files can be re-read.
#[derive(Debug, Clone)]
pub(crate) struct Reloader {
    credentials: Registry,
    /// Static credentials' token files, by credential name.
    token_files: Vec<(String, PathBuf)>,
    /// Session credentials' password files (for the `SIGHUP` log line).
    password_files: Vec<PathBuf>,
    keys: Option<ClientKeys>,
    /// Re-reads its own key file and `url_file`.
    store: Store,
}

impl Reloader {
    pub(crate) fn new(
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
        Self {
            credentials,
            token_files,
            password_files,
            keys,
            store,
        }
    }

    /// `SIGHUP`: re-reads every secret file now, in one pass, and says so in one log
    /// line.
    pub(crate) fn reload_all(&self) {
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
        read.extend(
            self.store
                .reload()
                .iter()
                .map(|path| path.display().to_string()),
        );
        tracing::info!(files = ?read, "SIGHUP: secret files re-read");
        telemetry::secret_files_reloaded("sighup");
    }

    /// Watches every `token_file` and the `access.keys_file`; a change takes effect
    /// within [`WATCH_POLL`]. `None` when there is nothing to watch.
    pub(crate) fn watch_files(&self) -> Option<BackgroundTask> {
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
