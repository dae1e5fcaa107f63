//! Primitive parsers: one value of text → one typed value, or a sentence saying what
//! is wrong with it. No key names and no defaults here (the section rules in
//! `validate` add those); messages quote a value only when it cannot be a secret.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Uri};
use url::Url;

use super::raw::RawSize;
use super::{HeaderFormat, RoutePrefix, UpstreamTarget};

/// Headers the token may not go in: the proxy sets or strips them itself (the
/// hop-by-hop headers, `Host`, `Content-Length`).
const RESERVED_HEADERS: &[&str] = &["host", "content-length"];

/// An IP address and port such as `127.0.0.1:8080`.
pub(super) fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address and port such as \"127.0.0.1:8080\""))
}

/// A duration such as `500ms`, `30s`, `5m` or `24h`.
pub(super) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|error| {
        format!(
            "{text:?} is not a duration such as \"500ms\", \"30s\", \"5m\" or \"24h\" ({error})"
        )
    })
}

/// A size: a number of bytes or text such as `64KiB`.
pub(super) fn size(raw: &RawSize) -> Result<u64, String> {
    match raw {
        RawSize::Bytes(bytes) => Ok(*bytes),
        RawSize::Text(text) => text
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|size| size.as_u64())
            .map_err(|_| {
                format!(
                    "{text:?} is not a size such as \"64KiB\" or \"10MiB\" or a number of bytes"
                )
            }),
    }
}

/// An upstream URL: `http`/`https`, a host, no query, fragment or user info. Not
/// quoted back: user info would be a secret.
pub(super) fn upstream_target(text: &str) -> Result<UpstreamTarget, String> {
    let url = Url::parse(text.trim()).map_err(|error| format!("not a URL: {error}"))?;
    let mut wrong = Vec::new();
    if !matches!(url.scheme(), "http" | "https") {
        wrong.push("the scheme must be http or https");
    }
    if url.host_str().is_none_or(str::is_empty) {
        wrong.push("it needs a host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        wrong.push("it must not hold a user name or password");
    }
    if url.query().is_some() {
        wrong.push("it must not have a query (?...)");
    }
    if url.fragment().is_some() {
        wrong.push("it must not have a fragment (#...)");
    }
    if !wrong.is_empty() {
        return Err(wrong.join("; "));
    }
    // The proxy builds its upstream requests from these parts.
    let parts = Uri::try_from(url.as_str())
        .map_err(|_| "it is not a valid HTTP URI".to_owned())?
        .into_parts();
    let (Some(scheme), Some(authority)) = (parts.scheme, parts.authority) else {
        return Err("it is not a valid HTTP URI".to_owned());
    };
    let base_path = parts
        .path_and_query
        .as_ref()
        .map_or("", PathAndQuery::path)
        .trim_end_matches('/')
        .to_owned();
    let host =
        HeaderValue::from_maybe_shared(Bytes::copy_from_slice(authority.as_str().as_bytes()))
            .map_err(|_| "its host is not a valid Host header".to_owned())?;
    Ok(UpstreamTarget {
        url,
        scheme,
        authority,
        base_path,
        host,
    })
}

/// A path prefix (see [`RoutePrefix`]).
pub(super) fn route_prefix(prefix: &str) -> Result<RoutePrefix, String> {
    let mut wrong = Vec::new();
    if !prefix.starts_with('/') {
        wrong.push("must start with \"/\"");
    }
    if prefix.contains("..") {
        wrong.push("must not contain \"..\"");
    }
    if prefix.contains("//") {
        wrong.push("must not contain \"//\"");
    }
    if prefix.contains('%') {
        wrong.push("must not contain \"%\" (write the path decoded)");
    }
    if prefix.contains(['?', '#']) {
        wrong.push("must not contain \"?\" or \"#\"");
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        wrong.push("must not contain spaces or control characters");
    }
    if wrong.is_empty() {
        Ok(RoutePrefix(prefix.to_owned()))
    } else {
        Err(format!("{prefix:?} {}", wrong.join("; ")))
    }
}

/// A header the token may go in: a valid name the proxy does not set or strip itself.
pub(super) fn header_name(text: &str) -> Result<HeaderName, String> {
    let name = HeaderName::from_bytes(text.trim().as_bytes())
        .map_err(|_| format!("{text:?} is not a valid header name"))?;
    if RESERVED_HEADERS.contains(&name.as_str()) || crate::hop_by_hop::is_hop_by_hop(&name) {
        return Err(format!("{text:?} is set or removed by the proxy itself"));
    }
    Ok(name)
}

/// A header value template holding `{token}` once, the rest valid in a header value.
pub(super) fn header_format(text: &str) -> Result<HeaderFormat, String> {
    let format = HeaderFormat::parse(text).ok_or_else(|| {
        format!(
            "{text:?} must contain {} exactly once",
            HeaderFormat::PLACEHOLDER
        )
    })?;
    let valid = |part: &str| part.is_empty() || HeaderValue::from_str(part).is_ok();
    if !valid(&format.prefix) || !valid(&format.suffix) {
        return Err(format!("{text:?} holds characters a header value cannot"));
    }
    Ok(format)
}

/// The standard methods of RFC 9110 and PATCH, upper-cased; anything else is most
/// likely a typo.
pub(super) fn standard_method(name: &str) -> Option<Method> {
    let method = Method::from_bytes(name.trim().to_ascii_uppercase().as_bytes()).ok()?;
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ]
    .contains(&method)
    .then_some(method)
}

/// A Redis URL: `redis://`, `rediss://` (TLS), `valkey://` or `valkeys://`, with a
/// host. Never quoted back: it may carry a password.
pub(super) fn redis_url(text: &str) -> Result<(), String> {
    let url = Url::parse(text.trim()).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "redis" | "rediss" | "valkey" | "valkeys") {
        return Err(
            "the scheme must be redis://, rediss:// (TLS), valkey:// or valkeys://".to_owned(),
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL needs a host".to_owned());
    }
    Ok(())
}

/// `path` names an existing file.
pub(super) fn existing_file(path: &Path) -> Result<(), String> {
    if path.is_file() {
        Ok(())
    } else {
        Err(format!(
            "{} does not exist or is not a file",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_authority_names_the_port_only_when_not_the_default() {
        for (url, authority, base) in [
            ("https://api.intelepeer.com", "api.intelepeer.com", ""),
            ("https://api.intelepeer.com:443/", "api.intelepeer.com", ""),
            (
                "https://api.intelepeer.com:8443/v/",
                "api.intelepeer.com:8443",
                "/v",
            ),
            ("http://127.0.0.1:8089/a/b", "127.0.0.1:8089", "/a/b"),
            ("http://127.0.0.1:80", "127.0.0.1", ""),
            ("http://[::1]:8089/", "[::1]:8089", ""),
        ] {
            let target = upstream_target(url).expect("a valid upstream");
            assert_eq!(
                target.scheme().as_str(),
                &url[..url.find(':').expect("scheme")]
            );
            assert_eq!(target.authority().as_str(), authority, "{url}");
            assert_eq!(target.host(), authority, "{url}");
            assert_eq!(target.base_path(), base, "{url}");
        }
    }

    #[test]
    fn token_headers_exclude_what_the_proxy_sets_or_strips() {
        for reserved in [
            "Host",
            "content-length",
            "Connection",
            "TE",
            "Upgrade",
            "Proxy-Authorization",
        ] {
            assert!(header_name(reserved).is_err(), "{reserved}");
        }
        assert_eq!(
            header_name(" X-Api-Token ").expect("valid").as_str(),
            "x-api-token"
        );
    }
}
