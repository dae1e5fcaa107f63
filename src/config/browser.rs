//! `access.allow_origins` and `access.allow_hosts`: the browser origins whose pages may
//! use the proxy port, and the host names it answers to besides its own. Parsed into
//! canonical forms here so that the request path compares bytes, never re-parses.
//!
//! Must not: accept a value that could match more than the operator wrote (no
//! wildcards, no `null` origin, no path).

use std::fmt;
use std::net::IpAddr;

use url::Url;

/// One entry of `access.allow_origins`: a browser origin, `scheme://host[:port]`, in
/// the exact form a browser sends in `Origin` (lower-case, no default port, no path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin(String);

impl AllowedOrigin {
    /// Parses `text`. A value a browser would send differently (upper case, the
    /// default port, a trailing `/`) is refused with the form to write instead, so
    /// that the list means exactly what it says.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "null" || text.contains('*') {
            return Err(format!(
                "{text:?} names no single origin (no wildcards; `null` is sent by sandboxed \
                 pages and files, whoever they are): list origins such as \
                 \"http://localhost:5173\""
            ));
        }
        let url = Url::parse(text).map_err(|error| {
            format!("{text:?} is not an origin such as \"https://app.example.com\" ({error})")
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{text:?}: the scheme must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            // Not quoted: user info may be a password.
            return Err("an origin has no user info (user:password@)".to_owned());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{text:?}: an origin has no path, query or fragment"
            ));
        }
        let canonical = url.origin().ascii_serialization();
        // `Url` adds the root path; anything else is a path the browser never sends.
        if text != canonical {
            return Err(format!(
                "{text:?} is not written as a browser sends it in Origin: write {canonical:?} \
                 (scheme://host[:port], lower case, no default port, no path)"
            ));
        }
        Ok(Self(canonical))
    }

    /// The origin as browsers serialize it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of `access.allow_hosts`: a host name (lower case, without a trailing dot)
/// or an IP address, without a port: requests naming it are answered on any port,
/// since port mappings (a published container port, a Service port, a port-forward)
/// change the port a client names but not who owns the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHost {
    Name(String),
    Address(IpAddr),
}

impl AllowedHost {
    /// Parses `text`: `ipproxy.prod.svc`, `10.0.0.5`, `[fd00::5]` or `fd00::5`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let unbracketed = text
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(address) = unbracketed.parse::<IpAddr>() {
            return Ok(Self::Address(address));
        }
        if text.contains("://") || text.contains('/') {
            return Err(format!(
                "{text:?} is not a host name: write the name alone, such as \
                 \"ipproxy.prod.svc\" (no scheme, no path)"
            ));
        }
        if text.contains(':') {
            return Err(format!(
                "{text:?}: write the host without a port (every port is accepted: port \
                 mappings change it)"
            ));
        }
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(format!(
                "{text:?} is not a host name (letters, digits, - and _ in dot-separated \
                 labels; no wildcards)"
            ));
        }
        Ok(Self::Name(name))
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::Address(address) => write!(f, "{address}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_kept_as_browsers_send_them() {
        for origin in [
            "http://localhost:5173",
            "https://app.example.com",
            "http://127.0.0.1:3000",
            "http://[::1]:8000",
            "https://app.example.com:8443",
        ] {
            let parsed = AllowedOrigin::parse(origin).expect(origin);
            assert_eq!(parsed.as_str(), origin);
        }
    }

    #[test]
    fn origins_a_browser_would_write_otherwise_are_refused_with_the_form_to_use() {
        for (origin, hint) in [
            ("http://localhost:5173/", "\"http://localhost:5173\""),
            ("HTTP://App.Example.com", "\"http://app.example.com\""),
            ("https://app.example.com:443", "\"https://app.example.com\""),
            ("http://app.example.com/path", "\"http://app.example.com\""),
        ] {
            let error = AllowedOrigin::parse(origin).expect_err(origin);
            assert!(error.contains(hint), "{origin}: {error}");
        }
    }

    #[test]
    fn values_that_name_no_single_origin_are_refused() {
        for origin in [
            "null",
            "*",
            "",
            "localhost:5173",
            "app.example.com",
            "ftp://files.example.com",
            "file:///home/me/page.html",
            "http://app.example.com?x=1",
            "http://app.example.com#top",
            "http://*.example.com",
        ] {
            assert!(AllowedOrigin::parse(origin).is_err(), "{origin}");
        }
        let error =
            AllowedOrigin::parse("http://user:hunter2@app.example.com").expect_err("userinfo");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn hosts_are_names_or_addresses_without_a_port() {
        assert_eq!(
            AllowedHost::parse("IPProxy.Prod.svc.").expect("a name"),
            AllowedHost::Name("ipproxy.prod.svc".to_owned())
        );
        assert_eq!(
            AllowedHost::parse("lb").expect("a name"),
            AllowedHost::Name("lb".to_owned())
        );
        assert_eq!(
            AllowedHost::parse("10.0.0.5").expect("an address"),
            AllowedHost::Address("10.0.0.5".parse().expect("ip"))
        );
        for v6 in ["[fd00::5]", "fd00::5"] {
            assert_eq!(
                AllowedHost::parse(v6).expect("an address"),
                AllowedHost::Address("fd00::5".parse().expect("ip"))
            );
        }
        for (bad, hint) in [
            ("ipproxy:8080", "without a port"),
            ("http://ipproxy", "no scheme"),
            ("ipproxy/x", "no scheme"),
            ("*.example.com", "no wildcards"),
            ("", "not a host name"),
            ("a..b", "not a host name"),
            ("-a.example", "not a host name"),
            ("a b", "not a host name"),
        ] {
            let error = AllowedHost::parse(bad).expect_err(bad);
            assert!(error.contains(hint), "{bad}: {error}");
        }
    }
}
