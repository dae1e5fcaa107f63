//! Unit tests of loading, layering, validation and redaction. Hermetic: variables are
//! passed to [`load`] as a list, files live in temporary directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::*;

const PASSWORD: &str = "s3cret-Pass-Zq9";
const TOKEN: &str = "static-Token-Xw7";

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn login() -> Vec<(&'static str, &'static str)> {
    vec![
        ("IPPROXY_AUTH__USERNAME", "api-user"),
        ("IPPROXY_AUTH__PASSWORD", PASSWORD),
    ]
}

/// A temporary directory holding files for one test.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        Self(tempfile::tempdir().expect("a temporary directory"))
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, content).expect("write a test file");
        path
    }

    fn missing(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// Loads `toml` as the file, with `extra` variables over it.
fn load_toml(toml: &str, extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let files = Files::new();
    let path = files.write("ipproxy.toml", toml);
    load(Some(&path), vars(extra))
}

/// `toml` plus a valid `[auth]` section.
fn with_auth(toml: &str) -> String {
    format!("[auth]\nusername = \"api-user\"\npassword = \"{PASSWORD}\"\n{toml}")
}

fn keys(error: &ConfigError) -> Vec<&str> {
    error.problems().iter().map(|p| p.key.as_str()).collect()
}

#[track_caller]
fn expect_problem(result: Result<Config, ConfigError>, key: &str) -> ConfigError {
    let error = result.expect_err("the configuration should be refused");
    assert!(
        keys(&error).contains(&key),
        "expected a problem at {key}, got:\n{error}"
    );
    let text = error.to_string();
    assert!(
        !text.contains(PASSWORD) && !text.contains(TOKEN),
        "a secret leaked:\n{text}"
    );
    error
}

#[track_caller]
fn expect_ok(result: Result<Config, ConfigError>) -> Config {
    match result {
        Ok(config) => config,
        Err(error) => panic!("the configuration should load, got:\n{error}"),
    }
}

fn password_of(config: &Config, name: &str) -> String {
    match &config.credentials[name].source {
        CredentialSource::Session { password, .. } => secret_text(password),
        CredentialSource::Static(_) => panic!("{name} is not a session credential"),
    }
}

/// A secret's value, read from its file when it has one.
fn secret_text(source: &SecretSource) -> String {
    match source {
        SecretSource::Inline(secret) => secret.expose_secret().to_owned(),
        SecretSource::File(path) => crate::secret::read_secret(path)
            .expect("a readable secret file")
            .expose_secret()
            .to_owned(),
    }
}

// --- layering and variables ---

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

// --- unknown keys and type errors ---

#[test]
fn unknown_key_in_the_file_is_named() {
    let toml = "[auth]\nusername = \"u\"\npasword = \"x\"\npassword = \"y\"\n";
    let error = expect_problem(load_toml(toml, &[]), "auth.pasword");
    assert!(
        error.to_string().contains("auth.pasword: unknown key"),
        "{error}"
    );
}

#[test]
fn several_unknown_keys_in_the_file_are_all_named() {
    let toml = format!(
        "colour = \"blue\"\n{}",
        with_auth(
            r#"
        [server]
        lisen = "127.0.0.1:1"
        [credentials.cpaas]
        kind = "static"
        token = "abc"
        tokn = "abc"
        [[route]]
        prefix = "/a/"
        nme = "a"
        [access]
        allow = [{ prefix = "/a/", metods = ["GET"] }]
        "#,
        )
    );
    let error = load_toml(&toml, &[]).expect_err("unknown keys");
    for key in [
        "colour",
        "server.lisen",
        "credentials.cpaas.tokn",
        "route[0].nme",
        "access.allow[0].metods",
    ] {
        assert!(keys(&error).contains(&key), "{key} missing from:\n{error}");
    }
}

#[test]
fn unknown_vars_are_all_named_with_the_key_they_would_set() {
    let mut pairs = login();
    pairs.push(("IPPROXY_AUTH__PASWORD", "x"));
    pairs.push(("IPPROXY_FOO__BAR", "x"));
    pairs.push(("IPPROXY_SERVER", "x"));
    pairs.push(("IPPROXY_ROUTE__PREFIX", "/x/"));
    pairs.push(("OTHER_AUTH__PASWORD", "ignored: not ours"));
    let error = load(None, vars(&pairs)).expect_err("unknown variables");
    let text = error.to_string();
    assert!(
        text.contains("IPPROXY_AUTH__PASWORD: unknown variable (no key auth.pasword)"),
        "{text}"
    );
    assert!(
        text.contains("IPPROXY_FOO__BAR: unknown variable (no key foo.bar)"),
        "{text}"
    );
    assert!(keys(&error).contains(&"IPPROXY_SERVER"), "{text}");
    assert!(keys(&error).contains(&"IPPROXY_ROUTE__PREFIX"), "{text}");
    assert_eq!(error.problems().len(), 4, "{text}");
}

#[test]
fn type_errors_in_different_sections_are_all_named_with_unknown_keys() {
    let toml = with_auth(
        "[server]\nmax_concurrency = \"lots\"\nlisen = 1\n[[route]]\nprefix = \"/a/\"\nstrip_prefix = \"yes\"\n[[route]]\nprefix = 1\n",
    );
    let error = load_toml(&toml, &[]).expect_err("type errors");
    for key in [
        "server.max_concurrency",
        "server.lisen",
        "route[0].strip_prefix",
        "route[1].prefix",
    ] {
        assert!(keys(&error).contains(&key), "{key} missing from:\n{error}");
    }
}

#[test]
fn type_error_names_the_key() {
    let error = expect_problem(
        load_toml(&with_auth("[server]\nmax_concurrency = \"lots\"\n"), &[]),
        "server.max_concurrency",
    );
    assert_eq!(error.problems().len(), 1, "{error}");
    expect_problem(
        load_toml(&with_auth("[[route]]\nprefix = 5\n"), &[]),
        "route[0].prefix",
    );
    expect_problem(
        load_toml(&with_auth("[log]\nformat = \"xml\"\n"), &[]),
        "log.format",
    );
}

#[test]
fn secret_of_the_wrong_type_is_refused_without_echoing_it() {
    let toml = "[auth]\nusername = \"u\"\npassword = 987654321\n";
    let error = expect_problem(load_toml(toml, &[]), "auth.password");
    assert!(!error.to_string().contains("987654321"), "{error}");
}

#[test]
fn missing_file_is_named() {
    let files = Files::new();
    let path = files.missing("absent.toml");
    let error = expect_problem(
        load(Some(&path), vars(&login())),
        &path.display().to_string(),
    );
    assert_eq!(error.problems().len(), 1, "{error}");
}

#[test]
fn invalid_toml_is_named_without_echoing_the_line() {
    let files = Files::new();
    let path = files.write("bad.toml", "[auth]\npassword = s3cret-Pass-Zq9\n");
    let error = expect_problem(load(Some(&path), vec![]), &path.display().to_string());
    assert!(error.to_string().contains("line 2"), "{error}");
}

#[test]
fn display_has_one_key_prefixed_line_per_problem() {
    let toml = with_auth("[server]\nlisten = \"nowhere\"\nmax_body = \"huge\"\n");
    let error = load_toml(&toml, &[]).expect_err("two problems");
    let text = error.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("server.listen: "), "{text}");
    assert!(lines[1].starts_with("server.max_body: "), "{text}");
}

