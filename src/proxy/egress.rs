//! The egress tunnel: connections to IntelePeer through a corporate forward proxy.
//!
//! [`EgressConnector`] sits under the TLS layer: for a target that the egress settings
//! send through a proxy, it opens a TCP connection to the proxy and asks it for an
//! HTTP `CONNECT` tunnel to the target (with `Proxy-Authorization: Basic` when the
//! proxy URL carries credentials), all within `connect_timeout`; TLS then runs
//! inside the tunnel, end to end with IntelePeer, so the proxy sees neither plaintext
//! nor token. Plain-`http` targets are tunnelled the same way (no absolute-form
//! requests), so every request reaches its target the same way and the proxy only
//! ever sees `CONNECT host:port`. Other targets are connected to directly.
//!
//! Which targets go through which proxy, and the `Basic` credentials, are hyper-util's
//! `Matcher` (scheme → proxy, `NO_PROXY` hosts, domains, IPs and CIDRs), fed the way
//! curl reads `NO_PROXY` (`curl_no_proxy`). Failures are [`EgressError`]s that name
//! the proxy by `host:port` and the proxy's answer, never its password.

use std::error::Error as StdError;
use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::HeaderValue;
use http::Uri;
use http::uri::Scheme;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tower::{Service, ServiceExt as _};

use crate::config::{EgressConfig, EgressProxy};

type BoxError = Box<dyn StdError + Send + Sync>;

/// A TCP connector for IntelePeer-bound connections that goes through the egress
/// proxy where the settings say so. Cheap to clone.
#[derive(Clone)]
pub struct EgressConnector {
    tcp: HttpConnector,
    /// `None`: every connection is direct.
    routes: Option<std::sync::Arc<Routes>>,
    /// Bounds the whole tunnel set-up: TCP to the proxy and its answer to `CONNECT`.
    setup_timeout: Duration,
}

impl fmt::Debug for EgressConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressConnector")
            .field("routes", &self.routes)
            .field("setup_timeout", &self.setup_timeout)
            .finish_non_exhaustive()
    }
}

impl EgressConnector {
    /// `tcp` makes every TCP connection (to a target or to the proxy);
    /// `setup_timeout` bounds a tunnel's set-up (`upstream.connect_timeout`).
    pub fn new(tcp: HttpConnector, egress: &EgressConfig, setup_timeout: Duration) -> Self {
        let routes = (!egress.is_direct()).then(|| std::sync::Arc::new(Routes::new(egress)));
        Self {
            tcp,
            routes,
            setup_timeout,
        }
    }
}

impl Service<Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        let via = self
            .routes
            .as_ref()
            .and_then(|routes| routes.proxy_for(&target));
        let Some((intercept, source)) = via else {
            let connecting = self.tcp.call(target);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        };
        let proxy = intercept
            .uri()
            .authority()
            .map_or_else(String::new, ToString::to_string);
        let proxy_uri = intercept.uri().clone();
        let authorization = intercept.basic_auth().cloned();
        let tcp = self.tcp.clone();
        let setup_timeout = self.setup_timeout;
        Box::pin(async move {
            let fail = |reason: String| -> BoxError {
                Box::new(EgressError {
                    proxy: proxy.clone(),
                    reason,
                })
            };
            let target = tunnel_target(&target)
                .ok_or_else(|| fail("was not used: the target has no host".to_owned()))?;
            let setup = async {
                let stream = tcp.oneshot(proxy_uri).await.map_err(|error| {
                    format!("could not be reached: {}", crate::error::chain(&error))
                })?;
                open_tunnel(
                    stream.into_inner(),
                    &target,
                    authorization.as_ref(),
                    &source,
                )
                .await
            };
            match tokio::time::timeout(setup_timeout, setup).await {
                Ok(Ok(stream)) => Ok(TokioIo::new(stream)),
                Ok(Err(reason)) => Err(fail(reason)),
                Err(_elapsed) => Err(fail(format!(
                    "did not set up the tunnel to {target} within {setup_timeout:?} \
                     (upstream.connect_timeout)"
                ))),
            }
        })
    }
}

