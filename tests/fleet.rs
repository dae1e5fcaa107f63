//! Many replicas behave like one: several real `ipproxy run` processes share one token
//! through a real `redis-server` (persistence off, started by the test), against the
//! simulator in invalidate-on-reauth mode. One login per refresh for the fleet, no
//! failed request, and availability first when Redis or a replica dies.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::future::join_all;
use ipproxy::sim::{AuthMode, SimConfig};
use serde_json::Value;
use support::child::ChildProxy;
use support::metrics::{scrape, sum};
use support::redis::{RedisServer, RedisTls};
use support::tls::TestPki;
use support::{Sim, client, eventually, vars};

const SMS_BODY: &str = r#"{"from":"+15550001111","to":"+15550002222","text":"hi"}"#;
const STORE_KEY: &str = "5f0c2a7e9b1d4c3a8e6f7b2d1c0a9e8f7d6c5b4a392817160f1e2d3c4b5a6978";
const REDIS_PASSWORD: &str = "redis-pass-0c1d";

/// A store key file (kept alive by the guard).
fn key_file(key: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store-key");
    std::fs::write(&path, format!("{key}\n")).expect("write key file");
    (dir, path)
}

/// The simulator's variables plus a redis store.
fn replica_vars(sim: &Sim, redis_url: &str, key: &std::path::Path) -> Vec<(String, String)> {
    let mut all = sim.vars();
    all.extend(vars(&[
        ("IPPROXY_STORE__KIND", "redis"),
        ("IPPROXY_STORE__URL", redis_url),
        ("IPPROXY_STORE__KEY_FILE", &key.display().to_string()),
        ("IPPROXY_STORE__LOCK_TTL", "2s"),
    ]));
    all
}

async fn start_fleet(count: usize, replica_vars: &[(String, String)]) -> Vec<ChildProxy> {
    join_all((0..count).map(|_| ChildProxy::start(replica_vars))).await
}

async fn all_ready(fleet: &[ChildProxy]) -> bool {
    eventually(Duration::from_secs(10), || async {
        for replica in fleet {
            let ready = client()
                .get(replica.admin_url("/readyz"))
                .send()
                .await
                .is_ok_and(|response| response.status() == 200);
            if !ready {
                return false;
            }
        }
        true
    })
    .await
}

async fn send_sms(client: &reqwest::Client, url: &str, body: &str) -> u16 {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .map_or(0, |response| response.status().as_u16())
}

/// The simulator's id of the token a replica sends (from the echo).
async fn token_id(replica: &ChildProxy) -> u64 {
    let echo: Value = client()
        .get(replica.url("/_rest/v4/my/did"))
        .send()
        .await
        .expect("echo")
        .json()
        .await
        .expect("echo json");
    echo["auth"]["token_id"].as_u64().expect("a token id")
}

