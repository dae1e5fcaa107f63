//! The example configurations shipped in the repository load as they are.

use super::*;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

#[test]
fn simple_example_config_loads() {
    let files = Files::new();
    let password = files.write("intelepeer_password", &format!("{PASSWORD}\n"));
    let config = expect_ok(load(
        Some(&example("ipproxy.example.toml")),
        vars(&[(
            "IPPROXY_AUTH__PASSWORD_FILE",
            password.to_str().expect("utf-8"),
        )]),
    ));
    assert_eq!(password_of(&config, DEFAULT_CREDENTIAL), PASSWORD);
    assert_eq!(config.routes.len(), 1);
}

#[test]
fn intelepeer_example_config_loads_with_a_route_per_api_family() {
    let files = Files::new();
    let password = files.write("intelepeer_password", PASSWORD);
    let token = files.write("cpaas_token", TOKEN);
    let config = expect_ok(load(
        Some(&example("intelepeer.toml")),
        vars(&[
            (
                "IPPROXY_AUTH__PASSWORD_FILE",
                password.to_str().expect("utf-8"),
            ),
            (
                "IPPROXY_CREDENTIALS__CPAAS__TOKEN_FILE",
                token.to_str().expect("utf-8"),
            ),
        ]),
    ));
    let route = |prefix: &str| {
        config
            .routes
            .iter()
            .find(|route| route.prefix.as_str() == prefix)
            .unwrap_or_else(|| panic!("no route for {prefix}"))
    };
    for prefix in [
        "/_rest/v4/app/sms/",
        "/_rest/v4/my/did/sms/",
        "/_rest/v4/sfgen/",
    ] {
        assert_eq!(
            route(prefix).upstream.url().host_str(),
            Some("api.intelepeer.com")
        );
        assert_eq!(route(prefix).credential, DEFAULT_CREDENTIAL);
    }
    for prefix in ["/_rest/v4/carrier/", "/_rest/v4/my/"] {
        assert_eq!(
            route(prefix).upstream.url().host_str(),
            Some("customer.intelepeer.com")
        );
        assert_eq!(route(prefix).format, HeaderFormat::parse("{token}"));
    }
    assert_eq!(
        route("/rest/v1/").upstream.url().host_str(),
        Some("atmosphere-api.intelepeer.com")
    );
    assert_eq!(route("/rest/v1/").credential, "cpaas");
    assert!(route("/_rest/v4/app/sms/").idempotency);
    assert!(!route("/_rest/v4/my/").idempotency);
    assert_eq!(config.idempotency, IdempotencyConfig::default());
}
