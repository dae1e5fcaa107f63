//! Where IntelePeer-bound connections leave the network: `upstream.proxy` (or
//! `upstream.proxy_file`), else the conventional variables, read the way curl reads
//! them.
//!
//! Resolved at load from the same list of variables as the `IPPROXY_*` ones, so that a
//! test passes them in without touching the process environment. Owns the rules of an
//! egress proxy URL; knows nothing of sockets (the tunnel is `proxy::egress`). No
//! message ever holds a password: a URL is only ever shown as [`EgressProxy::redacted`].

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::Problem;

/// `HTTPS_PROXY` in curl's order: the lower-case name first, then the upper-case one.
const HTTPS_PROXY_VARS: [&str; 2] = ["https_proxy", "HTTPS_PROXY"];
/// Lower case only, as curl: a CGI-style server turns a request's `Proxy:` header into
/// `HTTP_PROXY` ("httpoxy"), so the upper-case name cannot be trusted.
const HTTP_PROXY_VARS: [&str; 1] = ["http_proxy"];
/// `NO_PROXY` in curl's order: the lower-case name first.
const NO_PROXY_VARS: [&str; 2] = ["no_proxy", "NO_PROXY"];

/// Whether `name` is one of the conventional proxy variables that configure egress
/// (not `HTTP_PROXY`, see [`HTTP_PROXY_VARS`]).
pub(super) fn is_egress_var(name: &str) -> bool {
    HTTPS_PROXY_VARS
        .iter()
        .chain(&HTTP_PROXY_VARS)
        .chain(&NO_PROXY_VARS)
        .any(|var| *var == name)
}

/// How connections to IntelePeer (forwarding and logins) leave the network. The
/// default is direct. Nothing else (a store, a trace collector) uses it.
#[derive(Debug, Clone, Default)]
pub struct EgressConfig {
    /// The proxy that `https` targets are tunnelled through.
    pub https: Option<EgressProxy>,
    /// The proxy that plain-`http` targets are tunnelled through.
    pub http: Option<EgressProxy>,
    /// Hosts reached directly although a proxy is set (only from the variables).
    pub no_proxy: Option<NoProxyList>,
}

impl EgressConfig {
    /// True when no connection goes through a proxy.
    pub fn is_direct(&self) -> bool {
        self.https.is_none() && self.http.is_none()
    }

    /// True when the proxy was set by `upstream.proxy` or `upstream.proxy_file` (as
    /// opposed to the variables).
    pub fn is_from_the_configuration(&self) -> bool {
        [&self.https, &self.http]
            .into_iter()
            .flatten()
            .any(|proxy| proxy.source.starts_with("upstream."))
    }
}

/// The `NO_PROXY`/`no_proxy` list as given: host names, domain suffixes (with or
/// without a leading dot), IP addresses, CIDR blocks, or `*` for every host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoProxyList {
    /// The comma-separated entries, as the variable held them.
    pub entries: String,
    /// The variable that held them.
    pub source: &'static str,
}

/// An HTTP forward proxy: `http://[user:password@]host:port`.
#[derive(Clone)]
pub struct EgressProxy {
    /// The whole URL, credentials included (percent-encoded as in the URL). Only the
    /// tunnel reads it, to build the `Proxy-Authorization` header.
    url: SecretString,
    /// `host:port` (IPv6 in brackets): what logs and errors name.
    pub address: String,
    /// The URL with the password shown as `***`.
    pub redacted: String,
    /// The key or variable that set it (`upstream.proxy`, `HTTPS_PROXY`, …).
    pub source: String,
}

