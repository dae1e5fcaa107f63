//! The hop-by-hop headers of RFC 9110 §7.6.1 (plus the legacy `Proxy-Connection`):
//! the one list that the header rules (`proxy::headers`) strip and that configuration
//! refuses as a token header. A leaf: it imports nothing of the crate.

use http::{HeaderName, header};

/// Never forwarded in either direction (with every header `Connection` names).
pub(crate) const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Whether `name` is one of [`HOP_BY_HOP`].
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}
