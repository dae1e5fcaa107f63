//! Methods the proxy never forwards: `CONNECT` (a tunnel would carry the injected token
//! to wherever the client points it) and `TRACE` (an upstream that answers it echoes
//! the request, injected token included, back to the client). Every other method
//! passes through.

use http::Method;

use crate::error::ProxyError;

/// `405 method_not_allowed` for `CONNECT` and `TRACE` in any letter case (methods are
/// case-sensitive, but an upstream that reads `trace` as `TRACE` would echo the token
/// all the same); HTTP/2's extended CONNECT included, since its method is `CONNECT`.
pub fn check_method(method: &Method) -> Result<(), ProxyError> {
    let name = method.as_str();
    if name.eq_ignore_ascii_case("CONNECT") || name.eq_ignore_ascii_case("TRACE") {
        return Err(ProxyError::MethodNotAllowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_and_trace_are_refused_everything_else_passes() {
        for refused in ["CONNECT", "TRACE", "connect", "Trace"] {
            let method = Method::from_bytes(refused.as_bytes()).expect("a method");
            assert!(
                matches!(check_method(&method), Err(ProxyError::MethodNotAllowed)),
                "{method}"
            );
        }
        for method in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "PROPFIND", "CONNECTX",
        ] {
            let method = Method::from_bytes(method.as_bytes()).expect("a method");
            assert!(check_method(&method).is_ok(), "{method}");
        }
    }
}
