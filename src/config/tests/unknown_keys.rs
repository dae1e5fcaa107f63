//! Unknown keys and type errors: each named, with where it came from.

use super::*;

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
