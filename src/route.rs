//! The route table: the longest matching path prefix decides the upstream, the
//! credential and the header the token goes in.
//!
//! Built once from the validated config (whose targets are already parsed into the
//! parts a request is built from) and the token handle of each route; lookups are a
//! scan over a handful of prefixes, longest first, matching on whole path segments.

use std::sync::Arc;

use bytes::Bytes;
use http::uri::{InvalidUri, PathAndQuery};
use http::{HeaderName, HeaderValue, Uri};

use crate::config::{Config, RoutePrefix, UpstreamTarget};
use crate::telemetry::RouteMetrics;
use crate::token::{Credential, FormatId, RouteToken};

/// One route, resolved: everything the proxy needs to forward a matching request.
#[derive(Debug)]
pub struct Route {
    /// The `route` label in logs and metrics.
    pub name: Arc<str>,
    pub prefix: RoutePrefix,
    target: UpstreamTarget,
    pub credential: Credential,
    /// Header the token goes in.
    pub header: HeaderName,
    /// Which of the credential's prebuilt header values this route sends.
    pub format: FormatId,
    pub strip_prefix: bool,
    /// `Idempotency-Key` is honoured on POST and PATCH.
    pub idempotency: bool,
    pub metrics: RouteMetrics,
}

impl Route {
    /// `Host` for the upstream (host, and port when not the scheme's default), built
    /// once instead of per request.
    pub fn host(&self) -> &HeaderValue {
        self.target.host()
    }

    /// The upstream URI for a client's path (already checked to be safe) and query,
    /// taken as it is, without normalisation: the path sent is the path that was
    /// checked. Scheme and authority are shared with the route; only the path is new.
    pub fn upstream_uri(&self, path: &str, query: Option<&str>) -> Result<Uri, InvalidUri> {
        let forwarded = if self.strip_prefix {
            self.prefix.strip(path)
        } else {
            path
        };
        let base_path = self.target.base_path();
        let mut text = String::with_capacity(
            base_path.len() + forwarded.len() + query.map_or(0, |query| query.len() + 2),
        );
        text.push_str(base_path);
        if !forwarded.starts_with('/') {
            text.push('/');
        }
        text.push_str(forwarded);
        if let Some(query) = query {
            text.push('?');
            text.push_str(query);
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.target.scheme().clone());
        parts.authority = Some(self.target.authority().clone());
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
            && self.target.base_path().is_empty()
            && !self.strip_prefix
            && path.starts_with('/')
            && same.as_str().len() == path.len() + query.map_or(0, |query| query.len() + 1)
        {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.target.scheme().clone());
            parts.authority = Some(self.target.authority().clone());
            parts.path_and_query = Some(same.clone());
            return Ok(Uri::from_parts(parts).expect("scheme, authority and path are all set"));
        }
        self.upstream_uri(path, query)
    }
}

/// All routes, longest prefix first; shared, so that an idempotent request's upstream
/// exchange can finish on its own task when its client leaves.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Resolves the configured routes; `tokens` holds each route's token handle, in
    /// the order of `config.routes` (as `token::Registry::build` returns them).
    pub fn build(config: &Config, tokens: Vec<RouteToken>) -> Self {
        let mut routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .zip(tokens)
            .map(|(route, token)| {
                Arc::new(Route {
                    name: Arc::from(route.name.as_str()),
                    prefix: route.prefix.clone(),
                    target: route.upstream.clone(),
                    credential: token.credential,
                    header: token.header,
                    format: token.format,
                    strip_prefix: route.strip_prefix,
                    idempotency: route.idempotency,
                    metrics: RouteMetrics::new(&route.name),
                })
            })
            .collect();
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Self { routes }
    }

    /// The route with the longest prefix matching `path` on segment boundaries.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|route| route.prefix.matches(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Registry;

    fn route(upstream: &str, prefix: &str, strip_prefix: bool) -> Route {
        let config = crate::config::load(
            None,
            [
                ("IPPROXY_AUTH__KIND", "static"),
                ("IPPROXY_AUTH__TOKEN", "t"),
            ]
            .map(|(key, value)| (key.to_owned(), value.to_owned())),
        )
        .expect("config");
        let store = crate::token::store::Store::memory();
        let login = crate::proxy::build_login_client(&config.upstream).expect("login client");
        let (_registry, tokens) = Registry::build(&config, &login, &store);
        let mut table = RouteTable::build(&config, tokens);
        let mut route = Arc::try_unwrap(table.routes.remove(0)).expect("one owner");
        route.target = UpstreamTarget::parse(upstream).expect("test upstream");
        route.prefix = RoutePrefix::parse(prefix).expect("test prefix");
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
