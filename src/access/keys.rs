//! Inbound client keys: `access.keys_file` holds SHA-256 hex digests of client keys; a
//! client sends `Proxy-Authorization: Bearer <key>`. The presented key is hashed and
//! compared with every stored digest in constant time. The file is re-read every
//! [`KEYS_FILE_POLL`] (rotation without a restart); the digest set sits in an
//! `ArcSwap`, so the request path takes no lock.
//!
//! Must not: log, count or echo a presented key or a line of the keys file (an operator
//! may paste a raw key there by mistake).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::AccessError;
use crate::error::ProxyError;
use crate::task::BackgroundTask;

/// How often the keys file is re-read: a rotated key works (and a revoked one stops
/// working) within this time, at the cost of one small read.
pub const KEYS_FILE_POLL: Duration = Duration::from_secs(2);

/// Largest keys file read, in bytes: about 15 000 digests, far more than any
/// deployment has callers; a larger file is a mistake (wrong path), not a key list.
const MAX_KEYS_FILE: u64 = 1024 * 1024;

/// The key of a `Bearer` credential (scheme case-insensitive, RFC 9110 §11.1).
fn bearer_key(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let (scheme, key) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let key = key.trim_ascii();
    (!key.is_empty()).then_some(key)
}

/// The SHA-256 digest of one client key. `Debug` prints `***`: the digest of a short
/// key can be reversed by brute force.
#[derive(Clone, Copy, PartialEq, Eq)]
struct KeyDigest([u8; 32]);

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("***")
    }
}

/// The digests currently accepted.
#[derive(Debug, PartialEq, Eq)]
struct KeySet(Vec<KeyDigest>);

