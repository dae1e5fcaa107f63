//! Egress: the forward proxy, its credentials and `NO_PROXY`.

use super::*;

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