// --- [server] and [upstream] ---

#[test]
fn durations_and_sizes_read_human_units_and_plain_bytes() {
    let toml = with_auth(
        "[server]\nrequest_timeout = \"500ms\"\nshutdown_grace = \"5m\"\nheader_read_timeout = \"2s\"\nclient_timeout = \"1500ms\"\nmax_body = \"64KiB\"\nreplay_limit = 1000\n",
    );
    let config = expect_ok(load_toml(&toml, &[]));
    assert_eq!(config.server.request_timeout, Duration::from_millis(500));
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(300));
    assert_eq!(config.server.header_read_timeout, Duration::from_secs(2));
    assert_eq!(config.server.client_timeout, Duration::from_millis(1500));
    assert_eq!(config.server.max_body, 64 * 1024);
    assert_eq!(config.server.replay_limit, 1000);
}

#[test]
fn bad_server_values_are_each_named() {
    let toml = with_auth(
        r#"[server]
        listen = "localhost"
        admin_listen = "127.0.0.1"
        request_timeout = "soon"
        header_read_timeout = "0s"
        client_timeout = "0s"
        shutdown_grace = "30"
        max_body = "big"
        max_concurrency = 0
        "#,
    );
    let error = load_toml(&toml, &[]).expect_err("bad values");
    for key in [
        "server.listen",
        "server.admin_listen",
        "server.request_timeout",
        "server.header_read_timeout",
        "server.client_timeout",
        "server.shutdown_grace",
        "server.max_body",
        "server.max_concurrency",
    ] {
        assert!(keys(&error).contains(&key), "{key} missing from:\n{error}");
    }
}

