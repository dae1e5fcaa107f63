//! Inbound client keys: `access.keys_file` holds SHA-256 hex digests of client keys,
//! one caller a line, each optionally followed by a space and the caller's name
//! (`<hex> billing`); a client sends `Proxy-Authorization: Bearer <key>`. The
//! presented key is hashed and compared with every stored digest in constant time;
//! the matched line is the request's [`Caller`] (its name in the log line, its
//! identity for idempotency keys). The file is re-read when it
//! changes and on `SIGHUP` (rotation without a restart, see `reload`); the digest
//! set sits in an `ArcSwap`, so the request path takes no lock.
//!
//! Must not: log, count or echo a presented key or a line of the keys file (an operator
//! may paste a raw key there by mistake).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable as _, ConstantTimeEq};

use super::AccessError;
use crate::error::ProxyError;
use crate::secret;

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

/// Longest caller name: a label in a log line, not a place for text.
const MAX_CALLER_NAME: usize = 64;

/// Who sent a request: the `keys_file` line its key matched, or, without a keys file,
/// everyone (the one caller `-`). Cheap to clone (a reference count for a name).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The line's name, when it has one.
    name: Option<Arc<str>>,
    /// The line's digest; `None` without a keys file.
    digest: Option<KeyDigest>,
}

impl Caller {
    /// The name for the log line: the line's name, or `-`.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("-")
    }

    /// What tells this caller apart from every other, for scoping idempotency keys:
    /// the name when the line has one (so a rotated key keeps its caller's answers),
    /// otherwise the line's digest; empty for the one caller without a keys file.
    pub fn identity(&self) -> (&[u8], &[u8]) {
        match (&self.name, &self.digest) {
            (Some(name), _) => (b"name", name.as_bytes()),
            (None, Some(digest)) => (b"digest", &digest.0),
            (None, None) => (b"anyone", b""),
        }
    }

    /// A named caller (for tests of the crate).
    #[cfg(test)]
    pub(crate) fn named(name: &str) -> Self {
        Self {
            name: Some(Arc::from(name)),
            digest: None,
        }
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Caller({})", self.name())
    }
}

/// One line of the keys file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyLine {
    digest: KeyDigest,
    name: Option<Arc<str>>,
}

/// The lines currently accepted.
#[derive(Debug, PartialEq, Eq)]
struct KeySet(Vec<KeyLine>);

