//! The path form check: a path that is not already in normal form (dot segments,
//! encoded slashes, doubled slashes...) is refused with 400, never rewritten, so the
//! path the allowlist checked is byte for byte the path the upstream receives.

use crate::error::ProxyError;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::prefix_matches;
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
    }
}
