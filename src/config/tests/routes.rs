//! Routes: prefixes, the credential each uses, idempotency per route.

use super::*;

#[test]
fn route_defaults_name_upstream_credential_and_strip_prefix() {
    let toml = with_auth(
        "[upstream]\nurl = \"https://eu.api.intelepeer.com\"\n[[route]]\nprefix = \"/sms/\"\n",
    );
    let config = expect_ok(load_toml(&toml, &[]));
    let route = &config.routes[0];
    assert_eq!(route.name, "/sms/");
    assert_eq!(
        route.upstream.url().as_str(),
        "https://eu.api.intelepeer.com/"
    );
    assert_eq!(route.credential, DEFAULT_CREDENTIAL);
    assert!(!route.strip_prefix && route.header.is_none() && route.format.is_none());
}

#[test]
fn idempotency_is_off_by_default_and_its_section_is_read_from_file_and_variables() {
    let toml = with_auth(
        "[idempotency]\nttl = \"1h\"\nmax_response = \"64KiB\"\n\
         [[route]]\nprefix = \"/sms/\"\nidempotency = true\n[[route]]\nprefix = \"/\"\n",
    );
    let config = expect_ok(load_toml(
        &toml,
        &[
            ("IPPROXY_IDEMPOTENCY__MAX_ENTRIES", "500"),
            ("IPPROXY_IDEMPOTENCY__ON_STORE_DOWN", "reject"),
        ],
    ));
    let idempotent = |prefix: &str| {
        config
            .routes
            .iter()
            .find(|route| route.prefix.as_str() == prefix)
            .expect("route")
            .idempotency
    };
    assert!(idempotent("/sms/") && !idempotent("/"));
    assert_eq!(
        config.idempotency,
        IdempotencyConfig {
            ttl: Duration::from_secs(3600),
            max_response: 64 * 1024,
            max_entries: 500,
            on_store_down: OnStoreDown::Reject,
        }
    );
    let defaults = expect_ok(load_toml(&with_auth(""), &[]));
    assert_eq!(defaults.idempotency, IdempotencyConfig::default());
    assert!(!defaults.routes[0].idempotency);
}

#[test]
fn bad_idempotency_values_are_each_named() {
    for (key, value) in [
        ("IPPROXY_IDEMPOTENCY__TTL", "0s"),
        ("IPPROXY_IDEMPOTENCY__TTL", "soon"),
        ("IPPROXY_IDEMPOTENCY__MAX_RESPONSE", "65MiB"),
        ("IPPROXY_IDEMPOTENCY__MAX_RESPONSE", "lots"),
        ("IPPROXY_IDEMPOTENCY__MAX_ENTRIES", "0"),
        ("IPPROXY_IDEMPOTENCY__MAX_ENTRIES", "10000001"),
        ("IPPROXY_IDEMPOTENCY__ON_STORE_DOWN", "ignore"),
    ] {
        let name = key
            .strip_prefix("IPPROXY_")
            .expect("prefix")
            .replace("__", ".")
            .to_lowercase();
        let error = expect_problem(load_toml(&with_auth(""), &[(key, value)]), &name);
        assert_eq!(error.problems().len(), 1, "{key}={value}: {error}");
    }
    expect_problem(
        load_toml(
            &with_auth("[[route]]\nprefix = \"/\"\nidempotency = \"yes\"\n"),
            &[],
        ),
        "route[0].idempotency",
    );
}

#[test]
fn route_overrides_are_kept() {
    let toml = with_auth(
        "[[route]]\nname = \"my\"\nprefix = \"/my/\"\nupstream = \"https://customer.intelepeer.com\"\nheader = \"X-Token\"\nformat = \"{token}\"\nstrip_prefix = true\n",
    );
    let config = expect_ok(load_toml(&toml, &[]));
    let route = &config.routes[0];
    assert_eq!(route.name, "my");
    assert_eq!(
        route.upstream.url().host_str(),
        Some("customer.intelepeer.com")
    );
    assert_eq!(
        route.header.as_ref().map(HeaderName::as_str),
        Some("x-token")
    );
    assert_eq!(route.format, HeaderFormat::parse("{token}"));
    assert!(route.strip_prefix);
}

#[test]
fn route_prefix_must_be_a_clean_absolute_path() {
    for bad in ["sms/", "/a/../b/", "/a//b/", "/a%2Fb/", "/a?b"] {
        let toml = with_auth(&format!("[[route]]\nprefix = \"{bad}\"\n"));
        expect_problem(load_toml(&toml, &[]), "route[0].prefix");
    }
    expect_problem(
        load_toml(&with_auth("[[route]]\nname = \"x\"\n"), &[]),
        "route[0].prefix",
    );
}

#[test]
fn route_names_and_prefixes_are_unique() {
    let toml = with_auth(
        "[[route]]\nname = \"a\"\nprefix = \"/a/\"\n[[route]]\nname = \"a\"\nprefix = \"/b/\"\n",
    );
    expect_problem(load_toml(&toml, &[]), "route[1].name");
    let toml = with_auth(
        "[[route]]\nname = \"a\"\nprefix = \"/a/\"\n[[route]]\nname = \"b\"\nprefix = \"/a/\"\n",
    );
    expect_problem(load_toml(&toml, &[]), "route[1].prefix");
}

#[test]
fn route_credential_must_exist_and_overrides_must_be_valid() {
    let toml = with_auth("[[route]]\nprefix = \"/a/\"\ncredential = \"nope\"\n");
    expect_problem(load_toml(&toml, &[]), "route[0].credential");
    let toml = with_auth(
        "[[route]]\nprefix = \"/a/\"\nformat = \"Bearer\"\nheader = \"a b\"\nupstream = \"ftp://x\"\n",
    );
    let error = load_toml(&toml, &[]).expect_err("bad overrides");
    for key in ["route[0].format", "route[0].header", "route[0].upstream"] {
        assert!(keys(&error).contains(&key), "{key} missing from:\n{error}");
    }
}
