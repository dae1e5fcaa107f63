//! Browser requests on the proxy port. The proxy acts with the account's token, so a
//! web page that a browser on the same host (or inside the same network) runs must
//! not be able to send requests through it: a cross-site `POST` with
//! `Content-Type: text/plain` needs no CORS preflight, and the browser sends it.
//!
//! What gives a page away: browsers send `Origin` on every `POST`, `PUT`, `PATCH` and
//! `DELETE` (same-origin included) and on every CORS request, and `Sec-Fetch-Site` on
//! every request to a potentially trustworthy URL (HTTPS, `localhost`, `127.0.0.1`)
//! with the value `none` only for a navigation the user started (a typed URL, a
//! bookmark). Server-side HTTP clients (curl, Python requests, Node fetch, Java's
//! HttpClient, Go net/http) send neither header. Pages on a DNS-rebound name send
//! neither on a plain `GET` either: the Host check (`host`) covers those.

use http::HeaderMap;
use http::header::ORIGIN;

use crate::config::AllowedOrigin;
use crate::error::ProxyError;

const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// The browser origins allowed on the proxy port (`access.allow_origins`).
#[derive(Debug, Default)]
pub(super) struct BrowserOrigins(Vec<AllowedOrigin>);

impl BrowserOrigins {
    pub(super) fn new(origins: Vec<AllowedOrigin>) -> Self {
        Self(origins)
    }

    /// `403 cross_site_request` for a request a web page sent: one with an `Origin`
    /// that is not listed (several `Origin`s, `null` included), or without `Origin`
    /// and with `Sec-Fetch-Site` other than `none`. A listed origin passes whatever
    /// its `Sec-Fetch-Site` says (a page of that origin is `cross-site` to the proxy).
    pub(super) fn check(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        let mut origins = headers.get_all(ORIGIN).iter();
        if let Some(origin) = origins.next() {
            let listed = self
                .0
                .iter()
                .any(|allowed| allowed.as_str().as_bytes() == origin.as_bytes());
            return if listed && origins.next().is_none() {
                Ok(())
            } else {
                Err(ProxyError::BrowserRequest)
            };
        }
        let from_a_page = headers
            .get_all(SEC_FETCH_SITE)
            .iter()
            .any(|site| !site.as_bytes().eq_ignore_ascii_case(b"none"));
        if from_a_page {
            return Err(ProxyError::BrowserRequest);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    fn allowing(origins: &[&str]) -> BrowserOrigins {
        BrowserOrigins::new(
            origins
                .iter()
                .map(|origin| AllowedOrigin::parse(origin).expect("an origin"))
                .collect(),
        )
    }

    #[test]
    fn requests_without_browser_headers_or_from_a_typed_url_pass() {
        let none = allowing(&[]);
        for passing in [
            headers(&[]),
            headers(&[("user-agent", "curl/8.5.0"), ("accept", "*/*")]),
            headers(&[("sec-fetch-site", "none")]),
            headers(&[("sec-fetch-site", "None"), ("sec-fetch-mode", "navigate")]),
        ] {
            assert!(none.check(&passing).is_ok(), "{passing:?}");
        }
    }

    #[test]
    fn a_page_is_refused_unless_its_origin_is_listed_exactly() {
        let app = allowing(&["http://localhost:5173"]);
        for refused in [
            headers(&[("origin", "http://evil.example")]),
            headers(&[
                ("origin", "http://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ]),
            headers(&[("origin", "null")]),
            headers(&[("origin", "http://localhost:5173/")]),
            headers(&[("origin", "http://LOCALHOST:5173")]),
            headers(&[("origin", "http://localhost:5174")]),
            headers(&[
                ("origin", "http://localhost:5173"),
                ("origin", "http://evil.example"),
            ]),
            headers(&[("sec-fetch-site", "same-origin")]),
            headers(&[("sec-fetch-site", "same-site")]),
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "none"), ("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "")]),
        ] {
            assert!(
                matches!(app.check(&refused), Err(ProxyError::BrowserRequest)),
                "{refused:?}"
            );
        }
        for passing in [
            headers(&[("origin", "http://localhost:5173")]),
            headers(&[
                ("origin", "http://localhost:5173"),
                ("sec-fetch-site", "cross-site"),
            ]),
        ] {
            assert!(app.check(&passing).is_ok(), "{passing:?}");
        }
    }
}
