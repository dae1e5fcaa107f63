//! Who may come in and where: inbound client keys, the path safety check and the path
//! allowlist. The server runs them in that order — key, path form, allowlist — so a
//! caller without a key learns nothing about which paths exist or are allowed.
//!
//! - **Keys**: `access.keys_file` holds SHA-256 hex digests of client keys; a client
//!   sends `Proxy-Authorization: Bearer <key>`. The presented key is hashed and
//!   compared with every stored digest in constant time. The file is re-read every
//!   [`KEYS_FILE_POLL`] (rotation without a restart); the digest set sits in an
//!   `ArcSwap`, so the request path takes no lock.
//! - **Path form**: paths are never rewritten: a path that is not already in normal
//!   form (dot segments, encoded slashes, doubled slashes...) is refused with 400, so
//!   the path the allowlist checked is byte for byte the path the upstream receives.
//!
//! Must not: log, count or echo a presented key or a line of the keys file (an operator
//! may paste a raw key there by mistake).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, Method, header};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::config::{AccessConfig, AllowRule};
use crate::error::ProxyError;
use crate::route::prefix_matches;
use crate::task::BackgroundTask;

/// How often the keys file is re-read: a rotated key works (and a revoked one stops
/// working) within this time, at the cost of one small read.
pub const KEYS_FILE_POLL: Duration = Duration::from_secs(2);

/// Largest keys file read, in bytes: about 15 000 digests, far more than any
/// deployment has callers; a larger file is a mistake (wrong path), not a key list.
const MAX_KEYS_FILE: u64 = 1024 * 1024;

/// Checks that `path` is in normal form: starts with `/`, no empty, `.` or `..`
/// segment (also when percent-encoded), no encoded `/`, `\`, `%` or NUL, no `\`.
pub fn check_path(path: &str) -> Result<(), ProxyError> {
    let refuse = |why| Err(ProxyError::BadRequest(why));
    if !path.starts_with('/') {
        return refuse("the path must start with /");
    }
    if path.contains('\\') {
        return refuse("the path must not contain a backslash");
    }
    let bytes = path.as_bytes();
    for (index, byte) in bytes.iter().enumerate() {
        if *byte == b'%' {
            let Some(hex) = bytes.get(index + 1..index + 3) else {
                return refuse("the path has a broken percent-encoding");
            };
            let decoded = std::str::from_utf8(hex)
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            match decoded {
                None => return refuse("the path has a broken percent-encoding"),
                Some(b'/' | b'\\' | b'%' | 0) => {
                    return refuse("the path must not contain an encoded /, \\, % or NUL");
                }
                Some(_) => {}
            }
        }
    }
    // Skip the leading empty segment; a trailing `/` (empty last segment) is fine.
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return refuse("the path must not contain an empty segment (//)");
        }
        if is_dot_segment(segment) {
            return refuse("the path must not contain . or .. segments");
        }
    }
    Ok(())
}

/// `.` or `..`, each dot written as `.` or `%2e` (either case). Runs on every
/// segment of every request, so it reads the bytes instead of decoding a copy.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return false,
        };
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

/// The inbound checks: client keys (when `access.keys_file` is set) and the allowlist.
#[derive(Debug, Default)]
pub struct Access {
    allow: Vec<AllowRule>,
    /// `None` when no `keys_file` is configured: every caller is let in.
    keys: Option<Arc<KeyStore>>,
}

impl Access {
    /// Takes the allowlist and reads `access.keys_file` once. A file that cannot be
    /// read, has a malformed line, or holds no digest at all is an error: better not
    /// to start than to start letting nobody (or the wrong callers) in.
    pub fn new(config: &AccessConfig) -> Result<Self, AccessError> {
        let keys = match &config.keys_file {
            None => None,
            Some(path) => {
                let digests = parse_digests(path, &read_keys_file(path)?)?;
                if digests.is_empty() {
                    return Err(AccessError::Empty {
                        path: path.display().to_string(),
                    });
                }
                Some(Arc::new(KeyStore {
                    path: path.clone(),
                    digests: ArcSwap::from_pointee(digests),
                }))
            }
        };
        Ok(Self {
            allow: config.allow.clone(),
            keys,
        })
    }

    /// Starts re-reading the keys file every [`KEYS_FILE_POLL`]; `None` without one.
    /// Dropping the guard stops the task.
    pub fn watch_keys_file(&self) -> Option<BackgroundTask> {
        let store = Arc::clone(self.keys.as_ref()?);
        Some(BackgroundTask::spawn(watch_keys_file(store)))
    }