async fn readyz_body(replica: &ChildProxy) -> (u16, Value) {
    let response = client()
        .get(replica.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readyz json"))
}

fn invalidating(token_ttl: Duration) -> SimConfig {
    SimConfig {
        invalidate_on_reauth: true,
        token_ttl,
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_starting_together_make_one_login_and_share_its_token() {
    let sim = Sim::start(invalidating(Duration::from_secs(3600))).await;
    // A slow login: every replica starts before the first one is done.
    sim.sim.set_auth_mode(AuthMode::Slow(500));
    let redis = RedisServer::start();
    let (_dir, key) = key_file(STORE_KEY);
    let fleet = start_fleet(3, &replica_vars(&sim, &redis.url(), &key)).await;
    assert!(all_ready(&fleet).await, "{:?}", sim.counters());
    assert_eq!(sim.counters().auth_calls, 1, "one login for the fleet");
    let ids = join_all(fleet.iter().map(token_id)).await;
    assert!(
        ids.windows(2).all(|pair| pair[0] == pair[1]),
        "one token: {ids:?}"
    );
    let (_, body) = readyz_body(&fleet[0]).await;
    assert_eq!(body["store"]["kind"], "redis");
    assert_eq!(body["store"]["up"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_replicas_refresh_once_per_period_and_fail_nothing() {
    // 6 s tokens: each replica refreshes ahead at about half-life, 3 s.
    let sim = Sim::start(invalidating(Duration::from_secs(6))).await;
    let redis = RedisServer::start();
    let (_dir, key) = key_file(STORE_KEY);
    let fleet = start_fleet(3, &replica_vars(&sim, &redis.url(), &key)).await;
    assert!(all_ready(&fleet).await);
    let client = client();
    let urls: Vec<String> = fleet
        .iter()
        .map(|replica| replica.url("/_rest/v4/app/sms/send"))
        .collect();
    let started = Instant::now();
    let run = Duration::from_secs(8);
    let workers = (0..6).map(|worker| {
        let client = client.clone();
        let urls = urls.clone();
        async move {
            let mut statuses = Vec::new();
            let mut next = worker;
            // Round-robin over the replicas, bounded by time and count.
            while started.elapsed() < run && statuses.len() < 20_000 {
                statuses.push(send_sms(&client, &urls[next % urls.len()], SMS_BODY).await);
                next += 1;
            }
            statuses
        }
    });
    let statuses: Vec<u16> = join_all(workers).await.into_iter().flatten().collect();
    let failed = statuses.iter().filter(|status| **status != 202).count();
    let counters = sim.counters();
    assert!(statuses.len() > 300, "traffic flowed: {}", statuses.len());
    assert_eq!(
        failed,
        0,
        "{failed} of {} failed; {counters:?}",
        statuses.len()
    );
    // The start-up login, then one per refresh period (≈ 3 s) for the whole fleet.
    let periods = (started.elapsed().as_secs_f64() / 2.7).ceil() as u64;
    assert!(
        counters.auth_calls <= 1 + periods,
        "{} logins for {periods} refresh periods: {counters:?}",
        counters.auth_calls
    );
    assert!(
        counters.auth_calls >= 2,
        "the fleet refreshed: {counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_costs_the_fleet_at_most_two_logins() {
    let sim = Sim::start(invalidating(Duration::from_secs(3600))).await;
    let redis = RedisServer::start();
    let (_dir, key) = key_file(STORE_KEY);
    let fleet = start_fleet(3, &replica_vars(&sim, &redis.url(), &key)).await;
    assert!(all_ready(&fleet).await);
    sim.sim.revoke_all();
    sim.sim.reset_counters();
    let client = client();
    let sends = (0..30).map(|index| {
        let client = client.clone();
        let url = fleet[index % fleet.len()].url("/_rest/v4/app/sms/send");
        async move { send_sms(&client, &url, SMS_BODY).await }
    });
    let statuses = join_all(sends).await;
    assert!(statuses.iter().all(|status| *status == 202), "{statuses:?}");
    let logins = sim.counters().auth_calls;
    assert!(
        (1..=2).contains(&logins),
        "{logins} logins after a revocation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_401s_across_the_fleet_cause_at_most_one_login_per_interval() {
    let sim = Sim::start(SimConfig {
        numbers: vec!["+15550001111".into()],
        ..invalidating(Duration::from_secs(3600))
    })
    .await;
    let redis = RedisServer::start();
    let (_dir, key) = key_file(STORE_KEY);
    let fleet = start_fleet(3, &replica_vars(&sim, &redis.url(), &key)).await;
    assert!(all_ready(&fleet).await);
    sim.sim.reset_counters();
    let client = client();
    let not_ours = r#"{"from":"+15559999999","to":"+15550002222","text":"hi"}"#;
    for index in 0..100 {
        let url = fleet[index % fleet.len()].url("/_rest/v4/app/sms/send");
        assert_eq!(
            send_sms(&client, &url, not_ours).await,
            401,
            "passed through"
        );
    }
    let counters = sim.counters();
    assert!(counters.auth_calls <= 1, "{counters:?}");
    let mut suppressed = 0.0;
    for replica in &fleet {
        let text = scrape(&client, &replica.admin_url("/metrics")).await;
        suppressed += sum(&text, "ipproxy_reauth_suppressed_total", &[]);
    }
    assert!(
        suppressed >= 90.0,
        "{suppressed} 401s counted as suppressed"
    );
    // A good request still works on every replica.
    for replica in &fleet {
        let url = replica.url("/_rest/v4/app/sms/send");
        assert_eq!(send_sms(&client, &url, SMS_BODY).await, 202);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_killed_mid_load_nothing_fails_and_the_fleet_converges_when_it_is_back() {
    let sim = Sim::start(SimConfig {
        token_ttl: Duration::from_secs(3600),
        ..SimConfig::default()
    })
    .await;
    let mut redis = RedisServer::start();
    let (_dir, key) = key_file(STORE_KEY);
    let fleet = start_fleet(2, &replica_vars(&sim, &redis.url(), &key)).await;
    assert!(all_ready(&fleet).await);
    let client = client();

    redis.kill();
    // Requests keep working and each replica shows the store down (its probe runs
    // every 2 s), readiness staying 200.
    for replica in &fleet {
        let url = replica.url("/_rest/v4/app/sms/send");
        assert_eq!(send_sms(&client, &url, SMS_BODY).await, 202);
    }
    for replica in &fleet {
        assert!(
            eventually(Duration::from_secs(6), || async {
                let (status, body) = readyz_body(replica).await;
                status == 200 && body["store"]["up"] == false
            })
            .await,
            "the store is shown down, readiness 200"
        );
    }
    // A login during the outage: each replica on its own.
    sim.sim.revoke_all();
    for replica in &fleet {
        let url = replica.url("/_rest/v4/app/sms/send");
        assert_eq!(
            send_sms(&client, &url, SMS_BODY).await,
            202,
            "logged in alone"
        );
    }
    let split = join_all(fleet.iter().map(token_id)).await;
    assert_ne!(split[0], split[1], "two tokens while Redis is down");

    redis.restart();
    for replica in &fleet {
        assert!(
            eventually(Duration::from_secs(6), || async {
                readyz_body(replica).await.1["store"]["up"] == true
            })
            .await,
            "the store is shown up again"
        );
    }
    // The replica that published first, if its token was the older one, adopts the
    // newer one at its second look (5–10 s after the recovery).
    assert!(
        eventually(Duration::from_secs(30), || async {
            let ids = join_all(fleet.iter().map(token_id)).await;
            ids[0] == ids[1]
        })
        .await,
        "the fleet converged on one token"
    );
    let lines: Vec<String> = fleet.iter().flat_map(ChildProxy::lines).collect();
    let outages = lines
        .iter()
        .filter(|line| line.contains("token store unreachable"))
        .count();
    let ends = lines
        .iter()
        .filter(|line| line.contains("token store reachable again"))
        .count();
    assert_eq!((outages, ends), (2, 2), "one line per replica at each edge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_holding_the_lock_is_taken_over_within_lock_ttl() {
    let sim = Sim::start(invalidating(Duration::from_secs(3600))).await;
    // The first login hangs: its replica holds (and renews) the lock meanwhile.
    sim.sim.set_auth_mode(AuthMode::Slow(60_000));
    let redis = RedisServer::start();
    let (_dir, key) = key_file(STORE_KEY);
    let all = replica_vars(&sim, &redis.url(), &key);
    let mut holder = ChildProxy::start(&all).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            sim.counters().auth_calls == 1
        })
        .await
    );
    let other = ChildProxy::start(&all).await;
    holder.kill();
    let killed = Instant::now();
    sim.sim.set_auth_mode(AuthMode::Ok);
    assert!(
        eventually(Duration::from_secs(6), || async {
            client()
                .get(other.admin_url("/readyz"))
                .send()
                .await
                .is_ok_and(|response| response.status() == 200)
        })
        .await,
        "the other replica took over"
    );
    let took = killed.elapsed();
    // The lease is 2 s, renewed every third of it: at most 2 s left after the kill.
    assert!(
        took < Duration::from_millis(3500),
        "took over after {took:?}"
    );
    assert_eq!(sim.counters().tokens_issued, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_entry_or_another_key_is_logged_never_used_and_replaced() {
    let sim = Sim::default().await;
    let redis = RedisServer::start();
    redis.set("ipproxy:{default}:token", b"v1:41:not-base64-!!");
    let (_dir, key) = key_file(STORE_KEY);
    let first = ChildProxy::start(&replica_vars(&sim, &redis.url(), &key)).await;
    assert!(all_ready(std::slice::from_ref(&first)).await);
    assert_eq!(
        sim.counters().auth_calls,
        1,
        "logged in instead of using it"
    );
    assert!(
        first
            .lines()
            .iter()
            .any(|line| line.contains("does not open") && line.contains("\"default\"")),
        "the unreadable entry is logged, naming the credential"
    );
    let (key, value) = redis
        .dump()
        .into_iter()
        .find(|(key, _)| key.ends_with(":token"))
        .expect("the entry");
    assert_eq!(key, "ipproxy:{default}:token");
    assert!(
        value.starts_with(b"v1:42:"),
        "replaced by the next generation"
    );

    // A replica with another key cannot open the entry: it logs in itself.
    let other_key = "0".repeat(63) + "1";
    let (_other_dir, other_key) = key_file(&other_key);
    let second = ChildProxy::start(&replica_vars(&sim, &redis.url(), &other_key)).await;
    assert!(all_ready(std::slice::from_ref(&second)).await);
    assert_eq!(sim.counters().auth_calls, 2);
    assert!(
        second
            .lines()
            .iter()
            .any(|line| line.contains("does not open"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_key_or_password_is_in_redis_or_in_any_output_in_the_clear() {
    let sim = Sim::default().await;
    let redis = RedisServer::start_with(Some(REDIS_PASSWORD), None);
    let (_dir, key) = key_file(STORE_KEY);
    let replica = ChildProxy::start(&replica_vars(&sim, &redis.url(), &key)).await;
    assert!(all_ready(std::slice::from_ref(&replica)).await);
    let client = client();
    assert_eq!(
        send_sms(&client, &replica.url("/_rest/v4/app/sms/send"), SMS_BODY).await,
        202
    );
    let tokens = sim.sim.issued_tokens();
    assert_eq!(tokens.len(), 1);
    let token = &tokens[0];
    let encodings = [
        token.clone(),
        base64::engine::general_purpose::STANDARD.encode(token),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token),
        hex::encode(token),
    ];
    let dump = redis.dump();
    assert!(!dump.is_empty());
    for (name, value) in &dump {
        for secret in encodings
            .iter()
            .map(String::as_bytes)
            .chain([STORE_KEY.as_bytes(), b"demo-password".as_slice()])
        {
            assert!(
                !value.windows(secret.len()).any(|window| window == secret),
                "{name} holds a secret in the clear"
            );
        }
    }
    let metrics = scrape(&client, &replica.admin_url("/metrics")).await;
    let (_, readyz) = readyz_body(&replica).await;
    let mut output = replica.lines();
    output.push(metrics);
    output.push(readyz.to_string());
    for line in &output {
        for secret in [token.as_str(), STORE_KEY, REDIS_PASSWORD, "demo-password"] {
            assert!(!line.contains(secret), "a secret in: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_with_a_password_in_a_url_file_is_used_and_check_shows_stars() {
    let pki = TestPki::generate();
    let redis = RedisServer::start_with(
        Some(REDIS_PASSWORD),
        Some(RedisTls {
            cert_pem: pki.leaf_pem.clone(),
            key_pem: pki.leaf_key_pem.clone(),
        }),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = pki.write_ca(&dir);
    let url_file = dir.path().join("redis-url");
    std::fs::write(&url_file, format!("{}\n", redis.url())).expect("url file");
    let (_key_dir, key) = key_file(STORE_KEY);
    let sim = Sim::default().await;
    let mut all = sim.vars();
    all.extend(vars(&[
        ("IPPROXY_STORE__KIND", "redis"),
        ("IPPROXY_STORE__URL_FILE", &url_file.display().to_string()),
        ("IPPROXY_STORE__KEY_FILE", &key.display().to_string()),
        ("IPPROXY_STORE__CA_FILE", &ca.display().to_string()),
    ]));
    let fleet = start_fleet(2, &all).await;
    assert!(all_ready(&fleet).await);
    assert_eq!(
        sim.counters().auth_calls,
        1,
        "the second replica adopted over TLS"
    );
    for replica in &fleet {
        assert_eq!(readyz_body(replica).await.1["store"]["up"], true);
    }

    // `check` with the URL inline: the password shown as ***.
    all.retain(|(name, _)| name != "IPPROXY_STORE__URL_FILE");
    all.push(("IPPROXY_STORE__URL".into(), redis.url()));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ipproxy"))
        .arg("check")
        .env_clear()
        .envs(all.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("run check");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(":***@localhost"), "{stdout}");
    assert!(!stdout.contains(REDIS_PASSWORD), "{stdout}");
    assert!(!stdout.contains(STORE_KEY), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_takes_a_rotated_store_key_and_a_new_url_file_without_a_restart() {
    const NEW_KEY: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let sim = Sim::default().await;
    let old_redis = RedisServer::start();
    let new_redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let url_file = dir.path().join("redis-url");
    std::fs::write(&url_file, format!("{}\n", old_redis.url())).expect("url file");
    let (_key_dir, key) = key_file(STORE_KEY);
    let mut all = sim.vars();
    all.extend(vars(&[
        ("IPPROXY_STORE__KIND", "redis"),
        ("IPPROXY_STORE__URL_FILE", &url_file.display().to_string()),
        ("IPPROXY_STORE__KEY_FILE", &key.display().to_string()),
    ]));
    let replica = ChildProxy::start(&all).await;
    assert!(all_ready(std::slice::from_ref(&replica)).await);
    assert!(
        !old_redis.dump().is_empty(),
        "the entry went to the first Redis"
    );

    // Rotate: the new key first (it seals), the old one second (it still opens); and
    // point the URL file at the other Redis.
    std::fs::write(&key, format!("{NEW_KEY}\n{STORE_KEY}\n")).expect("rotate the key");
    std::fs::write(&url_file, format!("{}\n", new_redis.url())).expect("new url");
    replica.signal("HUP");
    let client = client();
    assert!(
        eventually(Duration::from_secs(5), || async {
            scrape(&client, &replica.admin_url("/metrics"))
                .await
                .contains("ipproxy_secret_reloads_total{trigger=\"sighup\"} 1")
        })
        .await,
        "the SIGHUP was handled"
    );
    let response = client
        .post(replica.admin_url("/refresh"))
        .send()
        .await
        .expect("refresh");
    assert_eq!(response.status(), 200);
    assert!(
        new_redis
            .dump()
            .iter()
            .any(|(name, _)| name.ends_with(":token")),
        "the new entry went to the new Redis"
    );

    // A replica that only knows the new key opens that entry: it adopts, no login.
    let (_new_dir, new_key) = key_file(NEW_KEY);
    let logins = sim.counters().auth_calls;
    let mut newcomer_vars = sim.vars();
    newcomer_vars.extend(vars(&[
        ("IPPROXY_STORE__KIND", "redis"),
        ("IPPROXY_STORE__URL", &new_redis.url()),
        ("IPPROXY_STORE__KEY_FILE", &new_key.display().to_string()),
    ]));
    let newcomer = ChildProxy::start(&newcomer_vars).await;
    assert!(all_ready(std::slice::from_ref(&newcomer)).await);
    assert_eq!(sim.counters().auth_calls, logins, "sealed with the new key");
    let reread = replica
        .lines()
        .into_iter()
        .find(|line| line.contains("SIGHUP: secret files re-read"))
        .expect("one line says what was re-read");
    assert!(
        reread.contains("redis-url") && reread.contains("store-key"),
        "{reread}"
    );
}

/// Requests through `replica` for `window`, one at a time: (answered 2xx, other).
async fn steady_sends(replica: &ChildProxy, window: Duration) -> (u64, Vec<u16>) {
    let client = client();
    let url = replica.url("/_rest/v4/app/sms/send");
    let until = Instant::now() + window;
    let (mut good, mut bad) = (0, Vec::new());
    while Instant::now() < until {
        match send_sms(&client, &url, SMS_BODY).await {
            202 => good += 1,
            status => bad.push(status),
        }
    }
    (good, bad)
}

/// The fleet generation in the clear prefix of the token entry (`v1:<generation>:…`).
fn entry_generation(redis: &RedisServer) -> u64 {
    redis
        .dump()
        .into_iter()
        .find(|(key, _)| key.ends_with(":token"))
        .and_then(|(_, value)| {
            let text = String::from_utf8(value).ok()?;
            text.strip_prefix("v1:")?.split(':').next()?.parse().ok()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_hangs_and_comes_back_the_replica_keeps_its_newer_token() {
    // The incident: a 401-caused login writes generation 2 and closes the reauth
    // interval; Redis hangs; an operator's refresh logs in alone (IntelePeer revokes
    // generation 2's token); Redis comes back. The replica must not go back to the
    // entry's revoked token.
    let sim = Sim::start(invalidating(Duration::from_secs(3600))).await;
    let redis = RedisServer::start();
    let (_dir, key) = key_file(STORE_KEY);
    let mut all = replica_vars(&sim, &redis.url(), &key);
    all.extend(vars(&[("IPPROXY_AUTH__MIN_REAUTH_INTERVAL", "5m")]));
    let replica = ChildProxy::start(&all).await;
    assert!(all_ready(std::slice::from_ref(&replica)).await);
    let client = client();
    sim.sim.revoke_all();
    let url = replica.url("/_rest/v4/app/sms/send");
    assert_eq!(send_sms(&client, &url, SMS_BODY).await, 202, "retried once");
    assert!(
        eventually(Duration::from_secs(10), || async {
            entry_generation(&redis) == 2
        })
        .await,
        "the 401-caused login wrote generation 2"
    );

    redis.pause();
    let refreshed = client
        .post(replica.admin_url("/refresh"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("refresh");
    assert_eq!(refreshed.status(), 200, "logged in alone");
    let (status, body) = readyz_body(&replica).await;
    assert_eq!((status, &body["store"]["up"]), (200, &Value::Bool(false)));
    let logins = sim.counters().auth_calls;

    redis.resume();
    // The store is back when the probe sees it, and the replica publishes its token.
    assert!(
        eventually(Duration::from_secs(30), || async {
            entry_generation(&redis) >= 3
        })
        .await,
        "the replica's newer token replaced the entry"
    );
    sim.sim.reset_counters();
    let (good, bad) = steady_sends(&replica, Duration::from_secs(3)).await;
    assert!(bad.is_empty() && good > 0, "{good} answered, then {bad:?}");
    let counters = sim.counters();
    assert_eq!(counters.auth_calls, 0, "no login to converge: {counters:?}");
    assert!(logins >= 3, "the refresh logged in alone ({logins} logins)");
    let lines = replica.lines();
    assert!(
        !lines
            .iter()
            .any(|line| line.contains("\"reason\":\"resync\"")
                && line.contains("\"source\":\"store\"")),
        "the replica adopted the entry on resync: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_refuses_writes_costs_no_loop_no_log_flood_and_no_login_storm() {
    // Redis at maxmemory with noeviction, and a read-only replica: reads answer,
    // every write is refused. With the entry absent, one forced refresh used to start
    // a loop of thousands of resyncs, log lines and commands a second.
    for refusal in [
        &["CONFIG", "SET", "maxmemory", "1"][..],
        &["REPLICAOF", "127.0.0.1", "1"][..],
    ] {
        let sim = Sim::start(invalidating(Duration::from_secs(3600))).await;
        let redis = RedisServer::start();
        let (_dir, key) = key_file(STORE_KEY);
        let replica = ChildProxy::start(&replica_vars(&sim, &redis.url(), &key)).await;
        assert!(all_ready(std::slice::from_ref(&replica)).await);
        redis.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
        redis.command(&["FLUSHALL"]);
        redis.command(refusal);
        let client = client();
        let refreshed = client
            .post(replica.admin_url("/refresh"))
            .send()
            .await
            .expect("refresh");
        assert_eq!(refreshed.status(), 200, "{refusal:?}: logged in alone");
        assert!(
            eventually(Duration::from_secs(10), || async {
                readyz_body(&replica).await.1["store"]["degraded"] == true
            })
            .await,
            "{refusal:?}: the store is shown degraded"
        );
        // Idle: a measurement window, nothing to wait for.
        let lines_before = replica.lines().len();
        let commands_before = redis.commands_processed();
        let cpu_before = cpu_ticks(replica.pid());
        let logins_before = sim.counters().auth_calls;
        let window = Duration::from_secs(10);
        tokio::time::sleep(window).await;
        let cpu = cpu_ticks(replica.pid()) - cpu_before;
        let commands = redis.commands_processed() - commands_before;
        let lines = replica.lines().len() - lines_before;
        eprintln!(
            "{refusal:?} idle {window:?}: {commands} Redis commands, {lines} log lines, \
             {cpu} CPU ticks"
        );
        // The health probe's ping every 2 s and its spaced write probes, plus this
        // test's own INFO on a new connection: a handful, where the loop made 6,000
        // a second.
        assert!(commands <= 25, "{refusal:?}: {commands} Redis commands");
        assert!(lines <= 2, "{refusal:?}: {lines} log lines while idle");
        // At most 0.5 s of CPU in 10 s (ticks are 10 ms): the loop took half a core.
        assert!(cpu <= 50, "{refusal:?}: {cpu} CPU ticks while idle");
        // And requests are served as ever.
        let (good, bad) = steady_sends(&replica, Duration::from_secs(2)).await;
        assert!(
            bad.is_empty() && good > 0,
            "{refusal:?}: {good} then {bad:?}"
        );
        let logins = sim.counters().auth_calls - logins_before;
        assert_eq!(logins, 0, "{refusal:?}: no login while the token is good");
        let text = scrape(&client, &replica.admin_url("/metrics")).await;
        assert_eq!(sum(&text, "ipproxy_store_degraded", &[]), 1.0);
        assert_eq!(
            sum(
                &text,
                "ipproxy_store_troubles_total",
                &[("kind", "degraded")]
            ),
            1.0,
            "{refusal:?}: one degradation, counted once"
        );
        let degraded_lines = replica
            .lines()
            .iter()
            .filter(|line| line.contains("token store degraded"))
            .count();
        assert_eq!(degraded_lines, 1, "{refusal:?}: logged once");
        assert_eq!(
            replica
                .lines()
                .iter()
                .filter(|line| line.contains("token store unreachable"))
                .count(),
            0,
            "{refusal:?}: never shown as down"
        );
    }
}

/// User plus system CPU ticks of process `pid` so far (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // After the command name in parentheses: fields 14 and 15 are utime and stime.
    let after = stat.rsplit_once(')').expect("a stat line").1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}
