//! `[server]` and `[upstream]`: addresses, limits, timeouts, the upstream URL and CA.

use super::*;

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
