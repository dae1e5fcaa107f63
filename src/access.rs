//! Who may come in and where: the path safety check, inbound client keys and the
//! path allowlist.
//!
//! Paths are never rewritten: a path that is not already in normal form (dot
//! segments, encoded slashes, doubled slashes...) is refused with 400, so the path the
//! allowlist checked is byte for byte the path the upstream receives.

use http::Method;

use crate::config::{AccessConfig, AllowRule};
use crate::error::ProxyError;
use crate::route::prefix_matches;

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
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (index, segment) in segments.iter().enumerate() {
        if segment.is_empty() && index != last {
            return refuse("the path must not contain an empty segment (//)");
        }
        if is_dot_segment(segment) {
            return refuse("the path must not contain . or .. segments");
        }
    }
    Ok(())
}

fn is_dot_segment(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    let decoded = lower.replace("%2e", ".");
    decoded == "." || decoded == ".."
}

/// The allowlist and (later) inbound keys.
#[derive(Debug, Default)]
pub struct Access {
    allow: Vec<AllowRule>,
}

impl Access {
    pub fn new(config: &AccessConfig) -> Self {
        Self {
            allow: config.allow.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_pass() {
        for path in [
            "/",
            "/_rest/v4/app/sms/send",
            "/a/b/",
            "/a/file%2ejson",
            "/a/%41",
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
        });
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
}