#[test]
fn replay_limit_above_max_body_is_refused() {
    let toml = with_auth("[server]\nmax_body = \"1KiB\"\nreplay_limit = \"2KiB\"\n");
    expect_problem(load_toml(&toml, &[]), "server.replay_limit");
}

#[test]
fn upstream_url_must_be_http_with_a_host_and_no_query_or_fragment() {
    for url in [
        "ftp://api.intelepeer.com",
        "https://api.intelepeer.com/?a=b",
        "https://api.intelepeer.com/#x",
        "not a url",
        "unix:/run/sock",
    ] {
        let toml = with_auth(&format!("[upstream]\nurl = \"{url}\"\n"));
        expect_problem(load_toml(&toml, &[]), "upstream.url");
    }
}

#[test]
fn upstream_url_with_user_info_is_refused_without_echoing_it() {
    let toml = with_auth(&format!(
        "[upstream]\nurl = \"https://me:{PASSWORD}@api.intelepeer.com\"\n"
    ));
    expect_problem(load_toml(&toml, &[]), "upstream.url");
}

#[test]
fn upstream_url_may_have_a_base_path() {
    let toml = with_auth("[upstream]\nurl = \"http://127.0.0.1:9000/base\"\n");
    let config = expect_ok(load_toml(&toml, &[]));
    assert_eq!(config.upstream.url.url().path(), "/base");
    assert_eq!(
        config.routes[0].upstream.url().as_str(),
        "http://127.0.0.1:9000/base"
    );
}

#[test]
fn ca_file_must_exist() {
    let files = Files::new();
    let missing = files.missing("ca.pem");
    let toml = with_auth(&format!(
        "[upstream]\nca_file = {:?}\n",
        missing.display().to_string()
    ));
    expect_problem(load_toml(&toml, &[]), "upstream.ca_file");
    let present = files.write("ca.pem", "PEM");
    let toml = with_auth(&format!(
        "[upstream]\nca_file = {:?}\n",
        present.display().to_string()
    ));
    assert_eq!(
        expect_ok(load_toml(&toml, &[])).upstream.ca_file,
        Some(present)
    );
}

// --- credentials ---

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

// --- routes ---

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

// --- [access] and [log] ---

#[test]
fn keys_file_must_exist() {
    let files = Files::new();
    let missing = files.missing("keys");
    let toml = with_auth(&format!(
        "[access]\nkeys_file = {:?}\n",
        missing.display().to_string()
    ));
    expect_problem(load_toml(&toml, &[]), "access.keys_file");
    let present = files.write("keys", "");
    let toml = with_auth(&format!(
        "[access]\nkeys_file = {:?}\n",
        present.display().to_string()
    ));
    assert_eq!(
        expect_ok(load_toml(&toml, &[])).access.keys_file,
        Some(present)
    );
}