    /// Checks the client key in `Proxy-Authorization: Bearer <key>` when keys are
    /// configured. Missing, repeated, malformed or unknown → `407`.
    pub fn check_key(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        let Some(store) = &self.keys else {
            return Ok(());
        };
        let mut values = headers.get_all(header::PROXY_AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(ProxyError::ProxyAuthRequired);
        };
        let Some(key) = bearer_key(value.as_bytes()) else {
            return Err(ProxyError::ProxyAuthRequired);
        };
        if store.digests.load().contains_key(key) {
            Ok(())
        } else {
            Err(ProxyError::ProxyAuthRequired)
        }
    }

    /// Checks the path allowlist (`path` already passed [`check_path`]).
    pub fn check_allowed(&self, method: &Method, path: &str) -> Result<(), ProxyError> {
        if self.allow.is_empty() {
            return Ok(());
        }
        let allowed = self.allow.iter().any(|rule| {
            prefix_matches(&rule.prefix, path)
                && (rule.methods.is_empty() || rule.methods.contains(method))
        });
        if allowed {
            Ok(())
        } else {
            Err(ProxyError::PathNotAllowed)
        }
    }
}

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

/// Problems with `access.keys_file`. Never carries the content of a line.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("access.keys_file {path}: cannot read it: {reason}")]
    Read { path: String, reason: String },
    #[error("access.keys_file {path}: larger than {MAX_KEYS_FILE} bytes; is it the right file?")]
    TooLarge { path: String },
    #[error(
        "access.keys_file {path} line {line}: not a SHA-256 digest (64 hex digits, one a \
         line; `ipproxy hash-key` makes one from a key)"
    )]
    Malformed { path: String, line: usize },
    #[error("access.keys_file {path}: holds no key digest, so no client could get in")]
    Empty { path: String },
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
    use proptest::prelude::*;

    #[test]
    fn normal_paths_pass() {
        for path in [
            "/",
            "/_rest/v4/app/sms/send",
            "/a/b/",
            "/a/file%2ejson",
            "/a/%41",
            "/a/...",
            "/a/.x",
            "/a/%2e%2e%2e",
            "/a/%2ex",
        ] {
            assert!(check_path(path).is_ok(), "{path}");
        }
    }

    #[test]
    fn tricky_paths_are_refused() {
        for path in [
            "",
            "a/b",
            "/a//b",
            "//a",
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/.%2e",
            "/a/%2E",
            "/a/%2e/",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a%00",
            "/a%25",
            "/a%",
            "/a%zz",
        ] {
            assert!(check_path(path).is_err(), "{path}");
        }
    }

    #[test]
    fn allowlist_matches_on_segments_and_methods() {
        let access = Access::new(&AccessConfig {
            keys_file: None,
            allow: vec![
                AllowRule {
                    prefix: "/_rest/v4/app/sms/".into(),
                    methods: vec![],
                },
                AllowRule {
                    prefix: "/_rest/v4/my".into(),
                    methods: vec![Method::GET],
                },
            ],
        })
        .expect("no keys file to read");
        assert!(
            access
                .check_allowed(&Method::POST, "/_rest/v4/app/sms/send")
                .is_ok()
        );
        assert!(
            access
                .check_allowed(&Method::GET, "/_rest/v4/my/did")
                .is_ok()
        );
        assert!(
            access
                .check_allowed(&Method::POST, "/_rest/v4/my/did")
                .is_err()
        );
        assert!(
            access
                .check_allowed(&Method::GET, "/_rest/v4/mystery")
                .is_err()
        );
        assert!(
            access
                .check_allowed(&Method::GET, "/_rest/v4/app/smsx")
                .is_err()
        );
    }

    // --- inbound keys ---

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

    // --- properties ---

    /// Full percent-decoding (repeated until nothing changes, bounded), with `\` read
    /// as `/` as some servers do: the most generous reading an upstream could make.
    fn decode_fully(path: &str) -> String {
        let mut current = path.as_bytes().to_vec();
        for _ in 0..8 {
            let mut decoded = Vec::with_capacity(current.len());
            let mut index = 0;
            while index < current.len() {
                let hex = current
                    .get(index + 1..index + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match (current[index], hex) {
                    (b'%', Some(byte)) => {
                        decoded.push(byte);
                        index += 3;
                    }
                    (byte, _) => {
                        decoded.push(byte);
                        index += 1;
                    }
                }
            }
            if decoded == current {
                break;
            }
            current = decoded;
        }
        String::from_utf8_lossy(&current).replace('\\', "/")
    }

    /// RFC 3986 §5.2.4 `remove_dot_segments`, followed literally.
    fn remove_dot_segments(path: &str) -> String {
        let mut input = path.to_owned();
        let mut output = String::new();
        while !input.is_empty() {
            if let Some(rest) = input.strip_prefix("../") {
                input = rest.to_owned();
            } else if let Some(rest) = input.strip_prefix("./") {
                input = rest.to_owned();
            } else if input.starts_with("/./") {
                input = input[2..].to_owned();
            } else if input == "/." {
                input = "/".to_owned();
            } else if input.starts_with("/../") || input == "/.." {
                input = format!("/{}", input.get(4..).unwrap_or(""));
                match output.rfind('/') {
                    Some(last) => output.truncate(last),
                    None => output.clear(),
                }
            } else if input == "." || input == ".." {
                input.clear();
            } else {
                let start = usize::from(input.starts_with('/'));
                let end = input[start..]
                    .find('/')
                    .map_or(input.len(), |at| at + start);
                output.push_str(&input[..end]);
                input = input[end..].to_owned();
            }
        }
        output
    }

    #[test]
    fn reference_dot_segment_removal_follows_the_rfc_examples() {
        assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
        assert_eq!(remove_dot_segments("mid/content=5/../6"), "mid/6");
        assert_eq!(remove_dot_segments("/a/.."), "/");
        assert_eq!(remove_dot_segments("/../x"), "/x");
        assert_eq!(decode_fully("/a/%252e%252E/%5cb"), "/a/..//b");
    }

    const PREFIXES: [&str; 4] = ["/", "/a/", "/a/b", "/_rest/v4/app/sms/"];

    /// Path-ish strings from the characters that make traversal tricks.
    fn tricky_tail() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("/"),
                Just("."),
                Just("%"),
                Just("2"),
                Just("e"),
                Just("E"),
                Just("f"),
                Just("F"),
                Just("5"),
                Just("c"),
                Just("\\"),
                Just("a"),
                Just("b"),
                Just(".."),
                Just("%2e"),
                Just("%2f"),
                Just("%5c"),
                Just("%25"),
            ],
            0..16,
        )
        .prop_map(|parts| parts.concat())
    }

    /// Does `prefix` match `path` by whole segments? A model written independently
    /// of [`prefix_matches`]: compare the `/`-separated segment lists.
    fn segment_model(prefix: &str, path: &str) -> bool {
        let prefix_segments: Vec<&str> = prefix.split('/').collect();
        let path_segments: Vec<&str> = path.split('/').collect();
        if prefix.ends_with('/') {
            // "/a/" = the segments before the trailing empty one, then anything more.
            let head = &prefix_segments[..prefix_segments.len() - 1];
            path_segments.len() > head.len() && path_segments.starts_with(head)
        } else {
            path_segments.starts_with(&prefix_segments)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn no_accepted_path_escapes_its_allow_prefix(
            prefix_index in 0..PREFIXES.len(),
            tail in tricky_tail(),
            from_root in any::<bool>(),
        ) {
            let prefix = PREFIXES[prefix_index];
            // Half the cases start at the prefix (to get past it), half anywhere.
            let path = if from_root { format!("/{tail}") } else { format!("{prefix}{tail}") };
            if check_path(&path).is_ok() && prefix_matches(prefix, &path) {
                let resolved = remove_dot_segments(&decode_fully(&path));
                prop_assert!(
                    prefix_matches(prefix, &resolved),
                    "{path} passed, but resolves to {resolved}, outside {prefix}"
                );
                prop_assert!(!resolved.contains('\0'));
            }
        }

        #[test]
        fn check_path_never_panics(path in any::<String>()) {
            let _ = check_path(&path);
        }

        #[test]
        fn check_path_never_panics_on_path_like_input(tail in tricky_tail()) {
            let _ = check_path(&tail);
            let _ = check_path(&format!("/{tail}"));
        }

        #[test]
        fn prefix_matching_agrees_with_the_segment_model(
            prefix in "/[ab/]{0,5}",
            path in "/?[ab/]{0,7}",
        ) {
            prop_assert_eq!(
                prefix_matches(&prefix, &path),
                segment_model(&prefix, &path),
                "prefix {:?} path {:?}", prefix, path
            );
        }

        #[test]
        fn bearer_parsing_never_panics(value in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = bearer_key(&value);
        }
    }
}
