//! The route table: the longest matching path prefix decides the upstream, the
//! credential and the header the token goes in.
//!
//! Built once from the validated config; lookups are a scan over a handful of
//! prefixes, longest first, matching on whole path segments.

use std::sync::Arc;

use bytes::Bytes;
use http::uri::{Authority, InvalidUri, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Uri};
use url::Url;

use crate::config::Config;
use crate::telemetry::RouteMetrics;
use crate::token::{Credential, FormatId, Registry};

/// One route, resolved: everything the proxy needs to forward a matching request.
#[derive(Debug)]
pub struct Route {
    /// The `route` label in logs and metrics.
    pub name: Arc<str>,
    pub prefix: String,
    /// Scheme, authority and base path (without a trailing `/`) of the target.
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    pub credential: Credential,
    /// `Host` for the upstream (host, and port when not the scheme's default), built
    /// once instead of per request.
    pub host: HeaderValue,
    /// Header the token goes in.
    pub header: HeaderName,
    /// Which of the credential's prebuilt header values this route sends.
    pub format: FormatId,
    pub strip_prefix: bool,
    pub metrics: RouteMetrics,
}

impl Route {
    /// The upstream URI for a client's path (already checked to be safe) and query,
    /// taken as it is, without normalisation: the path sent is the path that was
    /// checked. Scheme and authority are shared with the route; only the path is new.
    pub fn upstream_uri(&self, path: &str, query: Option<&str>) -> Result<Uri, InvalidUri> {
        let forwarded = if self.strip_prefix {
            path.strip_prefix(self.prefix.trim_end_matches('/'))
                .unwrap_or(path)
        } else {
            path
        };
        let mut text = String::with_capacity(
            self.base_path.len() + forwarded.len() + query.map_or(0, |query| query.len() + 2),
        );
        text.push_str(&self.base_path);
        if !forwarded.starts_with('/') {
            text.push('/');
        }
        text.push_str(forwarded);
        if let Some(query) = query {
            text.push('?');
            text.push_str(query);
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(text))?);
        Ok(Uri::from_parts(parts).expect("scheme, authority and path are all set"))
    }
}

impl Route {
    /// [`Route::upstream_uri`] for a client's request target. When the route adds no
    /// base path and strips no prefix, the upstream path is the client's, byte for
    /// byte: its bytes are shared (a reference count), not copied.
    pub fn upstream_uri_for(&self, inbound: &Uri) -> Result<Uri, InvalidUri> {
        let (path, query) = (inbound.path(), inbound.query());
        if let Some(same) = inbound.path_and_query()
            && self.base_path.is_empty()
            && !self.strip_prefix
            && path.starts_with('/')
            && same.as_str().len() == path.len() + query.map_or(0, |query| query.len() + 1)
        {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
            parts.path_and_query = Some(same.clone());
            return Ok(Uri::from_parts(parts).expect("scheme, authority and path are all set"));
        }
        self.upstream_uri(path, query)
    }
}

/// Scheme, authority and base path of an upstream URL; validation made sure it parses
/// as an HTTP URI with a host.
fn split_upstream(url: &Url) -> (Scheme, Authority, String) {
    let uri = Uri::try_from(url.as_str()).expect("validated: upstream URLs are HTTP URIs");
    let parts = uri.into_parts();
    let base_path = parts
        .path_and_query
        .as_ref()
        .map_or("", PathAndQuery::path)
        .trim_end_matches('/')
        .to_owned();
    (
        parts
            .scheme
            .expect("validated: upstream URLs have a scheme"),
        parts
            .authority
            .expect("validated: upstream URLs have a host"),
        base_path,
    )
}

/// `prefix` matches `path` on a segment boundary (`/a/b` matches `/a/b` and `/a/b/c`,
/// not `/a/bc`; `/a/` matches everything under `/a/`).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// All routes, longest prefix first.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Resolves the configured routes, each with its token handle from `credentials`.
    pub fn build(config: &Config, credentials: &Registry) -> Self {
        let mut routes: Vec<Route> = config
            .routes
            .iter()
            .map(|route| {
                let credential_config = &config.credentials[&route.credential];
                let format = route.format.as_ref().unwrap_or(&credential_config.format);
                let token = credentials
                    .route_token(&route.credential, format)
                    .expect("the registry is built from the same routes");
                let (scheme, authority, base_path) = split_upstream(&route.upstream);
                Route {
                    name: Arc::from(route.name.as_str()),
                    prefix: route.prefix.clone(),
                    host: HeaderValue::from_str(authority.as_str())
                        .expect("an authority is a valid header value"),
                    scheme,
                    authority,
                    base_path,
                    credential: token.credential,
                    header: route
                        .header
                        .clone()
                        .unwrap_or_else(|| credential_config.header.clone()),
                    format: token.format,
                    strip_prefix: route.strip_prefix,
                    metrics: RouteMetrics::new(&route.name),
                }
            })
            .collect();
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Self { routes }
    }

    /// The route with the longest prefix matching `path` on segment boundaries.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| prefix_matches(&route.prefix, path))
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
            let (scheme, found, base_path) = split_upstream(&Url::parse(url).expect("test url"));
            assert_eq!(scheme.as_str(), &url[..url.find(':').expect("scheme")]);
            assert_eq!(found.as_str(), authority, "{url}");
            assert_eq!(base_path, base, "{url}");
        }
    }

    fn route(upstream: &str, prefix: &str, strip_prefix: bool) -> Route {
        let (scheme, authority, base_path) =
            split_upstream(&Url::parse(upstream).expect("test url"));
        let config = crate::config::load(
            None,
            [
                ("IPPROXY_AUTH__KIND", "static"),
                ("IPPROXY_AUTH__TOKEN", "t"),
            ]
            .map(|(key, value)| (key.to_owned(), value.to_owned())),
        )
        .expect("config");
        let store = crate::token::store::Store::from_config(&config.store).expect("store");
        let login: std::sync::Arc<dyn crate::token::LoginTransport> =
            crate::proxy::build_login_client(&config.upstream).expect("login client");
        let registry = Registry::build(&config, &login, &store);
        let mut table = RouteTable::build(&config, &registry);
        let mut route = table.routes.remove(0);
        route.scheme = scheme;
        route.authority = authority;
        route.base_path = base_path;
        route.prefix = prefix.to_owned();
        route.strip_prefix = strip_prefix;
        route
    }

    #[test]
    fn the_shared_upstream_path_is_the_built_one() {
        let targets = [
            "/_rest/v4/app/sms/send",
            "/_rest/v4/my/did?from=1555&to=1666",
            "/rest/v1/lists/?",
            "/a%20b?q=%2F",
            "http://client.example/x/y?z",
        ];
        for (upstream, prefix, strip) in [
            ("https://api.intelepeer.com", "/", false),
            ("https://api.intelepeer.com/base/", "/", false),
            ("https://api.intelepeer.com", "/_rest/v4/", true),
        ] {
            let route = route(upstream, prefix, strip);
            for target in targets {
                let inbound: Uri = target.parse().expect("target");
                let built = route
                    .upstream_uri(inbound.path(), inbound.query())
                    .expect("built");
                assert_eq!(
                    route.upstream_uri_for(&inbound).expect("shared"),
                    built,
                    "{upstream} {target}"
                );
            }
        }
    }
}
