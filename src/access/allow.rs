//! The path allowlist (`[access] allow`): path prefixes, each optionally limited to
//! some methods; empty means every route.

use http::Method;

use crate::config::AllowRule;
use crate::error::ProxyError;

/// The configured allow rules.
#[derive(Debug, Default)]
pub(super) struct Allowlist(Vec<AllowRule>);

impl Allowlist {
    pub(super) fn new(rules: Vec<AllowRule>) -> Self {
        Self(rules)
    }

    /// Checks `path` (already in normal form) and `method` against the rules.
    pub(super) fn check(&self, method: &Method, path: &str) -> Result<(), ProxyError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let allowed = self.0.iter().any(|rule| {
            rule.prefix.matches(path) && (rule.methods.is_empty() || rule.methods.contains(method))
        });
        if allowed {
            Ok(())
        } else {
            Err(ProxyError::PathNotAllowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Access;
    use crate::config::{AccessConfig, RoutePrefix};

    #[test]
    fn allowlist_matches_on_segments_and_methods() {
        let access = Access::new(&AccessConfig {
            keys_file: None,
            allow: vec![
                AllowRule {
                    prefix: RoutePrefix::parse("/_rest/v4/app/sms/").expect("prefix"),
                    methods: vec![],
                },
                AllowRule {
                    prefix: RoutePrefix::parse("/_rest/v4/my").expect("prefix"),
                    methods: vec![Method::GET],
                },
            ],
            ..AccessConfig::default()
        })
        .expect("no keys file to read");
        assert!(
            access
                .check_allowed(&Method::POST, "/_rest/v4/app/sms/send")
                .is_ok()
        );
        assert!(
            access
                .check_allowed(&Method::GET, "/_rest/v4/my/did")
                .is_ok()
        );
        assert!(
            access
                .check_allowed(&Method::POST, "/_rest/v4/my/did")
                .is_err()
        );
        assert!(
            access
                .check_allowed(&Method::GET, "/_rest/v4/mystery")
                .is_err()
        );
        assert!(
            access
                .check_allowed(&Method::GET, "/_rest/v4/app/smsx")
                .is_err()
        );
    }
}