impl EgressProxy {
    /// Parses an egress proxy URL set by `source`. A URL without a scheme is taken as
    /// `http://` when `scheme_optional` (curl's rule for the variables). The error
    /// never repeats the text: it may hold a password.
    pub fn parse(text: &str, source: &str, scheme_optional: bool) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("is empty".to_owned());
        }
        let with_scheme;
        let text = if scheme_optional && !text.contains("://") {
            with_scheme = format!("http://{text}");
            with_scheme.as_str()
        } else {
            text
        };
        let url = Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(
                    "TLS to the egress proxy (https://) is not supported; give its \
                            http:// address (HTTPS targets are still tunnelled with TLS end to end)"
                        .to_owned(),
                );
            }
            _ => {
                return Err(
                    "the scheme must be http:// (an HTTP proxy that accepts CONNECT)".to_owned(),
                );
            }
        }
        let host = match url.host_str() {
            Some(host) if !host.is_empty() => host.to_owned(),
            _ => return Err("it needs a host".to_owned()),
        };
        // The URL parser drops a port equal to the scheme's default, so an explicit
        // `:80` is looked for in the text itself.
        let port = url
            .port()
            .or_else(|| explicit_default_port(text))
            .ok_or_else(|| "it needs a port, such as http://proxy.example:3128".to_owned())?;
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(
                "it must hold only http://, an optional user:password@, a host and a port"
                    .to_owned(),
            );
        }
        let address = format!("{host}:{port}");
        let (userinfo, redacted_userinfo) = match (url.username(), url.password()) {
            ("", None) => (String::new(), String::new()),
            (user, None) => (format!("{user}@"), format!("{user}@")),
            (user, Some(password)) => (format!("{user}:{password}@"), format!("{user}:***@")),
        };
        Ok(Self {
            url: SecretString::from(format!("http://{userinfo}{address}")),
            redacted: format!("http://{redacted_userinfo}{address}"),
            address,
            source: source.to_owned(),
        })
    }

    /// The URL with its credentials: for the `Proxy-Authorization` header only.
    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }
}

impl fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressProxy")
            .field("url", &self.redacted)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// `Some(80)` when the authority of `text` (an `http://` URL) ends in `:80`.
fn explicit_default_port(text: &str) -> Option<u16> {
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host_and_port = authority.rsplit('@').next().unwrap_or(authority);
    host_and_port.ends_with(":80").then_some(80)
}