impl KeySet {
    /// Hashes `key` and compares it with every digest in constant time, without
    /// stopping at the first match, so the time taken says nothing about the set;
    /// the caller of the (last) matching line.
    fn caller_of(&self, key: &[u8]) -> Option<Caller> {
        let presented: [u8; 32] = Sha256::digest(key).into();
        let mut found = Choice::from(0);
        // One more than the matching line's index; 0: none.
        let mut matched = 0u32;
        for (index, stored) in self.0.iter().enumerate() {
            let equal = stored.digest.0.ct_eq(&presented);
            found |= equal;
            let position = u32::try_from(index + 1).unwrap_or(u32::MAX);
            matched.conditional_assign(&position, equal);
        }
        if !bool::from(found) {
            return None;
        }
        let line = self.0.get(matched as usize - 1)?;
        Some(Caller {
            name: line.name.clone(),
            digest: Some(line.digest),
        })
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The accepted client keys: the keys file and the digests it held when last read
/// successfully. A cheap handle, shared with the reloads.
#[derive(Debug, Clone)]
pub struct ClientKeys(Arc<KeyStore>);

#[derive(Debug)]
struct KeyStore {
    path: PathBuf,
    digests: ArcSwap<KeySet>,
    /// The last problem reported, so a file that stays broken is reported once.
    last_problem: Mutex<Option<String>>,
}

impl ClientKeys {
    /// Reads the keys file; one with no digest at all is refused.
    pub(super) fn load(path: &Path) -> Result<Self, AccessError> {
        let digests = read_digests(path)?;
        if digests.is_empty() {
            return Err(AccessError::Empty {
                path: path.display().to_string(),
            });
        }
        Ok(Self(Arc::new(KeyStore {
            path: path.to_owned(),
            digests: ArcSwap::from_pointee(digests),
            last_problem: Mutex::new(None),
        })))
    }

    /// The keys file.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// The caller whose key the request carries. Missing, repeated, malformed or
    /// unknown key → `407`.
    pub(super) fn check(&self, headers: &HeaderMap) -> Result<Caller, ProxyError> {
        let mut values = headers.get_all(header::PROXY_AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(ProxyError::ProxyAuthRequired);
        };
        let Some(key) = bearer_key(value.as_bytes()) else {
            return Err(ProxyError::ProxyAuthRequired);
        };
        self.0
            .digests
            .load()
            .caller_of(key)
            .ok_or(ProxyError::ProxyAuthRequired)
    }

    /// Reads the file again and takes its digests when they changed; returns whether
    /// they did. A file that cannot be read or has a malformed line leaves the current
    /// set in place (a rotation caught half-written must not lock everyone out),
    /// reported once. A file with no digest left is taken as it is: emptying the file
    /// is how an operator revokes every key.
    pub fn reload(&self) -> bool {
        let store = &self.0;
        let mut last_problem = store
            .last_problem
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let digests = match read_digests(&store.path) {
            Ok(digests) => digests,
            Err(error) => {
                let problem = error.to_string();
                if last_problem.as_ref() != Some(&problem) {
                    tracing::error!(cause = %problem, "keeping the previous client keys");
                    *last_problem = Some(problem);
                }
                return false;
            }
        };
        *last_problem = None;
        if **store.digests.load() == digests {
            return false;
        }
        if digests.is_empty() {
            tracing::warn!(
                file = %store.path.display(),
                "access.keys_file holds no key digest: every request gets 407"
            );
        } else {
            tracing::info!(
                file = %store.path.display(),
                keys = digests.0.len(),
                "client keys reloaded"
            );
        }
        store.digests.store(Arc::new(digests));
        true
    }
}

/// Reads and parses the keys file (at most [`MAX_KEYS_FILE`] bytes).
fn read_digests(path: &Path) -> Result<KeySet, AccessError> {
    let text = secret::read_text(path, MAX_KEYS_FILE)
        .map_err(|error| AccessError::File(error.to_string()))?;
    parse_digests(path, &text)
}

/// One caller a line: 64 hex digits (either case), then optionally white space and a
/// name of 1 to 64 characters of `A-Z a-z 0-9 . _ -`; surrounding white space is
/// ignored, blank lines and lines starting with `#` are skipped.
fn parse_digests(path: &Path, content: &str) -> Result<KeySet, AccessError> {
    let mut lines = Vec::new();
    for (index, line) in content.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let malformed = || AccessError::Malformed {
            path: path.display().to_string(),
            line: index + 1,
        };
        let (hex_digits, name) = match line.split_once([' ', '\t']) {
            Some((hex_digits, name)) => (hex_digits, Some(name.trim())),
            None => (line, None),
        };
        let mut digest = [0u8; 32];
        if hex::decode_to_slice(hex_digits, &mut digest).is_err() {
            return Err(malformed());
        }
        if let Some(name) = name
            && !is_caller_name(name)
        {
            return Err(malformed());
        }
        lines.push(KeyLine {
            digest: KeyDigest(digest),
            name: name.map(Arc::from),
        });
    }
    Ok(KeySet(lines))
}

/// Whether `name` may name a caller in `access.keys_file`: it goes in a log line as
/// it is, so it cannot forge one.
pub fn is_caller_name(name: &str) -> bool {
    (1..=MAX_CALLER_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
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
            ..AccessConfig::default()
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
    fn a_line_may_name_its_caller_and_unnamed_lines_keep_working() {
        let content = format!(
            "{} billing\n{}\t  ops-team.eu_1 \n{}\n",
            digest_line(KEY),
            digest_line("second-key"),
            digest_line("third-key")
        );
        let (_dir, _path, access) = keys_access(&content);
        let access = access.expect("valid keys file");
        let caller = |key: &str| {
            access
                .check_key(&with_authorization(&[&format!("Bearer {key}")]))
                .expect("a known key")
        };
        assert_eq!(caller(KEY).name(), "billing");
        assert_eq!(caller("second-key").name(), "ops-team.eu_1");
        assert_eq!(caller("third-key").name(), "-");
        assert_ne!(
            caller("third-key").identity(),
            Caller::default().identity(),
            "an unnamed line is still its own caller"
        );
        assert_ne!(caller(KEY).identity(), caller("second-key").identity());
        assert!(
            access
                .check_key(&with_authorization(&["Bearer nobody"]))
                .is_err()
        );
        for bad in [
            format!("{} two words", digest_line(KEY)),
            format!("{} {}", digest_line(KEY), "n".repeat(65)),
            format!("{} caller\u{1b}[31m", digest_line(KEY)),
            format!("{} name=\"x\"", digest_line(KEY)),
        ] {
            let (_dir, _path, access) = keys_access(&bad);
            assert!(
                matches!(access, Err(AccessError::Malformed { line: 1, .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn without_keys_file_every_caller_is_let_in() {
        let access = Access::new(&AccessConfig::default()).expect("no keys file");
        assert!(access.check_key(&HeaderMap::new()).is_ok());
        assert!(access.keys().is_none());
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
            ..AccessConfig::default()
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

    #[test]
    fn a_keys_file_over_a_mebibyte_is_refused_naming_it() {
        let line = format!("{}\n", digest_line(KEY));
        let content = line.repeat((MAX_KEYS_FILE as usize) / line.len() + 1);
        let (_dir, path, access) = keys_access(&content);
        let message = access.expect_err("too large").to_string();
        assert!(message.contains("larger than 1048576 bytes"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        let fits = line.repeat((MAX_KEYS_FILE as usize) / line.len());
        let (_dir, _path, access) = keys_access(&fits);
        assert!(access.is_ok(), "a file of just under 1 MiB is read");
    }

    #[test]
    fn a_reload_takes_a_rotated_file_and_a_broken_one_keeps_the_old_keys() {
        let (_dir, path, access) = keys_access(&digest_line(KEY));
        let access = access.expect("valid keys file");
        let keys = access.keys().expect("a keys file");
        let accepts = |key: &str| {
            access
                .check_key(&with_authorization(&[&format!("Bearer {key}")]))
                .is_ok()
        };
        assert!(!keys.reload(), "nothing changed");

        std::fs::write(&path, format!("{}\n", digest_line("new-key"))).expect("rotate");
        assert!(keys.reload(), "the rotated file is taken");
        assert!(accepts("new-key"), "the new key is accepted");
        assert!(!accepts(KEY), "the old key is revoked");

        std::fs::write(&path, "not a digest\n").expect("break the file");
        assert!(!keys.reload());
        assert!(
            accepts("new-key"),
            "a malformed file keeps the previous keys"
        );
        std::fs::remove_file(&path).expect("remove the file");
        assert!(!keys.reload());
        assert!(accepts("new-key"), "a missing file keeps the previous keys");

        std::fs::write(&path, "# every key revoked\n").expect("empty the file");
        assert!(keys.reload());
        assert!(!accepts("new-key"), "an emptied file revokes every key");
    }

    proptest! {
        #[test]
        fn bearer_parsing_never_panics(value in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = bearer_key(&value);
        }
    }
}
