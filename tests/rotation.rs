//! Secrets change without restarts: a rotated password is used by the next login, a
//! credential in backoff recovers once its file is right (by itself, or at once on
//! SIGHUP), a rewritten keys file takes effect within 5 s, and the container's own
//! configuration switches to a static token by variables alone. Waits are for events
//! (a readiness change, a reload counter, a login count), each bounded.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipproxy::sim::{AuthMode, SimConfig};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::child::ChildProxy;
use support::keepalive::KeepAlive;
use support::metrics::{await_above, scrape, sum};
use support::{PATIENCE, Proxy, Sim, client, eventually, vars};

const SMS_BODY: &str = r#"{"from":"+15550001111","to":"+15550002222","text":"hi"}"#;

/// A secret file in its own temp dir (kept alive by the guard).
fn secret_file(name: &str, content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, content).expect("write secret file");
    (dir, path)
}

/// Rewrites a secret file the way a Kubernetes Secret update does: a new file renamed
/// over the old one.
fn rotate(path: &Path, content: &str) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, content).expect("write the new secret");
    std::fs::rename(&staged, path).expect("rename it over the old one");
}

/// The simulator's variables with the password read from `password_file`.
fn password_file_vars(sim: &Sim, password_file: &Path) -> Vec<(String, String)> {
    let mut all = sim.vars();
    all.retain(|(key, _)| key != "IPPROXY_AUTH__PASSWORD");
    all.extend(vars(&[(
        "IPPROXY_AUTH__PASSWORD_FILE",
        &password_file.display().to_string(),
    )]));
    all
}

async fn readyz(url: &str) -> u16 {
    client()
        .get(url)
        .send()
        .await
        .map_or(0, |response| response.status().as_u16())
}

