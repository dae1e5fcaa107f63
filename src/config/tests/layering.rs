//! Layering: defaults, the file, `IPPROXY_*` variables over it, and the variables themselves.

use super::*;

#[test]
fn username_and_password_vars_alone_give_the_documented_defaults() {
    let config = expect_ok(load(None, vars(&login())));
    let server = &config.server;
    assert_eq!(server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(server.admin_listen.to_string(), "127.0.0.1:9901");
    assert_eq!(server.request_timeout, Duration::from_secs(30));
    assert_eq!(server.max_body, 10 * 1024 * 1024);
    assert_eq!(server.replay_limit, 1024 * 1024);
    assert_eq!(server.max_concurrency, 1024);
    assert_eq!(server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(server.client_timeout, Duration::from_secs(60));
    assert_eq!(
        config.upstream.url.url().as_str(),
        "https://api.intelepeer.com/"
    );
    assert_eq!(config.upstream.connect_timeout, Duration::from_secs(5));
    assert_eq!(config.upstream.ca_file, None);

    let auth = &config.credentials[DEFAULT_CREDENTIAL];
    assert_eq!(auth.name, "default");
    match &auth.source {
        CredentialSource::Session {
            url,
            username,
            password,
        } => {
            assert_eq!(
                url.as_str(),
                "https://customer.intelepeer.com/_rest/v4/authenticate"
            );
            assert_eq!(username, "api-user");
            assert_eq!(secret_text(password), PASSWORD);
        }
        CredentialSource::Static(_) => panic!("the default kind is session"),
    }
    assert_eq!(auth.token_ttl, Duration::from_secs(86_400));
    assert_eq!(auth.refresh_before, Duration::from_secs(3_600));
    assert_eq!(auth.header.as_str(), "authorization");
    assert_eq!(
        auth.format,
        HeaderFormat::parse("Bearer {token}").expect("valid")
    );

    assert_eq!(config.routes.len(), 1);
    let route = &config.routes[0];
    assert_eq!((route.name.as_str(), route.prefix.as_str()), ("/", "/"));
    assert_eq!(route.upstream.url(), config.upstream.url.url());
    assert_eq!(route.credential, DEFAULT_CREDENTIAL);
    assert!(route.header.is_none() && route.format.is_none() && !route.strip_prefix);

    assert!(config.access.keys_file.is_none() && config.access.allow.is_empty());
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.log.level, "info");
}

#[test]
fn text_keys_keep_number_and_bool_looking_values_as_strings() {
    let config = expect_ok(load(
        None,
        vars(&[
            ("IPPROXY_AUTH__USERNAME", "true"),
            ("IPPROXY_AUTH__PASSWORD", "0012345"),
        ]),
    ));
    assert_eq!(password_of(&config, DEFAULT_CREDENTIAL), "0012345");
    match &config.credentials[DEFAULT_CREDENTIAL].source {
        CredentialSource::Session { username, .. } => assert_eq!(username, "true"),
        CredentialSource::Static(_) => panic!("session expected"),
    }
}

#[test]
fn number_key_parses_a_number_from_a_var() {
    let mut pairs = login();
    pairs.push(("IPPROXY_SERVER__MAX_CONCURRENCY", "64"));
    pairs.push(("IPPROXY_SERVER__MAX_BODY", "2048"));
    let config = expect_ok(load(None, vars(&pairs)));
    assert_eq!(config.server.max_concurrency, 64);
    assert_eq!(config.server.max_body, 2048);
    // Unset, the replay limit follows the smaller max_body.
    assert_eq!(config.server.replay_limit, 2048);
}

#[test]
fn non_number_var_for_a_number_key_names_key_and_variable() {
    let mut pairs = login();
    pairs.push(("IPPROXY_SERVER__MAX_CONCURRENCY", "lots"));
    let error = expect_problem(load(None, vars(&pairs)), "server.max_concurrency");
    assert!(
        error
            .to_string()
            .contains("IPPROXY_SERVER__MAX_CONCURRENCY"),
        "{error}"
    );
}

#[test]
fn max_concurrency_beyond_a_million_is_refused() {
    let mut pairs = login();
    pairs.push(("IPPROXY_SERVER__MAX_CONCURRENCY", "4611686018427387904"));
    let error = expect_problem(load(None, vars(&pairs)), "server.max_concurrency");
    assert!(error.to_string().contains("at most 1000000"), "{error}");
}

#[test]
fn var_overrides_the_file() {
    let config = expect_ok(load_toml(
        &with_auth("[server]\nlisten = \"127.0.0.1:1000\"\nmax_concurrency = 5\n"),
        &[("IPPROXY_SERVER__LISTEN", "0.0.0.0:2000")],
    ));
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:2000");
    assert_eq!(config.server.max_concurrency, 5);
}

#[test]
fn list_var_in_toml_array_form_sets_access_allow() {
    let mut pairs = login();
    pairs.push((
        "IPPROXY_ACCESS__ALLOW",
        r#"["/_rest/v4/app/sms/", {prefix = "/rest/v1/", methods = ["get", "POST"]}]"#,
    ));
    let config = expect_ok(load(None, vars(&pairs)));
    assert_eq!(
        config.access.allow,
        vec![
            AllowRule {
                prefix: RoutePrefix::parse("/_rest/v4/app/sms/").expect("prefix"),
                methods: vec![]
            },
            AllowRule {
                prefix: RoutePrefix::parse("/rest/v1/").expect("prefix"),
                methods: vec![http::Method::GET, http::Method::POST],
            },
        ]
    );
}

#[test]
fn list_var_that_is_not_a_toml_array_is_named() {
    let mut pairs = login();
    pairs.push(("IPPROXY_ACCESS__ALLOW", "/_rest/v4/app/sms/"));
    expect_problem(load(None, vars(&pairs)), "IPPROXY_ACCESS__ALLOW");
}

#[test]
fn config_var_names_the_file() {
    let files = Files::new();
    let path = files.write(
        "ipproxy.toml",
        &with_auth("[server]\nmax_concurrency = 7\n"),
    );
    let config = expect_ok(load(
        None,
        vars(&[("IPPROXY_CONFIG", path.to_str().expect("utf-8 path"))]),
    ));
    assert_eq!(config.server.max_concurrency, 7);
}

#[test]
fn credential_var_overrides_a_named_credential_key() {
    let files = Files::new();
    let token = files.write("token", TOKEN);
    let toml = with_auth("[credentials.cpaas]\nkind = \"static\"\ntoken_file = \"/nonexistent\"\n");
    let config = expect_ok(load_toml(
        &toml,
        &[(
            "IPPROXY_CREDENTIALS__CPAAS__TOKEN_FILE",
            token.to_str().expect("utf-8"),
        )],
    ));
    match &config.credentials["cpaas"].source {
        CredentialSource::Static(SecretSource::File(path)) => assert_eq!(path, &token),
        other => panic!("expected a token file, got {other:?}"),
    }
}

#[test]
fn password_var_replaces_the_files_password_file_and_vice_versa() {
    let files = Files::new();
    let secret = files.write("password", "from-file\n");
    let toml = "[auth]\nusername = \"u\"\npassword_file = \"/nonexistent\"\n";
    let config = expect_ok(load_toml(toml, &[("IPPROXY_AUTH__PASSWORD", PASSWORD)]));
    assert_eq!(password_of(&config, DEFAULT_CREDENTIAL), PASSWORD);

    let toml = "[auth]\nusername = \"u\"\npassword = \"inline\"\n";
    let config = expect_ok(load_toml(
        toml,
        &[(
            "IPPROXY_AUTH__PASSWORD_FILE",
            secret.to_str().expect("utf-8"),
        )],
    ));
    assert_eq!(password_of(&config, DEFAULT_CREDENTIAL), "from-file");
}

#[test]
fn both_password_forms_in_vars_are_refused() {
    let files = Files::new();
    let secret = files.write("password", "x");
    let mut pairs = login();
    pairs.push((
        "IPPROXY_AUTH__PASSWORD_FILE",
        secret.to_str().expect("utf-8"),
    ));
    expect_problem(load(None, vars(&pairs)), "auth.password");
}
