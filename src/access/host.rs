//! The proxy's own names: the `Host` (HTTP/1) or `:authority` (HTTP/2) of a request
//! must be one of them, or the request is refused `421 misdirected_request`.
//!
//! Why: with DNS rebinding a page on `http://rebind.attacker.example:8080` has its name
//! re-pointed at 127.0.0.1, and the browser then sends the page's requests, and lets
//! the page read the answers, as same-origin. Its `GET`s carry no `Origin` and, on
//! plain HTTP, no `Sec-Fetch-Site`; but the browser always names the page's host in
//! `Host`. A name that the attacker controls is never one of the proxy's own.
//!
//! Own names: `localhost`, every loopback address (127.0.0.0/8, `::1`), the listen
//! address (every IP address when it is `0.0.0.0` or `::`: an address literal cannot
//! be rebound, only a name can), and `access.allow_hosts`. Any port: port mappings
//! (`docker run -p`, a Service port, `kubectl port-forward`) change the port a client
//! names, and the port is not what rebinding forges. A request naming no host
//! (HTTP/1.0, an empty `Host`) passes: no browser sends one.
//!
//! Also here, because it is about the same header: two `Host` headers, or one that is
//! not `host[:port]`, are `400 bad_request` (RFC 9112 §3.2).

use std::net::{IpAddr, SocketAddr};

use http::header::HOST;
use http::uri::Authority;
use http::{HeaderMap, Uri};

use crate::config::AllowedHost;
use crate::error::ProxyError;

/// The names a request may give for the proxy.
#[derive(Debug, Default)]
pub(super) struct OwnHosts {
    /// `access.allow_hosts` names, lower case.
    names: Vec<String>,
    /// `access.allow_hosts` addresses, and the listen address when it is specific.
    addresses: Vec<IpAddr>,
    /// The proxy listens on every address (`0.0.0.0` or `::`).
    every_address: bool,
    /// `Host` values known to pass, compared byte for byte before any parsing: the
    /// loopback names and the listen address with the listen port, as clients of a
    /// sidecar send them on every request (parsing one into an `Authority` copies it).
    known: Vec<Vec<u8>>,
}

impl OwnHosts {
    pub(super) fn new(allowed: &[AllowedHost]) -> Self {
        let mut hosts = Self::default();
        for host in allowed {
            match host {
                AllowedHost::Name(name) => hosts.names.push(name.clone()),
                AllowedHost::Address(address) => hosts.addresses.push(address.to_canonical()),
            }
        }
        hosts
    }

    /// Adds the listen address to the own names.
    pub(super) fn listen(&mut self, listen: SocketAddr) {
        let address = listen.ip().to_canonical();
        if address.is_unspecified() {
            self.every_address = true;
        } else if !address.is_loopback() {
            self.addresses.push(address);
        }
        let port = listen.port();
        let candidates = [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            SocketAddr::new(address, port).to_string(),
        ];
        // Only what the full check passes: the fast path never changes an answer.
        let passing: Vec<Vec<u8>> = candidates
            .into_iter()
            .filter(|candidate| self.check_host_value(candidate.as_bytes()).is_ok())
            .map(String::into_bytes)
            .collect();
        self.known.extend(passing);
    }

