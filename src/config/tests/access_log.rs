//! `[access]` and `[log]`: keys files, allowlists, browser settings, log formats and levels.

use super::*;

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
