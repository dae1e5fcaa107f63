//! The route table: the longest matching path prefix decides the upstream, the
//! credential and the header the token goes in.
//!
//! Built once from the validated config; lookups are a scan over a handful of
//! prefixes, longest first, matching on whole path segments.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::{Authority, InvalidUri, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Uri};
use url::Url;

use crate::config::{Config, HeaderFormat};
use crate::task::BackgroundTask;
use crate::telemetry::RouteMetrics;
use crate::token::{Credential, LoginTransport};

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
    pub format_index: usize,
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

/// All routes, longest prefix first, and the credentials they use.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    credentials: BTreeMap<String, Credential>,
}

impl RouteTable {
    /// Resolves the configured routes; creates one [`Credential`] per credential that
    /// some route uses (an unused credential never logs in).
    pub fn build(config: &Config, transport: &Arc<dyn LoginTransport>) -> Self {
        // Formats per credential: index 0 is the credential's own, then each distinct
        // route override, so every token header value is built once per token.
        let mut formats: BTreeMap<&str, Vec<HeaderFormat>> = BTreeMap::new();
        let mut format_index = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let credential = &config.credentials[&route.credential];
            let list = formats
                .entry(route.credential.as_str())
                .or_insert_with(|| vec![credential.format.clone()]);
            let wanted = route.format.as_ref().unwrap_or(&credential.format);
            let index = match list.iter().position(|format| format == wanted) {
                Some(index) => index,
                None => {
                    list.push(wanted.clone());
                    list.len() - 1
                }
            };
            format_index.push(index);
        }
        let credentials: BTreeMap<String, Credential> = formats
            .into_iter()
            .map(|(name, formats)| {
                let credential = Credential::new(
                    &config.credentials[name],
                    formats,
                    Arc::clone(transport),
                    config.server.request_timeout,
                );
                (name.to_owned(), credential)
            })
            .collect();
        let mut routes: Vec<Route> = config
            .routes
            .iter()
            .zip(format_index)
            .map(|(route, format_index)| {
                let credential_config = &config.credentials[&route.credential];
                let (scheme, authority, base_path) = split_upstream(&route.upstream);
                Route {
                    name: Arc::from(route.name.as_str()),
                    prefix: route.prefix.clone(),
                    host: HeaderValue::from_str(authority.as_str())
                        .expect("an authority is a valid header value"),
                    scheme,
                    authority,
                    base_path,
                    credential: credentials[&route.credential].clone(),
                    header: route
                        .header
                        .clone()
                        .unwrap_or_else(|| credential_config.header.clone()),
                    format_index,
                    strip_prefix: route.strip_prefix,
                    metrics: RouteMetrics::new(&route.name),
                }
            })
            .collect();
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Self {
            routes,
            credentials,
        }
    }

    /// The route with the longest prefix matching `path` on segment boundaries.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| prefix_matches(&route.prefix, path))
    }

    /// The credentials that routes use, by name.
    pub fn credentials(&self) -> &BTreeMap<String, Credential> {
        &self.credentials
    }

    /// Starts every credential's first fetch and refresh task.
    pub fn start(&self) -> Vec<BackgroundTask> {
        self.credentials.values().map(Credential::start).collect()
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
}