    /// Checks every name the request gives: the target's authority (absolute-form, or
    /// HTTP/2's `:authority`) and the `Host` header.
    pub(super) fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), ProxyError> {
        let mut hosts = headers.get_all(HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Err(ProxyError::BadRequest(
                "the request has more than one Host header (RFC 9112 §3.2)",
            ));
        }
        if let Some(authority) = uri.authority() {
            self.check_authority(authority)?;
        }
        match host.map(|value| value.as_bytes()) {
            None | Some(b"") => Ok(()),
            Some(value) if self.known.iter().any(|known| known == value) => Ok(()),
            Some(value) => self.check_host_value(value),
        }
    }

    /// Checks a non-empty `Host` value.
    fn check_host_value(&self, value: &[u8]) -> Result<(), ProxyError> {
        let authority = Authority::try_from(value)
            .map_err(|_| ProxyError::BadRequest("the Host header is not a host[:port]"))?;
        self.check_authority(&authority)
    }

    fn check_authority(&self, authority: &Authority) -> Result<(), ProxyError> {
        if authority.as_str().contains('@') {
            return Err(ProxyError::BadRequest(
                "the Host (or request target) must not carry user info",
            ));
        }
        // `Authority` reads the port lazily: `host:port` with a word for a port would
        // otherwise pass as `host`.
        let port = &authority.as_str()[authority.host().len()..];
        let port_is_valid = match port.strip_prefix(':') {
            None => port.is_empty(),
            Some(digits) => digits.is_empty() || digits.parse::<u16>().is_ok(),
        };
        if !port_is_valid {
            return Err(ProxyError::BadRequest(
                "the Host (or request target) has a port that is not a number",
            ));
        }
        if self.is_own(authority.host()) {
            Ok(())
        } else {
            Err(ProxyError::MisdirectedRequest)
        }
    }

    /// `host` as [`Authority::host`] gives it: a name, an IPv4 address, or an IPv6
    /// address in brackets.
    fn is_own(&self, host: &str) -> bool {
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(address) = unbracketed.parse::<IpAddr>() {
            let address = address.to_canonical();
            return address.is_loopback()
                || self.every_address
                || self.addresses.contains(&address);
        }
        let name = host.strip_suffix('.').unwrap_or(host);
        name.eq_ignore_ascii_case("localhost")
            || self.names.iter().any(|own| own.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(allowed: &[&str], listen: &str) -> OwnHosts {
        let allowed: Vec<AllowedHost> = allowed
            .iter()
            .map(|host| AllowedHost::parse(host).expect("a host"))
            .collect();
        let mut hosts = OwnHosts::new(&allowed);
        hosts.listen(listen.parse().expect("an address"));
        hosts
    }

    fn with_host(host: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, http::HeaderValue::from_static(host));
        headers
    }

    fn check(hosts: &OwnHosts, host: &'static str) -> Result<(), ProxyError> {
        hosts.check(&Uri::from_static("/x"), &with_host(host))
    }

    #[test]
    fn loopback_names_and_addresses_pass_on_any_port() {
        let hosts = own(&[], "127.0.0.1:8080");
        for host in [
            "localhost",
            "localhost:8080",
            "LocalHost.:9999",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:18080",
            "[::1]",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert!(check(&hosts, host).is_ok(), "{host}");
        }
        assert!(
            hosts
                .check(&Uri::from_static("/x"), &HeaderMap::new())
                .is_ok()
        );
        assert!(check(&hosts, "").is_ok(), "an empty Host names nothing");
    }

    #[test]
    fn other_names_and_addresses_are_misdirected() {
        let hosts = own(&["ipproxy.prod.svc", "10.0.0.5"], "127.0.0.1:8080");
        for host in [
            "rebind.attacker.example:8080",
            "rebind.attacker.example",
            "localhost.attacker.example",
            "127.0.0.1.attacker.example",
            "ipproxy",
            "ipproxy.prod.svc.attacker.example",
            "10.0.0.6:8080",
            "[fd00::1]:8080",
            "0.0.0.0:8080",
        ] {
            assert!(
                matches!(check(&hosts, host), Err(ProxyError::MisdirectedRequest)),
                "{host}"
            );
        }
        for host in ["ipproxy.prod.svc", "IPPROXY.prod.svc.:8080", "10.0.0.5:80"] {
            assert!(check(&hosts, host).is_ok(), "{host}");
        }
    }

    #[test]
    fn the_listen_address_is_own_and_an_unspecified_one_means_every_address() {
        let specific = own(&[], "192.168.1.20:8080");
        assert!(check(&specific, "192.168.1.20:8080").is_ok());
        assert!(check(&specific, "192.168.1.21:8080").is_err());
        let every = own(&[], "0.0.0.0:8080");
        assert!(check(&every, "10.1.2.3:8080").is_ok());
        assert!(check(&every, "[fd00::9]:8080").is_ok());
        assert!(
            matches!(
                check(&every, "rebind.attacker.example"),
                Err(ProxyError::MisdirectedRequest)
            ),
            "names are still checked"
        );
    }

    #[test]
    fn the_target_authority_is_checked_too() {
        let hosts = own(&[], "127.0.0.1:8080");
        let foreign = Uri::from_static("http://rebind.attacker.example:8080/x");
        assert!(matches!(
            hosts.check(&foreign, &HeaderMap::new()),
            Err(ProxyError::MisdirectedRequest)
        ));
        assert!(matches!(
            hosts.check(&foreign, &with_host("127.0.0.1:8080")),
            Err(ProxyError::MisdirectedRequest)
        ));
        let own_target = Uri::from_static("http://127.0.0.1:8080/x");
        assert!(hosts.check(&own_target, &with_host("localhost")).is_ok());
    }

    #[test]
    fn two_hosts_or_a_malformed_one_are_bad_requests() {
        let hosts = own(&[], "127.0.0.1:8080");
        let mut two = with_host("127.0.0.1:8080");
        two.append(HOST, http::HeaderValue::from_static("127.0.0.1:8080"));
        assert!(matches!(
            hosts.check(&Uri::from_static("/x"), &two),
            Err(ProxyError::BadRequest(_))
        ));
        for host in ["a b", "127.0.0.1:port", "user@127.0.0.1", "[::1"] {
            assert!(
                matches!(check(&hosts, host), Err(ProxyError::BadRequest(_))),
                "{host}"
            );
        }
    }
}