/// The egress setting: `explicit` (`upstream.proxy`, or the content of
/// `upstream.proxy_file`, with the key that gave it) for every target when given;
/// otherwise the conventional variables among `vars`. An empty variable counts as
/// unset, as in curl. Problems name the key or variable.
pub(super) fn resolve(
    explicit: Option<(&str, SecretString)>,
    vars: &[(String, String)],
    problems: &mut Vec<Problem>,
) -> EgressConfig {
    if let Some((key, text)) = explicit {
        return match EgressProxy::parse(text.expose_secret(), key, false) {
            Ok(proxy) => EgressConfig {
                https: Some(proxy.clone()),
                http: Some(proxy),
                no_proxy: None,
            },
            Err(message) => {
                problems.push(Problem::new(key, message));
                EgressConfig::default()
            }
        };
    }
    let first_set = |names: &[&'static str]| {
        names.iter().find_map(|name| {
            vars.iter()
                .find(|(var, value)| var == name && !value.trim().is_empty())
                .map(|(_, value)| (*name, value.as_str()))
        })
    };
    let mut proxy_from = |names: &[&'static str]| {
        let (name, value) = first_set(names)?;
        EgressProxy::parse(value, name, true)
            .map_err(|message| problems.push(Problem::new(name, message)))
            .ok()
    };
    let https = proxy_from(&HTTPS_PROXY_VARS);
    let http = proxy_from(&HTTP_PROXY_VARS);
    let no_proxy = first_set(&NO_PROXY_VARS).map(|(source, entries)| NoProxyList {
        entries: entries.to_owned(),
        source,
    });
    EgressConfig {
        https,
        http,
        no_proxy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn parse(text: &str) -> Result<EgressProxy, String> {
        EgressProxy::parse(text, "upstream.proxy", false)
    }

    #[test]
    fn a_proxy_url_with_credentials_is_shown_with_the_password_as_stars() {
        let proxy = parse("http://egress-user:s3cr%40t@proxy.corp.example:3128").expect("valid");
        assert_eq!(proxy.address, "proxy.corp.example:3128");
        assert_eq!(
            proxy.redacted,
            "http://egress-user:***@proxy.corp.example:3128"
        );
        assert_eq!(proxy.to_string(), proxy.redacted);
        assert!(!format!("{proxy:?}").contains("s3cr"));
        assert_eq!(
            proxy.url(),
            "http://egress-user:s3cr%40t@proxy.corp.example:3128"
        );
    }

    #[test]
    fn a_proxy_url_without_credentials_or_with_a_trailing_slash_is_accepted() {
        let proxy = parse("http://10.0.0.1:8080/").expect("valid");
        assert_eq!(proxy.address, "10.0.0.1:8080");
        assert_eq!(proxy.redacted, "http://10.0.0.1:8080");
        let proxy = parse("http://[::1]:3128").expect("valid");
        assert_eq!(proxy.address, "[::1]:3128");
        let proxy = parse("http://proxy:80").expect("an explicit :80 counts");
        assert_eq!(proxy.address, "proxy:80");
        let proxy = parse("http://only-user@proxy:3128").expect("valid");
        assert_eq!(proxy.redacted, "http://only-user@proxy:3128");
    }

    #[test]
    fn bad_proxy_urls_are_refused_without_echoing_them() {
        let cases = [
            ("", "is empty"),
            ("https://u:hunter2@proxy:3128", "not supported"),
            ("socks5://u:hunter2@proxy:1080", "scheme must be http"),
            ("http://u:hunter2@proxy", "needs a port"),
            ("http://u:hunter2@proxy:3128/path", "only http://"),
            ("http://u:hunter2@proxy:3128?x=1", "only http://"),
            ("proxy:3128", "scheme must be http"),
            ("http://u:hunter2@:3128", "not a URL"),
        ];
        for (text, expected) in cases {
            let message = parse(text).expect_err(text);
            assert!(message.contains(expected), "{text}: {message}");
            assert!(!message.contains("hunter2"), "{text}: {message}");
        }
    }

    #[test]
    fn a_variable_without_a_scheme_is_taken_as_http_as_curl_does() {
        let proxy = EgressProxy::parse("proxy.corp:3128", "HTTPS_PROXY", true).expect("valid");
        assert_eq!(proxy.redacted, "http://proxy.corp:3128");
        assert_eq!(proxy.source, "HTTPS_PROXY");
    }

    #[test]
    fn the_explicit_proxy_serves_both_schemes_and_the_variables_are_ignored() {
        let mut problems = Vec::new();
        let egress = resolve(
            Some(("upstream.proxy", SecretString::from("http://proxy:3128"))),
            &vars(&[("HTTPS_PROXY", "http://other:1"), ("NO_PROXY", "*")]),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(egress.https.expect("https").address, "proxy:3128");
        assert_eq!(egress.http.expect("http").address, "proxy:3128");
        assert_eq!(egress.no_proxy, None);
    }

    #[test]
    fn lower_case_variables_win_and_upper_case_http_proxy_is_ignored() {
        let mut problems = Vec::new();
        let egress = resolve(
            None,
            &vars(&[
                ("HTTPS_PROXY", "http://upper:1"),
                ("https_proxy", "http://lower:2"),
                ("HTTP_PROXY", "http://httpoxy:3"),
                ("NO_PROXY", "upper.example"),
                ("no_proxy", "lower.example"),
            ]),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let https = egress.https.expect("https");
        assert_eq!(https.address, "lower:2");
        assert_eq!(https.source, "https_proxy");
        assert!(egress.http.is_none(), "HTTP_PROXY is never read");
        let no_proxy = egress.no_proxy.expect("no_proxy");
        assert_eq!(no_proxy.entries, "lower.example");
        assert_eq!(no_proxy.source, "no_proxy");
        assert!(!is_egress_var("HTTP_PROXY"));
    }

    #[test]
    fn an_empty_variable_counts_as_unset() {
        let mut problems = Vec::new();
        let egress = resolve(
            None,
            &vars(&[
                ("https_proxy", ""),
                ("HTTPS_PROXY", "http://upper:1"),
                ("http_proxy", " "),
            ]),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(egress.https.expect("https").address, "upper:1");
        assert!(egress.http.is_none());
    }

    #[test]
    fn a_bad_variable_is_a_problem_named_by_the_variable() {
        let mut problems = Vec::new();
        resolve(
            None,
            &vars(&[("HTTPS_PROXY", "socks5://u:hunter2@proxy:1080")]),
            &mut problems,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "HTTPS_PROXY");
        assert!(!problems[0].message.contains("hunter2"));
    }
}