/// Largest answer head to `CONNECT` read: proxies answer with a few short headers.
const MAX_CONNECT_ANSWER: usize = 8 * 1024;
/// Most headers parsed in that answer.
const MAX_CONNECT_HEADERS: usize = 64;

/// Asks the proxy on `stream` for a tunnel to `target` (`host:port`) and reads its
/// answer; the stream is the tunnel once the proxy answered 2xx. The error is the rest
/// of a sentence that starts with "the egress proxy HOST:PORT".
///
/// Hand-written rather than hyper-util's `Tunnel`: that one reduces every answer but
/// 407 to "unsuccessful" behind an error type it does not export, and an operator
/// needs the status (tinyproxy answers 401 to wrong credentials, Squid 403 to a
/// forbidden port).
async fn open_tunnel(
    mut stream: TcpStream,
    target: &str,
    authorization: Option<&HeaderValue>,
    source: &str,
) -> Result<TcpStream, String> {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    if let Some(authorization) = authorization {
        request.extend_from_slice(b"Proxy-Authorization: ");
        request.extend_from_slice(authorization.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let broke = |error: std::io::Error| {
        format!("broke the connection while opening the tunnel to {target}: {error}")
    };
    stream.write_all(&request).await.map_err(broke)?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await.map_err(broke)?;
        if read == 0 {
            return Err(format!(
                "closed the connection before answering CONNECT {target}"
            ));
        }
        head.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_CONNECT_HEADERS];
        let mut answer = httparse::Response::new(&mut headers);
        match answer.parse(&head) {
            Ok(httparse::Status::Complete(length)) => {
                let code = answer.code.unwrap_or_default();
                if !(200..300).contains(&code) {
                    return Err(refusal(
                        code,
                        answer.reason.unwrap_or_default(),
                        target,
                        source,
                        authorization.is_some(),
                    ));
                }
                // The client speaks first in a tunnel (TLS, or the HTTP request): bytes
                // here would belong to no one.
                if length < head.len() {
                    return Err(format!(
                        "sent data after accepting CONNECT {target}, before ipproxy spoke"
                    ));
                }
                return Ok(stream);
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_CONNECT_ANSWER => {}
            Ok(httparse::Status::Partial) => {
                return Err(format!(
                    "answered CONNECT {target} with a head over {MAX_CONNECT_ANSWER} bytes"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "answered CONNECT {target} with something that is not HTTP"
                ));
            }
        }
    }
}

/// The proxy's refusal of a tunnel, with its status and what it usually means.
fn refusal(code: u16, reason: &str, target: &str, source: &str, sent_credentials: bool) -> String {
    // The reason phrase comes from the proxy: only a short run of visible text.
    let reason: String = reason
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect();
    let answer = format!("{code} {reason}");
    let answer = answer.trim_end();
    let hint = match code {
        401 | 407 if sent_credentials => {
            format!(": the user:password in {source} is not accepted")
        }
        401 | 407 => format!(": it wants credentials; give user:password@ in {source}"),
        403 => " (a host or port it does not allow)".to_owned(),
        _ => String::new(),
    };
    format!("refused the tunnel to {target} with {answer}{hint}")
}

/// Which targets go through which proxy.
struct Routes {
    matcher: Matcher,
    /// `NO_PROXY=*`: every host is reached directly.
    every_host_direct: bool,
    /// The key or variable that set each scheme's proxy, for messages.
    https_source: String,
    http_source: String,
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The matcher's Debug shows proxy URIs without their credentials.
        f.debug_struct("Routes")
            .field("matcher", &self.matcher)
            .field("every_host_direct", &self.every_host_direct)
            .finish()
    }
}

impl Routes {
    fn new(egress: &EgressConfig) -> Self {
        let (every_host_direct, no_proxy) = egress
            .no_proxy
            .as_ref()
            .map_or((false, String::new()), |list| curl_no_proxy(&list.entries));
        let url = |proxy: &Option<EgressProxy>| {
            proxy
                .as_ref()
                .map_or_else(String::new, |proxy| proxy.url().to_owned())
        };
        let source = |proxy: &Option<EgressProxy>| {
            proxy
                .as_ref()
                .map_or_else(String::new, |proxy| proxy.source.clone())
        };
        Self {
            matcher: Matcher::builder()
                .https(url(&egress.https))
                .http(url(&egress.http))
                .no(no_proxy)
                .build(),
            every_host_direct,
            https_source: source(&egress.https),
            http_source: source(&egress.http),
        }
    }