impl KeySet {
    /// Hashes `key` and compares it with every digest in constant time, without
    /// stopping at the first match, so the time taken says nothing about the set.
    fn contains_key(&self, key: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(key).into();
        let mut found = Choice::from(0);
        for stored in &self.0 {
            found |= stored.0.ct_eq(&presented);
        }
        found.into()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// The keys file and the digests it held when last read successfully.
#[derive(Debug)]
struct KeyStore {
    path: PathBuf,
    digests: ArcSwap<KeySet>,
}

/// The accepted client keys, shared with the task that re-reads their file.
#[derive(Debug)]
pub(super) struct ClientKeys(Arc<KeyStore>);

impl ClientKeys {
    /// Reads the keys file; one with no digest at all is refused.
    pub(super) fn load(path: &Path) -> Result<Self, AccessError> {
        let digests = parse_digests(path, &read_keys_file(path)?)?;
        if digests.is_empty() {
            return Err(AccessError::Empty {
                path: path.display().to_string(),
            });
        }
        Ok(Self(Arc::new(KeyStore {
            path: path.to_owned(),
            digests: ArcSwap::from_pointee(digests),
        })))
    }

    /// Missing, repeated, malformed or unknown key → `407`.
    pub(super) fn check(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        let mut values = headers.get_all(header::PROXY_AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(ProxyError::ProxyAuthRequired);
        };
        let Some(key) = bearer_key(value.as_bytes()) else {
            return Err(ProxyError::ProxyAuthRequired);
        };
        if self.0.digests.load().contains_key(key) {
            Ok(())
        } else {
            Err(ProxyError::ProxyAuthRequired)
        }
    }

    /// Starts re-reading the file every [`KEYS_FILE_POLL`].
    pub(super) fn watch(&self) -> BackgroundTask {
        BackgroundTask::spawn(watch_keys_file(Arc::clone(&self.0)))
    }
}

/// Reads the keys file, refusing one over [`MAX_KEYS_FILE`].
fn read_keys_file(path: &Path) -> Result<Vec<u8>, AccessError> {
    use std::io::Read;
    let read_error = |error: std::io::Error| AccessError::Read {
        path: path.display().to_string(),
        reason: error.to_string(),
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut content = Vec::new();
    file.take(MAX_KEYS_FILE + 1)
        .read_to_end(&mut content)
        .map_err(read_error)?;
    if content.len() as u64 > MAX_KEYS_FILE {
        return Err(AccessError::TooLarge {
            path: path.display().to_string(),
            max: MAX_KEYS_FILE,
        });
    }
    Ok(content)
}

/// One digest a line (64 hex digits, either case, surrounding white space ignored);
/// blank lines and lines starting with `#` are skipped.
fn parse_digests(path: &Path, content: &[u8]) -> Result<KeySet, AccessError> {
    let mut digests = Vec::new();
    for (index, line) in content.split(|byte| *byte == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let mut digest = [0u8; 32];
        if hex::decode_to_slice(line, &mut digest).is_err() {
            return Err(AccessError::Malformed {
                path: path.display().to_string(),
                line: index + 1,
            });
        }
        digests.push(KeyDigest(digest));
    }
    Ok(KeySet(digests))
}

/// Re-reads the keys file every [`KEYS_FILE_POLL`] and stores its digests when they
/// changed. A file that cannot be read or has a malformed line leaves the current set
/// in place (a rotation caught half-written must not lock everyone out) and is
/// reported once, not every poll. A file with no digest left is taken as it is:
/// emptying the file is how an operator revokes every key.
async fn watch_keys_file(store: Arc<KeyStore>) {
    let mut interval = tokio::time::interval(KEYS_FILE_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; `Access::new` has just read the file.
    interval.tick().await;
    let mut last_problem: Option<String> = None;
    loop {
        interval.tick().await;
        let path = store.path.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            read_keys_file(&path).and_then(|content| parse_digests(&path, &content))
        })
        .await;
        let digests = match outcome {
            Ok(Ok(digests)) => digests,
            Ok(Err(error)) => {
                let problem = error.to_string();
                if last_problem.as_ref() != Some(&problem) {
                    tracing::warn!(cause = %problem, "keeping the previous client keys");
                    last_problem = Some(problem);
                }
                continue;
            }
            // The blocking task panicked or was cancelled: try again next tick.
            Err(_) => continue,
        };
        last_problem = None;
        if **store.digests.load() == digests {
            continue;
        }
        if digests.is_empty() {
            tracing::warn!(
                file = %store.path.display(),
                "access.keys_file holds no key digest: every request gets 407"
            );
        } else {
            tracing::info!(
                file = %store.path.display(),
                keys = digests.len(),
                "client keys reloaded"
            );
        }
        store.digests.store(Arc::new(digests));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Access;
    use crate::config::AccessConfig;
    use proptest::prelude::*;

    const KEY: &str = "client-key-one";

    fn digest_line(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    fn keys_access(content: &str) -> (tempfile::TempDir, PathBuf, Result<Access, AccessError>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys");
        std::fs::write(&path, content).expect("write keys");
        let access = Access::new(&AccessConfig {
            keys_file: Some(path.clone()),
            allow: vec![],
        });
        (dir, path, access)
    }

    fn with_authorization(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::PROXY_AUTHORIZATION,
                http::HeaderValue::from_str(value).expect("test header value"),
            );
        }
        headers
    }

    #[test]
    fn keys_file_with_comments_and_blank_lines_accepts_its_keys_only() {
        let content = format!(
            "# app one\n{}\n\n  {}  \r\n# end\n",
            digest_line(KEY),
            digest_line("second-key").to_uppercase()
        );
        let (_dir, _path, access) = keys_access(&content);
        let access = access.expect("valid keys file");
        let check = |values: &[&str]| access.check_key(&with_authorization(values)).is_ok();
        assert!(check(&[&format!("Bearer {KEY}")]));
        assert!(check(&[&format!("bearer  {KEY} ")]));
        assert!(check(&["Bearer second-key"]));
        assert!(!check(&[]), "missing");
        assert!(!check(&["Bearer wrong"]));
        assert!(!check(&[KEY]), "no scheme");
        assert!(!check(&[&format!("Basic {KEY}")]));
        assert!(!check(&["Bearer "]));
        assert!(!check(&["Bearer"]));
        assert!(
            !check(&[&format!("Bearer {KEY}"), &format!("Bearer {KEY}")]),
            "repeated header"
        );
        let digest = digest_line(KEY);
        assert!(
            !check(&[&format!("Bearer {digest}")]),
            "the digest is not a key"
        );
    }

    #[test]
    fn without_keys_file_every_caller_is_let_in() {
        let access = Access::new(&AccessConfig::default()).expect("no keys file");
        assert!(access.check_key(&HeaderMap::new()).is_ok());
        assert!(access.watch_keys_file().is_none());
    }

    #[test]
    fn malformed_line_is_named_by_number_never_by_content() {
        let pasted_key = "sk_live_this_is_a_raw_key_not_a_digest";
        let content = format!("# ok\n{}\n{pasted_key}\n", digest_line(KEY));
        let (_dir, path, access) = keys_access(&content);
        let message = access.expect_err("malformed line").to_string();
        assert!(message.contains("access.keys_file"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("line 3"), "{message}");
        assert!(!message.contains(pasted_key), "{message}");
        for bad in [
            "abc",
            &digest_line(KEY)[..63],
            &format!("{}0", digest_line(KEY)),
        ] {
            let (_dir, _path, access) = keys_access(bad);
            assert!(
                matches!(access, Err(AccessError::Malformed { line: 1, .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn empty_or_missing_keys_file_fails_at_startup() {
        let (_dir, _path, access) = keys_access("# nobody yet\n\n");
        assert!(matches!(access, Err(AccessError::Empty { .. })));
        let missing = Access::new(&AccessConfig {
            keys_file: Some(PathBuf::from("/nonexistent/ipproxy-keys")),
            allow: vec![],
        });
        let message = missing.expect_err("missing file").to_string();
        assert!(
            message.starts_with("access.keys_file /nonexistent/ipproxy-keys"),
            "{message}"
        );
    }

    #[test]
    fn digests_never_show_in_debug_output() {
        let (_dir, _path, access) = keys_access(&digest_line(KEY));
        let debug = format!("{:?}", access.expect("valid keys file"));
        assert!(!debug.contains(&digest_line(KEY)), "{debug}");
        assert!(debug.contains("***"), "{debug}");
    }

    #[tokio::test(start_paused = true)]
    async fn rotation_is_picked_up_and_a_broken_file_keeps_the_old_keys() {
        let (_dir, path, access) = keys_access(&digest_line(KEY));
        let access = access.expect("valid keys file");
        let _watch = access.watch_keys_file().expect("a keys file to watch");
        let accepts = |key: &str| {
            access
                .check_key(&with_authorization(&[&format!("Bearer {key}")]))
                .is_ok()
        };
        // Lets the watcher run one poll (its file read runs on a blocking thread,
        // which paused time does not wait for, hence the short real sleeps).
        async fn poll_once() {
            tokio::time::advance(KEYS_FILE_POLL).await;
            for _ in 0..50 {
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_millis(2));
            }
        }

        std::fs::write(&path, format!("{}\n", digest_line("new-key"))).expect("rotate");
        let mut rotated = false;
        for _ in 0..20 {
            poll_once().await;
            if accepts("new-key") {
                rotated = true;
                break;
            }
        }
        assert!(rotated, "the new key is accepted after a poll");
        assert!(!accepts(KEY), "the old key is revoked");

        std::fs::write(&path, "not a digest\n").expect("break the file");
        for _ in 0..3 {
            poll_once().await;
        }
        assert!(
            accepts("new-key"),
            "a malformed file keeps the previous keys"
        );

        std::fs::write(&path, "# every key revoked\n").expect("empty the file");
        let mut revoked = false;
        for _ in 0..20 {
            poll_once().await;
            if !accepts("new-key") {
                revoked = true;
                break;
            }
        }
        assert!(revoked, "an emptied file revokes every key");
    }

    proptest! {
        #[test]
        fn bearer_parsing_never_panics(value in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = bearer_key(&value);
        }
    }
}
