//! Credentials: session logins and static tokens, their secrets inline or in files, the header and its format, durations and names.

use super::*;

#[test]
fn nothing_configured_names_the_missing_login_keys() {
    let error = load(None, vec![]).expect_err("no login");
    assert!(keys(&error).contains(&"auth.username"), "{error}");
    assert!(keys(&error).contains(&"auth.password"), "{error}");
}

#[test]
fn session_needs_exactly_one_of_password_and_password_file() {
    expect_problem(
        load_toml("[auth]\nusername = \"u\"\n", &[]),
        "auth.password",
    );
    let toml = "[auth]\nusername = \"u\"\npassword = \"a\"\npassword_file = \"/p\"\n";
    expect_problem(load_toml(toml, &[]), "auth.password");
    expect_problem(
        load_toml("[auth]\npassword = \"a\"\n", &[]),
        "auth.username",
    );
    expect_problem(
        load_toml("[auth]\nusername = \"u\"\npassword = \"\"\n", &[]),
        "auth.password",
    );
}

#[test]
fn keys_of_the_other_kind_are_ignored_with_one_warning_each() {
    let toml = format!(
        "[auth]\nkind = \"static\"\ntoken = \"{TOKEN}\"\nusername = \"u\"\npassword_file = \"/p\"\nurl = \"https://x\"\nmin_reauth_interval = \"1m\"\n"
    );
    let config = expect_ok(load_toml(&toml, &[]));
    let warned: Vec<&str> = config.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(
        warned,
        [
            "auth.url",
            "auth.username",
            "auth.password_file",
            "auth.min_reauth_interval"
        ]
    );
    assert!(
        config.warnings[0].message.contains("ignored"),
        "{}",
        config.warnings[0]
    );
    assert!(matches!(
        config.credentials[DEFAULT_CREDENTIAL].source,
        CredentialSource::Static(SecretSource::Inline(_))
    ));
    let toml = format!(
        "[auth]\nusername = \"u\"\npassword = \"p\"\ntoken = \"{TOKEN}\"\ntoken_file = \"/t\"\n"
    );
    let config = expect_ok(load_toml(&toml, &[]));
    let warned: Vec<&str> = config.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(warned, ["auth.token", "auth.token_file"]);
    let shown: String = config.warnings.iter().map(ToString::to_string).collect();
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(
        config
            .to_redacted_toml()
            .starts_with("# auth.token: ignored")
    );
}

#[test]
fn a_typo_or_a_conflict_within_the_kind_is_still_an_error() {
    let toml = format!("[auth]\nkind = \"static\"\ntoken = \"{TOKEN}\"\ntokn_file = \"/t\"\n");
    expect_problem(load_toml(&toml, &[]), "auth.tokn_file");
    let toml = format!("[auth]\nkind = \"static\"\ntoken = \"{TOKEN}\"\ntoken_file = \"/t\"\n");
    expect_problem(load_toml(&toml, &[]), "auth.token");
    expect_problem(
        load(
            None,
            vars(&[
                ("IPPROXY_AUTH__KIND", "static"),
                ("IPPROXY_AUTH__TOKN", "x"),
            ]),
        ),
        "IPPROXY_AUTH__TOKN",
    );
}

#[test]
fn the_container_file_switches_to_a_static_token_by_variables_alone() {
    let files = Files::new();
    let token = files.write("token", &format!("{TOKEN}\n"));
    let container = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/container.toml");
    let config = expect_ok(load(
        Some(&container),
        vars(&[
            ("IPPROXY_AUTH__KIND", "static"),
            ("IPPROXY_AUTH__TOKEN_FILE", token.to_str().expect("utf-8")),
        ]),
    ));
    match &config.credentials[DEFAULT_CREDENTIAL].source {
        CredentialSource::Static(SecretSource::File(path)) => assert_eq!(path, &token),
        other => panic!("expected a token file, got {other:?}"),
    }
    let ignored: Vec<&str> = config.warnings.iter().map(|w| w.key.as_str()).collect();
    for key in [
        "auth.url",
        "auth.password_file",
        "auth.token_ttl",
        "auth.refresh_before",
    ] {
        assert!(ignored.contains(&key), "{key} not among {ignored:?}");
    }
}

#[test]
fn static_needs_exactly_one_of_token_and_token_file() {
    expect_problem(load_toml("[auth]\nkind = \"static\"\n", &[]), "auth.token");
    let toml = format!("[auth]\nkind = \"static\"\ntoken = \"{TOKEN}\"\ntoken_file = \"/t\"\n");
    expect_problem(load_toml(&toml, &[]), "auth.token");
    let config = expect_ok(load_toml(
        &format!("[auth]\nkind = \"static\"\ntoken = \"{TOKEN}\"\n"),
        &[],
    ));
    match &config.credentials[DEFAULT_CREDENTIAL].source {
        CredentialSource::Static(SecretSource::Inline(token)) => {
            assert_eq!(token.expose_secret(), TOKEN)
        }
        other => panic!("expected an inline token, got {other:?}"),
    }
}