async fn send_sms(url: &str) -> u16 {
    client()
        .post(url)
        .header("content-type", "application/json")
        .body(SMS_BODY)
        .send()
        .await
        .expect("request reaches the proxy")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_wrong_password_file_recovers_by_itself_once_it_holds_the_right_one() {
    let sim = Sim::default().await;
    let (_dir, password) = secret_file("password", "wrong-password\n");
    let proxy = Proxy::start(password_file_vars(&sim, &password)).await;
    assert!(
        eventually(PATIENCE, || async { sim.counters().auth_calls >= 1 }).await,
        "the first login was tried"
    );
    assert_eq!(readyz(&proxy.admin_url("/readyz")).await, 503);
    assert_eq!(
        sim.counters().tokens_issued,
        0,
        "the wrong password was refused"
    );

    rotate(&password, "demo-password\n");
    // The next attempt of the backoff (1 s, then up to 2 s, 4 s...) reads the file.
    assert!(
        eventually(Duration::from_secs(30), || async {
            readyz(&proxy.admin_url("/readyz")).await == 200
        })
        .await,
        "ready without a signal or a restart: {:?}",
        sim.counters()
    );
    assert_eq!(send_sms(&proxy.url("/_rest/v4/app/sms/send")).await, 202);
    assert_eq!(sim.counters().tokens_issued, 1);
}

#[tokio::test]
async fn a_password_rotated_while_the_token_is_valid_is_used_by_refresh() {
    let sim = Sim::default().await;
    let (_dir, password) = secret_file("password", "demo-password\n");
    let proxy = Proxy::start(password_file_vars(&sim, &password)).await;
    assert!(
        eventually(PATIENCE, || async {
            readyz(&proxy.admin_url("/readyz")).await == 200
        })
        .await
    );
    sim.sim.set_password("rotated-password");
    rotate(&password, "rotated-password\n");
    let response = client()
        .post(proxy.admin_url("/refresh"))
        .send()
        .await
        .expect("refresh");
    assert_eq!(response.status(), 200, "the login used the new password");
    let counters = sim.counters();
    assert_eq!((counters.auth_calls, counters.tokens_issued), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_logs_in_at_once_with_the_new_password_and_drops_no_connection() {
    let sim = Sim::default().await;
    // The first login is answered 429 with Retry-After: 60, so without SIGHUP the
    // next attempt would be a minute away.
    sim.sim.set_auth_mode(AuthMode::RateLimitedFor(60));
    let (_dir, password) = secret_file("password", "wrong-password\n");
    let child = ChildProxy::start(&password_file_vars(&sim, &password)).await;
    assert!(eventually(PATIENCE, || async { sim.counters().auth_calls >= 1 }).await);
    assert_eq!(readyz(&child.admin_url("/readyz")).await, 503);
    let mut connection = KeepAlive::open(child.addr).await;
    let (status, _, body) = connection.get("/_rest/v4/my/did").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("token_unavailable"))
    );

    sim.sim.set_auth_mode(AuthMode::Ok);
    sim.sim.set_password("rotated-password");
    rotate(&password, "rotated-password\n");
    let signalled = Instant::now();
    child.signal("HUP");
    assert!(
        eventually(Duration::from_secs(30), || async {
            readyz(&child.admin_url("/readyz")).await == 200
        })
        .await,
        "SIGHUP started a login"
    );
    let took = signalled.elapsed();
    // Without the SIGHUP the next attempt would wait out the 60 s Retry-After.
    assert!(
        took < Duration::from_secs(20),
        "ready {took:?} after SIGHUP"
    );
    assert_eq!(sim.counters().auth_calls, 2, "one login on SIGHUP");

    // The connection opened before the signal still works.
    let (status, _, _) = connection.get("/_rest/v4/my/did").await;
    assert_eq!(status, 200);

    let lines = child.lines();
    let reread = lines
        .iter()
        .find(|line| line.contains("SIGHUP: secret files re-read"))
        .expect("one line says what was re-read");
    assert!(reread.contains(&password.display().to_string()), "{reread}");
    for line in &lines {
        assert!(!line.contains("rotated-password"), "{line}");
        assert!(!line.contains("wrong-password"), "{line}");
    }
}

fn digest_line(key: &str) -> String {
    format!("{}\n", hex::encode(Sha256::digest(key.as_bytes())))
}

async fn status_with_key(url: &str, key: &str) -> u16 {
    client()
        .get(url)
        .header("proxy-authorization", format!("Bearer {key}"))
        .send()
        .await
        .expect("request reaches the proxy")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_keys_file_refuses_the_old_key_and_accepts_the_new_within_5_seconds() {
    const OLD_KEY: &str = "old-client-key-81f3";
    const NEW_KEY: &str = "new-client-key-2c9d";
    let sim = Sim::default().await;
    let (_dir, keys) = secret_file("keys", &digest_line(OLD_KEY));
    let mut all = sim.vars();
    all.extend(vars(&[(
        "IPPROXY_ACCESS__KEYS_FILE",
        &keys.display().to_string(),
    )]));
    let child = ChildProxy::start(&all).await;
    let echo = child.url("/_rest/v4/my/did");
    let metrics = child.admin_url("/metrics");
    let client = client();
    assert!(
        eventually(PATIENCE, || async {
            status_with_key(&echo, OLD_KEY).await == 200
        })
        .await
    );
    let reloads = |text: &str| {
        sum(
            text,
            "ipproxy_secret_reloads_total",
            &[("trigger", "file_changed")],
        )
    };
    let before = reloads(&scrape(&client, &metrics).await);

    rotate(&keys, &digest_line(NEW_KEY));
    let seen = await_above(
        &client,
        &metrics,
        "ipproxy_secret_reloads_total",
        &[("trigger", "file_changed")],
        before,
        Duration::from_secs(5),
    )
    .await
    .expect("the keys file was re-read within 5 s");
    assert_eq!(status_with_key(&echo, OLD_KEY).await, 407);
    assert_eq!(status_with_key(&echo, NEW_KEY).await, 200);

    // A broken file keeps the keys in force (a rotation caught half-way must not lock
    // every app out): checked after its re-read, not after a guessed sleep.
    rotate(&keys, "this line is not a digest\n");
    await_above(
        &client,
        &metrics,
        "ipproxy_secret_reloads_total",
        &[("trigger", "file_changed")],
        reloads(&seen),
        Duration::from_secs(5),
    )
    .await
    .expect("the broken file was re-read");
    assert_eq!(status_with_key(&echo, NEW_KEY).await, 200);
    let lines = child.lines();
    assert!(
        lines
            .iter()
            .any(|line| line.contains("keeping the previous client keys")),
        "the broken file is reported"
    );
    assert!(
        lines
            .iter()
            .all(|line| !line.contains("this line is not a digest"))
    );
}

#[tokio::test]
async fn the_container_config_switched_to_static_by_variables_injects_the_static_token() {
    let sim = Sim::start(SimConfig {
        static_tokens: vec!["portal-static-token".into()],
        ..SimConfig::default()
    })
    .await;
    let (_dir, token) = secret_file("token", "portal-static-token\n");
    let container = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/container.toml");
    let child_vars = vars(&[
        ("IPPROXY_CONFIG", &container.display().to_string()),
        ("IPPROXY_UPSTREAM__URL", &sim.url()),
        ("IPPROXY_AUTH__KIND", "static"),
        ("IPPROXY_AUTH__TOKEN_FILE", &token.display().to_string()),
    ]);
    let child = ChildProxy::start(&child_vars).await;
    let echo: Value = client()
        .get(child.url("/_rest/v4/my/did"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("echo");
    assert_eq!(
        echo["auth"]["token_id"], 0,
        "the static token was sent: {echo}"
    );
    assert_eq!(echo["auth"]["scheme"], "bearer");
    let lines = child.lines();
    for key in [
        "auth.url",
        "auth.password_file",
        "auth.token_ttl",
        "auth.refresh_before",
    ] {
        let warned = lines
            .iter()
            .filter(|line| line.contains("WARN") && line.contains(&format!("\"{key}\"")))
            .count();
        assert_eq!(warned, 1, "one warning for {key}: {lines:?}");
    }

    // `check` accepts the same environment and names the ignored keys.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ipproxy"))
        .arg("check")
        .env_clear()
        .envs(child_vars.iter().map(|(key, value)| (key, value)))
        .output()
        .expect("run check");
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("warning: auth.url: ignored"), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("portal-static-token"), "{stdout}");
}