    /// The proxy for `target` and the key or variable that set it; `None` to connect
    /// directly.
    fn proxy_for(&self, target: &Uri) -> Option<(Intercept, String)> {
        if self.every_host_direct {
            return None;
        }
        // curl ignores a trailing dot of the host name.
        let without_dot;
        let target = match target.host() {
            Some(host) if host.len() > 1 && host.ends_with('.') => {
                without_dot = Uri::builder()
                    .scheme(target.scheme_str().unwrap_or("https"))
                    .authority(host.trim_end_matches('.'))
                    .path_and_query("/")
                    .build()
                    .ok()?;
                &without_dot
            }
            _ => target,
        };
        let intercept = self.matcher.intercept(target)?;
        let source = if target.scheme() == Some(&Scheme::HTTPS) {
            &self.https_source
        } else {
            &self.http_source
        };
        Some((intercept, source.clone()))
    }
}

/// `NO_PROXY` as curl reads it, for hyper-util's matcher: whether it is `*` (every
/// host direct: only the whole value, as in curl), and the entries separated by commas
/// or blanks, with a trailing dot dropped and a `*` among other entries left out (curl
/// matches it against no host; hyper-util would take it for every name).
pub(crate) fn curl_no_proxy(entries: &str) -> (bool, String) {
    if entries.trim() == "*" {
        return (true, String::new());
    }
    let kept: Vec<&str> = entries
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .map(|entry| entry.strip_suffix('.').unwrap_or(entry))
        .filter(|entry| !entry.is_empty() && *entry != "*")
        .collect();
    (false, kept.join(","))
}

/// The `host:port` to ask a tunnel for: the target's port spelled out.
fn tunnel_target(target: &Uri) -> Option<String> {
    let host = target.host()?;
    let port = target.port_u16().unwrap_or_else(|| {
        if target.scheme() == Some(&Scheme::HTTP) {
            80
        } else {
            443
        }
    });
    Some(format!("{host}:{port}"))
}

/// A connection through the egress proxy could not be set up. The text names the
/// proxy by `host:port` and never holds its credentials.
#[derive(Debug, thiserror::Error)]
#[error("the egress proxy {proxy} {reason}")]
pub struct EgressError {
    /// `host:port` of the egress proxy.
    pub proxy: String,
    /// The rest of the sentence: what the proxy did.
    pub reason: String,
}

impl EgressError {
    /// The egress failure somewhere in `error`'s chain of sources, if it was one.
    pub fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a EgressError> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(egress) = error.downcast_ref::<EgressError>() {
                return Some(egress);
            }
            current = error.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NoProxyList;

    fn egress(no_proxy: &str) -> EgressConfig {
        let proxy =
            EgressProxy::parse("http://u:p@egress.corp:3128", "HTTPS_PROXY", true).expect("url");
        EgressConfig {
            https: Some(proxy),
            http: None,
            no_proxy: Some(NoProxyList {
                entries: no_proxy.to_owned(),
                source: "NO_PROXY",
            }),
        }
    }

    /// Whether `url` is tunnelled under `NO_PROXY=no_proxy` (with an https proxy only).
    fn proxied(no_proxy: &str, url: &str) -> bool {
        let uri: Uri = url.parse().expect("uri");
        Routes::new(&egress(no_proxy)).proxy_for(&uri).is_some()
    }

    #[test]
    fn no_proxy_host_names_match_the_host_and_its_subdomains_only() {
        let list = "localhost, api.intelepeer.com";
        assert!(!proxied(list, "https://localhost:8443"));
        assert!(!proxied(list, "https://API.IntelePeer.com"));
        assert!(!proxied(list, "https://eu.api.intelepeer.com"));
        assert!(proxied(list, "https://notapi.intelepeer.com"));
        assert!(proxied(list, "https://customer.intelepeer.com"));
    }