#[test]
fn allow_entries_follow_the_prefix_rules_and_name_real_methods() {
    let toml = with_auth(
        r#"[access]
        allow = ["/a/", { prefix = "/b/", methods = ["get", "GET", "delete"] }]
        "#,
    );
    let config = expect_ok(load_toml(&toml, &[]));
    assert_eq!(
        config.access.allow[1].methods,
        vec![http::Method::GET, http::Method::DELETE]
    );

    expect_problem(
        load_toml(&with_auth("[access]\nallow = [\"a/\"]\n"), &[]),
        "access.allow[0]",
    );
    let toml = with_auth("[access]\nallow = [{ prefix = \"/a/\", methods = [\"GTE\"] }]\n");
    expect_problem(load_toml(&toml, &[]), "access.allow[0].methods");
    let toml = with_auth("[access]\nallow = [{ prefix = \"/a/\", methods = [] }]\n");
    expect_problem(load_toml(&toml, &[]), "access.allow[0].methods");
    let toml = with_auth("[access]\nallow = [{ methods = [\"GET\"] }]\n");
    expect_problem(load_toml(&toml, &[]), "access.allow[0].prefix");
}

#[test]
fn allow_origins_and_allow_hosts_are_read_from_the_file_and_from_variables() {
    let toml = with_auth(
        r#"[access]
        allow_origins = ["http://localhost:5173", "https://app.example.com"]
        allow_hosts = ["ipproxy.prod.svc", "10.0.0.5"]
        "#,
    );
    let config = expect_ok(load_toml(&toml, &[]));
    let origins: Vec<&str> = config
        .access
        .allow_origins
        .iter()
        .map(|o| o.as_str())
        .collect();
    assert_eq!(
        origins,
        ["http://localhost:5173", "https://app.example.com"]
    );
    assert_eq!(config.access.allow_hosts.len(), 2);
    let text = config.to_redacted_toml();
    assert!(
        text.contains(r#"allow_hosts = ["ipproxy.prod.svc", "10.0.0.5"]"#),
        "{text}"
    );
    assert!(text.contains("allow_origins = ["), "{text}");

    let mut pairs = login();
    pairs.push(("IPPROXY_ACCESS__ALLOW_HOSTS", r#"["lb"]"#));
    pairs.push((
        "IPPROXY_ACCESS__ALLOW_ORIGINS",
        r#"["http://localhost:3000"]"#,
    ));
    let config = expect_ok(load(None, vars(&pairs)));
    assert_eq!(config.access.allow_hosts[0].to_string(), "lb");
    assert_eq!(
        config.access.allow_origins[0].as_str(),
        "http://localhost:3000"
    );

    let defaults = expect_ok(load(None, vars(&login())));
    assert!(defaults.access.allow_origins.is_empty() && defaults.access.allow_hosts.is_empty());
}

#[test]
fn bad_allow_origins_and_allow_hosts_are_named_by_key_and_index() {
    for (origins, index) in [
        (r#"["null"]"#, 0),
        (r#"["*"]"#, 0),
        (r#"["http://localhost:5173", "http://localhost:5173/"]"#, 1),
        (r#"["localhost:5173"]"#, 0),
        (r#"["https://app.example.com:443"]"#, 0),
        (r#"["HTTP://APP.example.com"]"#, 0),
        (r#"["ftp://files.example.com"]"#, 0),
        (r#"["http://app.example.com/x"]"#, 0),
    ] {
        let toml = with_auth(&format!("[access]\nallow_origins = {origins}\n"));
        expect_problem(
            load_toml(&toml, &[]),
            &format!("access.allow_origins[{index}]"),
        );
    }
    let toml = with_auth("[access]\nallow_origins = \"http://localhost:5173\"\n");
    expect_problem(load_toml(&toml, &[]), "access.allow_origins");
    for hosts in [
        r#"["ipproxy:8080"]"#,
        r#"["http://ipproxy"]"#,
        r#"["*.svc"]"#,
        r#"[""]"#,
    ] {
        let toml = with_auth(&format!("[access]\nallow_hosts = {hosts}\n"));
        expect_problem(load_toml(&toml, &[]), "access.allow_hosts[0]");
    }
    let mut pairs = login();
    pairs.push(("IPPROXY_ACCESS__ALLOW_ORIGINS", r#"["null"]"#));
    expect_problem(load(None, vars(&pairs)), "access.allow_origins[0]");
    let mut pairs = login();
    pairs.push(("IPPROXY_ACCESS__ALLOW_HOSTS", "lb"));
    expect_problem(load(None, vars(&pairs)), "IPPROXY_ACCESS__ALLOW_HOSTS");
}

#[test]
fn log_format_and_level_are_checked() {
    let config = expect_ok(load_toml(
        &with_auth("[log]\nformat = \"text\"\nlevel = \"ipproxy=debug,warn\"\n"),
        &[],
    ));
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.level, "ipproxy=debug,warn");
    expect_problem(
        load_toml(&with_auth("[log]\nlevel = \"ipproxy=loud\"\n"), &[]),
        "log.level",
    );
}

// --- redaction ---

#[test]
fn redacted_toml_hides_every_secret_and_still_parses() {
    let files = Files::new();
    let token_path = files.write("token", TOKEN);
    let toml = format!(
        "[auth]\nusername = \"api-user\"\npassword = \"{PASSWORD}\"\n\
         [credentials.inline]\nkind = \"static\"\ntoken = \"{TOKEN}\"\n\
         [credentials.file]\nkind = \"static\"\ntoken_file = {:?}\n\
         [[route]]\nprefix = \"/a/\"\n",
        token_path.display().to_string()
    );
    let config = expect_ok(load_toml(&toml, &[]));
    let text = config.to_redacted_toml();
    assert!(!text.contains(PASSWORD) && !text.contains(TOKEN), "{text}");
    assert!(text.contains("password = \"***\""), "{text}");
    assert!(text.contains("token = \"***\""), "{text}");
    assert!(text.contains(&token_path.display().to_string()), "{text}");
    assert!(text.contains("max_body = \"10MiB\""), "{text}");
    assert!(text.contains("header_read_timeout = \"10s\""), "{text}");
    assert!(text.contains("client_timeout = \"1m\""), "{text}");
    assert!(text.contains("token_ttl = \"24h\""), "{text}");
    toml::from_str::<toml::Table>(&text).expect("the redacted output is TOML");
}

#[test]
fn redacted_toml_reloads_into_the_same_settings_once_secrets_are_given() {
    let config = expect_ok(load(None, vars(&login())));
    let text = config.to_redacted_toml();
    let reloaded = expect_ok(load_toml(&text, &[("IPPROXY_AUTH__PASSWORD", PASSWORD)]));
    assert_eq!(reloaded.to_redacted_toml(), text);
}

// --- egress ---

const PROXY_PASSWORD: &str = "pr0xy-Pass-Kv4";

#[test]
fn upstream_proxy_is_used_for_both_schemes_and_shown_with_the_password_as_stars() {
    let url = format!("http://egress-user:{PROXY_PASSWORD}@proxy.corp.example:3128");
    let mut pairs = login();
    pairs.push(("IPPROXY_UPSTREAM__PROXY", &url));
    // The key wins over the variables, which are then not read at all.
    pairs.push(("HTTPS_PROXY", "http://other.example:1"));
    let config = expect_ok(load(None, vars(&pairs)));
    let egress = &config.upstream.egress;
    assert_eq!(
        egress.https.as_ref().expect("https").address,
        "proxy.corp.example:3128"
    );
    assert_eq!(egress.http.as_ref().expect("http").source, "upstream.proxy");
    assert!(egress.no_proxy.is_none());
    let text = config.to_redacted_toml();
    assert!(!text.contains(PROXY_PASSWORD), "{text}");
    assert!(
        text.contains("proxy = \"http://egress-user:***@proxy.corp.example:3128\""),
        "{text}"
    );
    toml::from_str::<toml::Table>(&text).expect("the redacted output is TOML");
    assert!(!format!("{config:?}").contains(PROXY_PASSWORD));
}

#[test]
fn proxy_file_is_read_and_its_trailing_newline_trimmed() {
    let files = Files::new();
    let path = files.write(
        "proxy_url",
        &format!("http://u:{PROXY_PASSWORD}@127.0.0.1:3128\n"),
    );
    let mut pairs = login();
    let path_text = path.display().to_string();
    pairs.push(("IPPROXY_UPSTREAM__PROXY_FILE", &path_text));
    let config = expect_ok(load(None, vars(&pairs)));
    let proxy = config.upstream.egress.https.expect("https");
    assert_eq!(proxy.address, "127.0.0.1:3128");
    assert_eq!(proxy.source, "upstream.proxy_file");
    assert_eq!(
        proxy.url(),
        format!("http://u:{PROXY_PASSWORD}@127.0.0.1:3128")
    );
}

#[test]
fn empty_or_missing_proxy_file_names_key_and_path() {
    let files = Files::new();
    let empty = files.write("empty", "\n");
    let missing = files.missing("missing");
    for path in [empty, missing] {
        let toml = with_auth(&format!(
            "[upstream]\nproxy_file = {:?}\n",
            path.display().to_string()
        ));
        let error = expect_problem(load_toml(&toml, &[]), "upstream.proxy_file");
        assert_eq!(error.problems().len(), 1, "{error}");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
    }
}

#[test]
fn proxy_and_proxy_file_both_set_are_refused() {
    let files = Files::new();
    let path = files.write("proxy_url", "http://127.0.0.1:3128");
    let toml = with_auth(&format!(
        "[upstream]\nproxy = \"http://u:{PROXY_PASSWORD}@127.0.0.1:3128\"\nproxy_file = {:?}\n",
        path.display().to_string()
    ));
    let error = expect_problem(load_toml(&toml, &[]), "upstream.proxy");
    assert!(!error.to_string().contains(PROXY_PASSWORD), "{error}");
}

#[test]
fn proxy_file_var_replaces_the_files_proxy() {
    let files = Files::new();
    let path = files.write("proxy_url", "http://from-file:3128");
    let toml = with_auth("[upstream]\nproxy = \"http://from-toml:3128\"\n");
    let path_text = path.display().to_string();
    let config = expect_ok(load_toml(
        &toml,
        &[("IPPROXY_UPSTREAM__PROXY_FILE", &path_text)],
    ));
    assert_eq!(
        config.upstream.egress.https.expect("https").address,
        "from-file:3128"
    );
}

#[test]
fn bad_upstream_proxy_names_the_key_without_echoing_the_password() {
    for url in [
        format!("https://u:{PROXY_PASSWORD}@proxy:3128"),
        format!("http://u:{PROXY_PASSWORD}@proxy"),
        format!("u:{PROXY_PASSWORD}@proxy:3128"),
        String::new(),
    ] {
        let mut pairs = login();
        pairs.push(("IPPROXY_UPSTREAM__PROXY", &url));
        let error = expect_problem(load(None, vars(&pairs)), "upstream.proxy");
        assert!(!error.to_string().contains(PROXY_PASSWORD), "{error}");
    }
}

#[test]
fn proxy_variables_flow_through_the_variable_list_without_the_unknown_key_rule() {
    let mut pairs = login();
    pairs.extend([
        ("HTTPS_PROXY", "http://egress:3128"),
        ("http_proxy", "http://plain-egress:3129"),
        ("HTTP_PROXY", "http://httpoxy:1"),
        ("NO_PROXY", "localhost,.internal,10.0.0.0/8"),
        ("ALL_PROXY", "socks5://not-read:1080"),
    ]);
    let config = expect_ok(load(None, vars(&pairs)));
    let egress = &config.upstream.egress;
    assert_eq!(egress.https.as_ref().expect("https").source, "HTTPS_PROXY");
    let http = egress.http.as_ref().expect("http");
    assert_eq!(
        (http.address.as_str(), http.source.as_str()),
        ("plain-egress:3129", "http_proxy")
    );
    assert_eq!(
        egress.no_proxy.as_ref().expect("no_proxy").entries,
        "localhost,.internal,10.0.0.0/8"
    );
}

#[test]
fn a_proxy_variable_that_cannot_be_used_is_named() {
    let mut pairs = login();
    pairs.push(("https_proxy", "socks5://u:pw-Zz1@proxy:1080"));
    let error = expect_problem(load(None, vars(&pairs)), "https_proxy");
    assert!(!error.to_string().contains("pw-Zz1"), "{error}");
}

#[test]
fn check_shows_an_egress_from_the_variables_as_comments_without_the_password() {
    let url = format!("http://u:{PROXY_PASSWORD}@egress:3128");
    let mut pairs = login();
    pairs.extend([("HTTPS_PROXY", url.as_str()), ("no_proxy", "localhost")]);
    let config = expect_ok(load(None, vars(&pairs)));
    let text = config.to_redacted_toml();
    assert!(!text.contains(PROXY_PASSWORD), "{text}");
    assert!(
        text.starts_with(
            "# egress from the environment: HTTPS targets through http://u:***@egress:3128 \
             (HTTPS_PROXY); plain-HTTP targets direct\n# reached directly (no_proxy): localhost\n"
        ),
        "{text}"
    );
    assert!(!text.contains("\nproxy ="), "not a key of the file: {text}");
    toml::from_str::<toml::Table>(&text).expect("the redacted output is TOML");
}

#[test]
fn without_a_proxy_everything_is_direct() {
    let config = expect_ok(load(None, vars(&login())));
    assert!(config.upstream.egress.is_direct());
    assert!(!config.to_redacted_toml().contains("egress"));
}

// --- the example configurations ---

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

// --- the variable table agrees with the file's structs ---

/// The field names serde knows for struct `T`.
fn struct_fields<T: for<'de> Deserialize<'de>>() -> Vec<&'static str> {
    struct Capture<'a>(&'a mut Vec<&'static str>);
    impl<'de> Deserializer<'de> for Capture<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only structs are inspected"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.extend_from_slice(fields);
            Err(de::Error::custom("fields captured"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }
    let mut fields = Vec::new();
    let _ = T::deserialize(Capture(&mut fields));
    fields
}

#[test]
fn every_file_key_of_a_plain_section_can_be_set_by_a_variable() {
    let sections = [
        ("server", struct_fields::<raw::RawServer>()),
        ("upstream", struct_fields::<raw::RawUpstream>()),
        ("access", struct_fields::<raw::RawAccess>()),
        ("log", struct_fields::<raw::RawLog>()),
        ("tracing", struct_fields::<raw::RawTracing>()),
    ];
    for (section, fields) in sections {
        let (_, table) = env::SECTION_KEYS
            .iter()
            .find(|(name, _)| *name == section)
            .unwrap_or_else(|| panic!("{section} missing from SECTION_KEYS"));
        let table: Vec<&str> = table.iter().map(|(key, _)| *key).collect();
        assert_eq!(fields, table, "[{section}]");
    }
    assert_eq!(struct_fields::<raw::RawCredential>(), env::CREDENTIAL_KEYS);
}

// --- tracing ---

#[test]
fn tracing_is_off_unless_an_endpoint_is_set() {
    let config = expect_ok(load(None, vars(&login())));
    assert!(!config.tracing.is_on());
    assert_eq!(config.tracing.service_name, "ipproxy");
    assert_eq!(config.tracing.sample_ratio, 1.0);
    let text = config.to_redacted_toml();
    assert!(text.contains("[tracing]"), "{text}");
    assert!(!text.contains("otlp_endpoint"), "{text}");
}

#[test]
fn tracing_keys_set_the_collector_service_and_ratio() {
    let config = expect_ok(load_toml(
        &with_auth(
            "[tracing]\notlp_endpoint = \"http://otel-collector:4318/\"\n\
             service_name = \"sms-sidecar\"\nsample_ratio = 0.25\n",
        ),
        &[],
    ));
    let endpoint = config.tracing.otlp_endpoint.as_ref().expect("on");
    assert_eq!(
        endpoint.traces_url(),
        "http://otel-collector:4318/v1/traces"
    );
    assert_eq!(config.tracing.service_name, "sms-sidecar");
    assert_eq!(config.tracing.sample_ratio, 0.25);
    let text = config.to_redacted_toml();
    for line in [
        "[tracing]",
        "otlp_endpoint = \"http://otel-collector:4318\"",
        "service_name = \"sms-sidecar\"",
        "sample_ratio = 0.25",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    assert!(!text.contains("from the environment"), "{text}");
    let with_path = expect_ok(load(
        None,
        vars(&[
            login()[0],
            login()[1],
            (
                "IPPROXY_TRACING__OTLP_ENDPOINT",
                "https://collector.internal/otlp",
            ),
            ("IPPROXY_TRACING__SAMPLE_RATIO", "0"),
        ]),
    ));
    let endpoint = with_path.tracing.otlp_endpoint.expect("on");
    assert_eq!(
        endpoint.traces_url(),
        "https://collector.internal/otlp/v1/traces"
    );
    assert_eq!(with_path.tracing.sample_ratio, 0.0);
}

#[test]
fn the_opentelemetry_variables_apply_when_the_keys_are_unset() {
    let mut pairs = login();
    pairs.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"));
    pairs.push(("OTEL_SERVICE_NAME", "from-otel"));
    let config = expect_ok(load(None, vars(&pairs)));
    assert_eq!(
        config
            .tracing
            .otlp_endpoint
            .as_ref()
            .map(OtlpEndpoint::traces_url),
        Some("http://127.0.0.1:4318/v1/traces".to_owned())
    );
    assert_eq!(config.tracing.service_name, "from-otel");
    let text = config.to_redacted_toml();
    assert!(
        text.contains(
            "# tracing from the environment: OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME"
        ),
        "{text}"
    );
    toml::from_str::<toml::Table>(&text).expect("still TOML");

    // The keys win over the variables; an empty variable counts as unset.
    pairs.push(("IPPROXY_TRACING__SERVICE_NAME", "from-key"));
    pairs.push(("IPPROXY_TRACING__OTLP_ENDPOINT", "http://collector:4318"));
    let config = expect_ok(load(None, vars(&pairs)));
    assert_eq!(config.tracing.service_name, "from-key");
    assert_eq!(
        config
            .tracing
            .otlp_endpoint
            .map(|endpoint| endpoint.traces_url()),
        Some("http://collector:4318/v1/traces".to_owned())
    );
    assert!(config.tracing.from_variables.is_empty());
    let mut empty = login();
    empty.push(("OTEL_EXPORTER_OTLP_ENDPOINT", " "));
    assert!(!expect_ok(load(None, vars(&empty))).tracing.is_on());
}

#[test]
fn tracing_problems_name_the_key_or_the_variable() {
    let error = load_toml(
        &with_auth(
            "[tracing]\notlp_endpoint = \"grpc://collector:4317\"\n\
             service_name = \" \"\nsample_ratio = 1.5\nexporter = \"otlp\"\n",
        ),
        &[],
    )
    .expect_err("invalid");
    let keys: Vec<&str> = error.problems().iter().map(|p| p.key.as_str()).collect();
    for key in [
        "tracing.otlp_endpoint",
        "tracing.service_name",
        "tracing.sample_ratio",
        "tracing.exporter",
    ] {
        assert!(keys.contains(&key), "{key} in {error}");
    }
    let mut pairs = login();
    pairs.push((
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://user:pw@collector:4318",
    ));
    pairs.push(("IPPROXY_TRACING__SAMPLE_RATIO", "most"));
    let error = load(None, vars(&pairs)).expect_err("invalid");
    let text = error.to_string();
    assert!(text.contains("OTEL_EXPORTER_OTLP_ENDPOINT: "), "{text}");
    assert!(text.contains("tracing.sample_ratio: "), "{text}");
    assert!(
        !text.contains("pw@"),
        "the URL's password is not repeated: {text}"
    );
}
