//! The proxy as an outsider attacks it, over real sockets: without a key, with a wrong
//! key, with rotated keys, outside the allowlist, with crafted paths; and secrets kept
//! out of everything it prints. Hostile and broken clients (methods, smuggling, slow
//! and silent connections, HTTP/2 floods) are in `tests/hostile/`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{Proxy, Sim, client, raw_request, raw_status, vars};

const KEY: &str = "app-one-key-4f1c9e";
const OTHER_KEY: &str = "app-two-key-77ab02";
/// A path the simulator echoes back (method, path, headers but `Authorization`).
const ECHO_PATH: &str = "/_rest/v4/my/did";

fn digest_line(key: &str) -> String {
    format!("{}\n", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A keys file in a temp dir (kept alive by the returned guard).
fn keys_file(content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("client-keys");
    std::fs::write(&path, content).expect("write keys file");
    (dir, path)
}

async fn proxy_with_keys(sim: &Sim, keys: &Path) -> Proxy {
    let mut all = sim.vars();
    all.extend(vars(&[(
        "IPPROXY_ACCESS__KEYS_FILE",
        &keys.display().to_string(),
    )]));
    Proxy::start(all).await
}

async fn get_with_key(proxy: &Proxy, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = client().get(proxy.url(path));
    if let Some(key) = key {
        request = request.header("proxy-authorization", format!("Bearer {key}"));
    }
    request.send().await.expect("request reaches the proxy")
}

// --- inbound keys ---

#[tokio::test]
async fn missing_or_wrong_key_gets_407_asking_for_bearer() {
    let sim = Sim::default().await;
    let (_dir, keys) = keys_file(&format!("# app one\n{}", digest_line(KEY)));
    let proxy = proxy_with_keys(&sim, &keys).await;

    for key in [None, Some("not-the-key"), Some(OTHER_KEY)] {
        let response = get_with_key(&proxy, ECHO_PATH, key).await;
        assert_eq!(response.status(), 407, "{key:?}");
        assert_eq!(response.headers()["proxy-authenticate"], "Bearer");
        let text = response.text().await.expect("body");
        let body: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(body["error"], "proxy_auth_required");
        if let Some(key) = key {
            assert!(!text.contains(key), "the error body echoes the key: {text}");
        }
    }
    // Another scheme, or the digest itself, is no key either.
    let response = client()
        .get(proxy.url(ECHO_PATH))
        .header("proxy-authorization", format!("Basic {KEY}"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 407);
    let digest = digest_line(KEY);
    let response = get_with_key(&proxy, ECHO_PATH, Some(digest.trim())).await;
    assert_eq!(response.status(), 407);
    assert_eq!(sim.counters().api_calls, 0, "nothing reached the upstream");
}

#[tokio::test]
async fn right_key_is_let_in_and_never_forwarded() {
    let sim = Sim::default().await;
    let (_dir, keys) = keys_file(&format!("{}{}", digest_line(OTHER_KEY), digest_line(KEY)));
    let proxy = proxy_with_keys(&sim, &keys).await;

    let response = get_with_key(&proxy, ECHO_PATH, Some(KEY)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let echo: Value = serde_json::from_str(&text).expect("echo json");
    assert_eq!(echo["path"], ECHO_PATH);
    let headers = echo["headers"].as_object().expect("echoed headers");
    assert!(
        !headers.contains_key("proxy-authorization"),
        "the client key reached the upstream: {headers:?}"
    );
    assert!(!text.contains(KEY), "{text}");
    assert_eq!(
        echo["auth"]["scheme"], "bearer",
        "the proxy's token was used"
    );
}

#[tokio::test]
async fn the_key_is_checked_before_the_path() {
    let sim = Sim::default().await;
    let (_dir, keys) = keys_file(&digest_line(KEY));
    let toml = format!(
        "[access]\nkeys_file = {:?}\nallow = [\"/_rest/v4/app/sms/\"]\n",
        keys.display().to_string()
    );
    let proxy = Proxy::start_with_file(&toml, sim.vars()).await;
    // Without a key, a crafted path and a forbidden one look the same: 407.
    for head in [
        format!(
            "GET /_rest/v4/app/sms/../../my HTTP/1.1\r\nHost: {}",
            proxy.addr
        ),
        format!("GET /_rest/v4/my/did HTTP/1.1\r\nHost: {}", proxy.addr),
    ] {
        assert_eq!(
            raw_status(&raw_request(proxy.addr, &head).await),
            407,
            "{head}"
        );
    }
    // With the key, each gets its own answer.
    let with_key = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: Bearer {KEY}",
            proxy.addr
        )
    };
    let crafted = raw_request(proxy.addr, &with_key("/_rest/v4/app/sms/../../my")).await;
    assert_eq!(raw_status(&crafted), 400);
    let forbidden = raw_request(proxy.addr, &with_key("/_rest/v4/my/did")).await;
    assert_eq!(raw_status(&forbidden), 403);
    assert_eq!(sim.counters().api_calls, 0);
}

#[tokio::test]
async fn malformed_keys_file_stops_the_start_naming_the_line_not_its_content() {
    let sim = Sim::default().await;
    let raw_key_pasted_by_mistake = "sk_live_raw_key_in_the_digest_file";
    let (_dir, keys) = keys_file(&format!(
        "# apps\n{}{raw_key_pasted_by_mistake}\n",
        digest_line(KEY)
    ));
    let mut all = sim.vars();
    all.extend(vars(&[(
        "IPPROXY_ACCESS__KEYS_FILE",
        &keys.display().to_string(),
    )]));
    let config = ipproxy::config::load(None, all).expect("the file exists, so config is valid");
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let served = tokio::time::timeout(
        Duration::from_secs(5),
        ipproxy::serve(
            config,
            ipproxy::Listeners { proxy, admin },
            std::future::pending(),
        ),
    )
    .await
    .expect("serve returns at once");
    let message = served.expect_err("a malformed keys file").to_string();
    assert!(message.contains("access.keys_file"), "{message}");
    assert!(message.contains("line 3"), "{message}");
    assert!(!message.contains(raw_key_pasted_by_mistake), "{message}");
}

/// `ipproxy hash-key [--name NAME]` with `key` on stdin: its exit status and output.
fn hash_key(key: &str, name: Option<&str>) -> (bool, String, String) {
    use std::io::Write as _;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ipproxy"));
    command.arg("hash-key");
    if let Some(name) = name {
        command.args(["--name", name]);
    }
    let mut child = command
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ipproxy hash-key");
    // A refused `--name` exits before reading stdin: the pipe may be closed by then.
    let written = child.stdin.take().expect("stdin").write_all(key.as_bytes());
    if let Err(error) = written {
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write the key: {error}"
        );
    }
    let output = child.wait_with_output().expect("hash-key ends");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn hash_key_prints_the_keys_file_line_with_or_without_a_name() {
    let (ok, named, _) = hash_key(KEY, Some("billing"));
    assert!(ok);
    assert_eq!(named, format!("{} billing\n", digest_line(KEY).trim_end()));
    let (ok, unnamed, _) = hash_key(OTHER_KEY, None);
    assert!(ok);
    assert_eq!(unnamed, digest_line(OTHER_KEY));
    for bad in ["two words", "name\u{1b}[31m", ""] {
        let (ok, out, err) = hash_key(KEY, Some(bad));
        assert!(!ok && out.is_empty(), "{bad:?}");
        assert!(err.contains("--name"), "{err}");
    }

    // Both lines, as printed, make a keys file the proxy takes.
    let sim = Sim::default().await;
    let (_dir, keys) = keys_file(&format!("{named}{unnamed}"));
    let proxy = proxy_with_keys(&sim, &keys).await;
    for key in [KEY, OTHER_KEY] {
        let response = get_with_key(&proxy, ECHO_PATH, Some(key)).await;
        assert_eq!(response.status(), 200, "{key}");
    }
}

// --- allowlist and crafted paths ---

const ALLOW_TOML: &str = r#"
[access]
allow = ["/_rest/v4/app/sms/", { prefix = "/_rest/v4/my/", methods = ["GET"] }]
"#;

#[tokio::test]
async fn allowlist_admits_listed_prefixes_and_methods_only() {
    let sim = Sim::default().await;
    let proxy = Proxy::start_with_file(ALLOW_TOML, sim.vars()).await;
    let client = client();

    let allowed = client
        .get(proxy.url("/_rest/v4/my/did"))
        .send()
        .await
        .expect("request");
    assert_eq!(allowed.status(), 200);

    for (method, path) in [
        (http::Method::GET, "/_rest/v4/numbers/purchase"),
        (http::Method::GET, "/_rest/v4/mystery"),
        (http::Method::GET, "/_rest/v4/app/smsx"),
        (http::Method::DELETE, "/_rest/v4/my/did"),
        (http::Method::POST, "/_rest/v4/my/did"),
    ] {
        let response = client
            .request(method.clone(), proxy.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 403, "{method} {path}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], "path_not_allowed");
    }
    assert_eq!(
        sim.counters().api_calls,
        1,
        "only the allowed request went up"
    );
}

#[tokio::test]
async fn crafted_paths_are_refused_and_never_reach_the_upstream() {
    let sim = Sim::default().await;
    let proxy = Proxy::start_with_file(ALLOW_TOML, sim.vars()).await;
    for path in [
        "/_rest/v4/app/sms/../../numbers/purchase",
        "/_rest/v4/app/sms/%2e%2e/%2e%2e/numbers/purchase",
        "/_rest/v4/app/sms/%2E%2e/x",
        "/_rest/v4/app/sms/.%2e/x",
        "/_rest/v4/app/sms/./send",
        "/_rest/v4/app/sms/..%2fnumbers",
        "/_rest/v4/app/sms%2f..%2f..%2fnumbers",
        "/_rest/v4/app/sms/%252e%252e/x",
        "/_rest/v4/app/sms//send",
        "//_rest/v4/app/sms/send",
        "/_rest/v4/app/sms/..\\..\\numbers",
        "/_rest/v4/app/sms/%5c..%5cnumbers",
        "/_rest/v4/app/sms/send%00",
        "*",
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}", proxy.addr);
        let response = raw_request(proxy.addr, &head).await;
        let status = raw_status(&response);
        assert_eq!(status, 400, "{path}: {response}");
    }
    assert_eq!(sim.counters().api_calls, 0, "no crafted path was forwarded");
}

// Absolute-form targets, CONNECT, oversized and malformed heads and slow clients:
// tests/hostile/.

// --- secrets never printed ---

const PASSWORD: &str = "pw-never-print-3e8d";
const TOKEN: &str = "tok-never-print-91c2";

fn secret_config_toml() -> String {
    format!(
        "[auth]\nusername = \"api-user\"\npassword = \"{PASSWORD}\"\n\
         [credentials.fixed]\nkind = \"static\"\ntoken = \"{TOKEN}\"\n\
         [[route]]\nprefix = \"/\"\n"
    )
}

#[test]
fn debug_output_of_a_loaded_config_shows_no_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ipproxy.toml");
    std::fs::write(&file, secret_config_toml()).expect("write config");
    let config = ipproxy::config::load(Some(&file), Vec::new()).expect("valid config");
    for text in [format!("{config:?}"), format!("{config:#?}")] {
        assert!(!text.contains(PASSWORD), "password in Debug output");
        assert!(!text.contains(TOKEN), "token in Debug output");
    }
}

#[test]
fn check_prints_every_secret_as_stars() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ipproxy.toml");
    std::fs::write(&file, secret_config_toml()).expect("write config");
    let (_keys_dir, keys) = keys_file(&digest_line(KEY));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ipproxy"))
        .arg("check")
        .arg("--config")
        .arg(&file)
        .env_clear()
        .env("IPPROXY_ACCESS__KEYS_FILE", &keys)
        .output()
        .expect("run ipproxy check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for secret in [PASSWORD, TOKEN, KEY, digest_line(KEY).trim()] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}"
        );
    }
    assert!(stdout.contains("password = \"***\""), "{stdout}");
    assert!(stdout.contains("token = \"***\""), "{stdout}");
}