#[test]
fn token_file_stays_a_path_but_must_be_readable_and_non_empty() {
    let files = Files::new();
    let token = files.write("token", &format!("{TOKEN}\n"));
    let toml = format!(
        "[auth]\nkind = \"static\"\ntoken_file = {:?}\n",
        token.display().to_string()
    );
    let config = expect_ok(load_toml(&toml, &[]));
    match &config.credentials[DEFAULT_CREDENTIAL].source {
        CredentialSource::Static(SecretSource::File(path)) => assert_eq!(path, &token),
        other => panic!("expected a token file, got {other:?}"),
    }

    let empty = files.write("empty", "\n");
    let toml = format!(
        "[auth]\nkind = \"static\"\ntoken_file = {:?}\n",
        empty.display().to_string()
    );
    let error = expect_problem(load_toml(&toml, &[]), "auth.token_file");
    assert!(
        error.to_string().contains(&empty.display().to_string()),
        "{error}"
    );

    let missing = files.missing("absent");
    let toml = format!(
        "[auth]\nkind = \"static\"\ntoken_file = {:?}\n",
        missing.display().to_string()
    );
    expect_problem(load_toml(&toml, &[]), "auth.token_file");
}

#[test]
fn password_file_is_read_and_its_trailing_newline_trimmed() {
    let files = Files::new();
    let secret = files.write("password", &format!("{PASSWORD}\n"));
    let toml = format!(
        "[auth]\nusername = \"u\"\npassword_file = {:?}\n",
        secret.display().to_string()
    );
    let config = expect_ok(load_toml(&toml, &[]));
    assert_eq!(password_of(&config, DEFAULT_CREDENTIAL), PASSWORD);
}

#[test]
fn empty_or_missing_password_file_names_key_and_path() {
    let files = Files::new();
    let empty = files.write("password", "\r\n");
    let toml = format!(
        "[auth]\nusername = \"u\"\npassword_file = {:?}\n",
        empty.display().to_string()
    );
    let error = expect_problem(load_toml(&toml, &[]), "auth.password_file");
    assert!(
        error.to_string().contains(&empty.display().to_string()),
        "{error}"
    );

    let missing = files.missing("absent");
    let toml = format!(
        "[auth]\nusername = \"u\"\npassword_file = {:?}\n",
        missing.display().to_string()
    );
    expect_problem(load_toml(&toml, &[]), "auth.password_file");
}

#[test]
fn header_is_stored_lowercase_and_must_be_a_usable_header_name() {
    let config = expect_ok(load_toml(&with_auth("header = \"X-Api-Token\"\n"), &[]));
    assert_eq!(
        config.credentials[DEFAULT_CREDENTIAL].header.as_str(),
        "x-api-token"
    );
    expect_problem(
        load_toml(&with_auth("header = \"bad header\"\n"), &[]),
        "auth.header",
    );
    expect_problem(
        load_toml(&with_auth("header = \"Host\"\n"), &[]),
        "auth.header",
    );
}

#[test]
fn format_needs_the_placeholder_once_and_header_safe_text() {
    let config = expect_ok(load_toml(
        &with_auth("format = \"Token {token};v=1\"\n"),
        &[],
    ));
    let format = &config.credentials[DEFAULT_CREDENTIAL].format;
    assert_eq!(
        (format.prefix.as_str(), format.suffix.as_str()),
        ("Token ", ";v=1")
    );
    for bad in [
        "Bearer",
        "{token}{token}",
        "Bearer\\n{token}",
        "Bearer {TOKEN}",
    ] {
        expect_problem(
            load_toml(&with_auth(&format!("format = \"{bad}\"\n")), &[]),
            "auth.format",
        );
    }
}

#[test]
fn bad_durations_of_a_credential_are_named() {
    expect_problem(
        load_toml(&with_auth("token_ttl = \"1 fortnight\"\n"), &[]),
        "auth.token_ttl",
    );
    expect_problem(
        load_toml(&with_auth("refresh_before = \"x\"\n"), &[]),
        "auth.refresh_before",
    );
    expect_problem(
        load_toml(&with_auth("url = \"ftp://x\"\n"), &[]),
        "auth.url",
    );
}

#[test]
fn credential_names_are_lowercase_words_and_not_default() {
    let extra = format!("[credentials.Bad]\nkind = \"static\"\ntoken = \"{TOKEN}\"\n");
    expect_problem(load_toml(&with_auth(&extra), &[]), "credentials.Bad");
    let extra = format!("[credentials.default]\nkind = \"static\"\ntoken = \"{TOKEN}\"\n");
    expect_problem(load_toml(&with_auth(&extra), &[]), "credentials.default");
    let extra = format!("[credentials.ok_name-2]\nkind = \"static\"\ntoken = \"{TOKEN}\"\n");
    let config = expect_ok(load_toml(&with_auth(&extra), &[]));
    assert_eq!(config.credentials["ok_name-2"].name, "ok_name-2");
}

#[test]
fn default_credential_is_required_only_when_a_route_uses_it() {
    let toml = format!(
        "[credentials.cpaas]\nkind = \"static\"\ntoken = \"{TOKEN}\"\n[[route]]\nprefix = \"/rest/v1/\"\ncredential = \"cpaas\"\n"
    );
    let config = expect_ok(load_toml(&toml, &[]));
    assert!(!config.credentials.contains_key(DEFAULT_CREDENTIAL));

    let toml = format!("{toml}[[route]]\nprefix = \"/sms/\"\n");
    expect_problem(load_toml(&toml, &[]), "auth.username");
}