    #[test]
    fn no_proxy_domain_suffixes_match_with_or_without_a_leading_dot() {
        for list in [".intelepeer.com", "intelepeer.com", "intelepeer.com."] {
            assert!(!proxied(list, "https://api.intelepeer.com"), "{list}");
            assert!(!proxied(list, "https://intelepeer.com"), "{list}");
            assert!(!proxied(list, "https://api.intelepeer.com./x"), "{list}");
            assert!(proxied(list, "https://intelepeer.community"), "{list}");
        }
    }

    #[test]
    fn no_proxy_ips_and_cidrs_match_addresses() {
        let list = "10.1.2.3,192.168.0.0/16,::1,fd00::/8";
        assert!(!proxied(list, "https://10.1.2.3"));
        assert!(proxied(list, "https://10.1.2.4"));
        assert!(!proxied(list, "https://192.168.44.5:8443"));
        assert!(proxied(list, "https://192.169.0.1"));
        assert!(!proxied(list, "https://[::1]:8443"));
        assert!(!proxied(list, "https://[fd12::7]"));
        assert!(proxied(list, "https://[fe80::1]"));
        // A name is not its address.
        assert!(proxied("127.0.0.1", "https://localhost"));
    }

    #[test]
    fn no_proxy_star_alone_sends_every_host_direct_names_and_ips_alike() {
        assert!(!proxied("*", "https://api.intelepeer.com"));
        assert!(!proxied(" * ", "https://203.0.113.9"));
        // As in curl, `*` is a wildcard only as the whole value.
        assert!(proxied("localhost,*", "https://api.intelepeer.com"));
        assert!(!proxied("localhost,*", "https://localhost"));
    }

    #[test]
    fn no_proxy_entries_may_be_separated_by_blanks_and_empty_ones_are_ignored() {
        assert_eq!(curl_no_proxy("a, b ,,c d"), (false, "a,b,c,d".to_owned()));
        assert!(proxied("", "https://api.intelepeer.com"));
        assert!(proxied(" , ", "https://api.intelepeer.com"));
    }

    #[test]
    fn only_the_scheme_with_a_proxy_is_tunnelled() {
        assert!(proxied("", "https://api.intelepeer.com"));
        assert!(
            !proxied("", "http://api.intelepeer.com"),
            "no http proxy set"
        );
    }

    #[test]
    fn each_scheme_names_the_key_that_set_its_proxy() {
        let parse = |source| EgressProxy::parse("http://egress.corp:3128", source, true);
        let egress = EgressConfig {
            https: Some(parse("HTTPS_PROXY").expect("url")),
            http: Some(parse("http_proxy").expect("url")),
            no_proxy: None,
        };
        let routes = Routes::new(&egress);
        let source = |url: &str| {
            let (_, source) = routes
                .proxy_for(&url.parse().expect("uri"))
                .expect("proxied");
            source
        };
        assert_eq!(source("https://api.intelepeer.com"), "HTTPS_PROXY");
        assert_eq!(source("http://api.intelepeer.com"), "http_proxy");
    }

    #[test]
    fn the_tunnel_target_always_carries_a_port() {
        let target = |url: &str| tunnel_target(&url.parse().expect("uri")).expect("target");
        assert_eq!(target("http://sim.internal"), "sim.internal:80");
        assert_eq!(
            target("https://api.intelepeer.com/x"),
            "api.intelepeer.com:443"
        );
        assert_eq!(target("https://[::1]:8443"), "[::1]:8443");
    }

