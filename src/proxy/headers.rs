//! Header rules for both directions: hop-by-hop headers (RFC 9110 §7.6.1, and every
//! header named in `Connection`) never cross the proxy; client credentials never reach
//! the upstream.

use http::{HeaderMap, HeaderName, header};

use crate::hop_by_hop::HOP_BY_HOP;

/// The headers to send upstream: the client's, less hop-by-hop headers, `Host` (the
/// client set it for the proxy), `Authorization` (a client's own credential never
/// reaches IntelePeer) and the route's token header (the proxy sets it).
pub fn upstream_request_headers(inbound: &HeaderMap, token_header: &HeaderName) -> HeaderMap {
    let named = connection_named(inbound);
    // Room for what the proxy adds (Host, x-request-id, the token): no regrowth.
    let mut outbound = HeaderMap::with_capacity(inbound.len() + 3);
    for (name, value) in inbound {
        let drop = HOP_BY_HOP.contains(name)
            || name == header::HOST
            || name == header::AUTHORIZATION
            || name == token_header
            || named.iter().any(|named| named == name.as_str());
        if !drop {
            outbound.append(name.clone(), value.clone());
        }
    }
    outbound
}

/// Removes hop-by-hop headers from an upstream response, in place.
pub fn strip_response_headers(headers: &mut HeaderMap) {
    // Most answers carry none (and without `Connection` nothing is named): one pass
    // over their few names is cheaper than a lookup per rule.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    for name in connection_named(headers) {
        headers.remove(name.as_str());
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Lower-cased header names listed in every `Connection` header.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::try_from(*name).expect("test header name"),
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        map
    }

    #[test]
    fn credentials_host_and_hop_by_hop_headers_are_not_forwarded() {
        let inbound = headers(&[
            ("host", "proxy:8080"),
            ("authorization", "Bearer client-own"),
            ("proxy-authorization", "Bearer client-key"),
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-type", "application/json"),
            ("accept", "a"),
            ("accept", "b"),
        ]);
        let outbound = upstream_request_headers(&inbound, &header::AUTHORIZATION);
        let names: Vec<&str> = outbound.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "accept"]);
        assert_eq!(outbound.get_all("accept").iter().count(), 2);
    }

    #[test]
    fn custom_token_header_from_the_client_is_dropped() {
        let inbound = headers(&[("x-api-token", "forged"), ("authorization", "x")]);
        let outbound = upstream_request_headers(&inbound, &HeaderName::from_static("x-api-token"));
        assert!(outbound.is_empty());
    }

    #[test]
    fn response_hop_by_hop_headers_are_removed() {
        let mut response = headers(&[
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-authenticate", "Basic"),
            ("content-type", "text/plain"),
        ]);
        strip_response_headers(&mut response);
        let names: Vec<&str> = response.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type"]);
    }

    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("connection".to_owned()),
            Just("keep-alive".to_owned()),
            Just("te".to_owned()),
            Just("trailer".to_owned()),
            Just("transfer-encoding".to_owned()),
            Just("upgrade".to_owned()),
            Just("proxy-authorization".to_owned()),
            Just("proxy-authenticate".to_owned()),
            Just("proxy-connection".to_owned()),
            Just("authorization".to_owned()),
            Just("host".to_owned()),
            "x-[a-z]{1,6}",
        ]
    }

    proptest! {
        #[test]
        fn no_hop_by_hop_or_credential_header_survives(
            pairs in proptest::collection::vec((header_name(), "[a-zA-Z0-9 ,-]{0,20}"), 0..12),
            named in proptest::collection::vec("x-[a-z]{1,6}", 0..3),
        ) {
            let mut inbound = HeaderMap::new();
            for (name, value) in &pairs {
                inbound.append(
                    HeaderName::try_from(name.as_str()).expect("generated name"),
                    HeaderValue::from_str(value).expect("generated value"),
                );
            }
            let connection = named.join(", ");
            inbound.append(header::CONNECTION, HeaderValue::from_str(&connection).expect("names"));
            let outbound = upstream_request_headers(&inbound, &header::AUTHORIZATION);
            for name in outbound.keys() {
                prop_assert!(!HOP_BY_HOP.contains(name));
                prop_assert!(name != header::AUTHORIZATION && name != header::HOST);
                prop_assert!(!named.iter().any(|named| named == name.as_str()));
            }
            let mut response = inbound.clone();
            strip_response_headers(&mut response);
            for name in response.keys() {
                prop_assert!(!HOP_BY_HOP.contains(name));
                prop_assert!(!named.iter().any(|named| named == name.as_str()));
            }
        }
    }
}