    #[test]
    fn egress_errors_are_found_in_a_chain_of_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] EgressError);
        let outer = Outer(EgressError {
            proxy: "egress.corp:3128".to_owned(),
            reason: "could not be reached".to_owned(),
        });
        let found = EgressError::find(&outer).expect("found");
        assert_eq!(
            found.to_string(),
            "the egress proxy egress.corp:3128 could not be reached"
        );
        assert!(EgressError::find(&std::io::Error::other("plain")).is_none());
    }

    // --- the tunnel against a loopback stand-in for the egress proxy ---

    /// What the stand-in does once it has read the `CONNECT` head.
    enum Then {
        Answer(&'static [u8]),
        StaySilent,
        HangUp,
    }

    /// A one-connection stand-in for the proxy: reads the request head, sends it back
    /// through the receiver, then does `then`; an answered or silent connection is
    /// held open until the client gives up.
    async fn stand_in(
        then: Then,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<String>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (head_tx, head_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                let read = stream.read(&mut chunk).await.expect("read");
                if read == 0 {
                    break;
                }
                head.extend_from_slice(&chunk[..read]);
            }
            let _ = head_tx.send(String::from_utf8_lossy(&head).into_owned());
            match then {
                Then::Answer(answer) => stream.write_all(answer).await.expect("write"),
                Then::StaySilent => {}
                Then::HangUp => return,
            }
            // Held until the client gives up (the test's runtime ends).
            let _ = stream.read(&mut chunk).await;
        });
        (addr, head_rx)
    }

    fn connector_via(proxy: std::net::SocketAddr, setup_timeout: Duration) -> EgressConnector {
        let url = format!("http://egress-user:pr0xy-pw@{proxy}");
        let proxy = EgressProxy::parse(&url, "upstream.proxy", false).expect("url");
        let egress = EgressConfig {
            https: Some(proxy.clone()),
            http: Some(proxy),
            no_proxy: None,
        };
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        EgressConnector::new(tcp, &egress, setup_timeout)
    }

    async fn failure(connector: EgressConnector, target: &str) -> EgressError {
        let target: Uri = target.parse().expect("uri");
        let error = connector
            .oneshot(target)
            .await
            .expect_err("the tunnel fails");
        let egress = *error.downcast::<EgressError>().expect("an egress error");
        assert!(!egress.to_string().contains("pr0xy-pw"), "{egress}");
        egress
    }

    /// The error of a tunnel to `https://api.example` through a stand-in that does
    /// `then`; the error names the stand-in as the proxy.
    async fn refused(then: Then) -> EgressError {
        let (proxy, _head) = stand_in(then).await;
        let error = failure(
            connector_via(proxy, Duration::from_secs(5)),
            "https://api.example",
        )
        .await;
        assert_eq!(error.proxy, proxy.to_string());
        error
    }

    #[tokio::test]
    async fn the_tunnel_sends_connect_with_basic_credentials_and_an_explicit_port() {
        let (proxy, head) =
            stand_in(Then::Answer(b"HTTP/1.1 200 Connection established\r\n\r\n")).await;
        let connector = connector_via(proxy, Duration::from_secs(5));
        connector
            .oneshot("http://sim.internal/x".parse().expect("uri"))
            .await
            .expect("tunnel");
        let head = head.await.expect("head");
        assert!(
            head.starts_with("CONNECT sim.internal:80 HTTP/1.1\r\n"),
            "{head}"
        );
        // base64("egress-user:pr0xy-pw")
        assert!(
            head.contains("Proxy-Authorization: Basic ZWdyZXNzLXVzZXI6cHIweHktcHc=\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_407_names_the_proxy_and_the_key_holding_the_credentials() {
        let error = refused(Then::Answer(
            b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n",
        ))
        .await;
        assert_eq!(
            error.reason,
            "refused the tunnel to api.example:443 with 407 Proxy Authentication Required: \
             the user:password in upstream.proxy is not accepted"
        );
    }

    #[tokio::test]
    async fn a_401_is_taken_for_refused_credentials_too() {
        // tinyproxy's answer to a wrong password.
        let error = refused(Then::Answer(b"HTTP/1.0 401 Unauthorized\r\n\r\n")).await;
        assert!(
            error.reason.ends_with(
                "with 401 Unauthorized: the user:password in upstream.proxy is not accepted"
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_403_is_a_refused_tunnel() {
        let error = refused(Then::Answer(b"HTTP/1.1 403 Access violation\r\n\r\n")).await;
        assert_eq!(
            error.reason,
            "refused the tunnel to api.example:443 with 403 Access violation \
             (a host or port it does not allow)"
        );
    }

    #[tokio::test]
    async fn a_proxy_wanting_credentials_that_got_none_says_where_to_give_them() {
        let (proxy, _head) = stand_in(Then::Answer(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
        ))
        .await;
        let url = format!("http://{proxy}");
        let proxy = EgressProxy::parse(&url, "HTTPS_PROXY", true).expect("url");
        let egress = EgressConfig {
            https: Some(proxy),
            http: None,
            no_proxy: None,
        };
        let connector = EgressConnector::new(HttpConnector::new(), &egress, Duration::from_secs(5));
        let error = failure(connector, "https://api.example").await;
        assert_eq!(
            error.reason,
            "refused the tunnel to api.example:443 with 407 Proxy Authentication Required: \
             it wants credentials; give user:password@ in HTTPS_PROXY"
        );
    }

    #[test]
    fn the_connectors_debug_names_the_proxy_and_hides_its_credentials() {
        let proxy: std::net::SocketAddr = "127.0.0.1:3128".parse().expect("addr");
        let shown = format!("{:?}", connector_via(proxy, Duration::from_secs(5)));
        assert!(shown.contains("127.0.0.1:3128"), "{shown}");
        assert!(shown.contains("setup_timeout: 5s"), "{shown}");
        for secret in ["pr0xy-pw", "ZWdyZXNzLXVzZXI6cHIweHktcHc"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    /// `head` and enough of one padding header to make the answer `length` bytes,
    /// with the blank line that ends it when `complete`.
    fn padded_answer(head: &str, length: usize, complete: bool) -> &'static [u8] {
        let end = if complete { "\r\n\r\n" } else { "" };
        let padding = length - head.len() - "X-Pad: ".len() - end.len();
        let answer = format!("{head}X-Pad: {}{end}", "a".repeat(padding));
        assert_eq!(answer.len(), length);
        Box::leak(answer.into_bytes().into_boxed_slice())
    }

    #[tokio::test]
    async fn an_answer_longer_than_one_read_is_read_to_its_end() {
        // Three reads at least: the answer arrives in parts however TCP delivers it.
        let answer = padded_answer("HTTP/1.1 200 Connection established\r\n", 3000, true);
        let (proxy, _head) = stand_in(Then::Answer(answer)).await;
        connector_via(proxy, Duration::from_secs(5))
            .oneshot("https://api.example".parse().expect("uri"))
            .await
            .expect("tunnel");
    }

    #[tokio::test]
    async fn an_answer_head_of_8_kib_without_its_end_is_refused() {
        let answer = padded_answer("HTTP/1.1 200 OK\r\n", MAX_CONNECT_ANSWER, false);
        let error = refused(Then::Answer(answer)).await;
        assert_eq!(
            error.reason,
            "answered CONNECT api.example:443 with a head over 8192 bytes"
        );
    }

    #[tokio::test]
    async fn a_proxy_that_speaks_first_in_the_tunnel_is_refused() {
        let error = refused(Then::Answer(
            b"HTTP/1.1 200 Connection established\r\n\r\nhello",
        ))
        .await;
        assert_eq!(
            error.reason,
            "sent data after accepting CONNECT api.example:443, before ipproxy spoke"
        );
    }

    #[tokio::test]
    async fn an_answer_that_is_not_http_is_named() {
        let error = refused(Then::Answer(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")).await;
        assert_eq!(
            error.reason,
            "answered CONNECT api.example:443 with something that is not HTTP"
        );
    }

    #[tokio::test]
    async fn a_proxy_that_hangs_up_is_named() {
        let error = refused(Then::HangUp).await;
        assert!(
            error
                .reason
                .starts_with("closed the connection before answering CONNECT api.example:443"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_proxy_is_named() {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        // Bound, never listening: connections are refused.
        let closed = socket.local_addr().expect("addr");
        let error = failure(
            connector_via(closed, Duration::from_secs(5)),
            "https://api.example",
        )
        .await;
        assert_eq!(error.proxy, closed.to_string());
        // The connector's error and its cause, which says what the operator can fix.
        assert!(
            error
                .reason
                .starts_with("could not be reached: tcp connect error: ")
                && error.reason.contains("Connection refused"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn the_connect_timeout_bounds_a_proxy_that_never_answers() {
        let (proxy, _head) = stand_in(Then::StaySilent).await;
        let started = std::time::Instant::now();
        let error = failure(
            connector_via(proxy, Duration::from_millis(200)),
            "https://api.example",
        )
        .await;
        assert!(error.reason.contains("within 200ms"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
