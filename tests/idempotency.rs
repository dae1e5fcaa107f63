//! `Idempotency-Key` on an idempotent route, over real sockets against the simulator
//! (which counts SMS sends per `(from, to, text)`): one send per key, repeats replayed
//! byte for byte, in-flight and mismatched repeats refused, outcomes of requests that
//! never left or got no answer, callers kept apart; and a fleet of two `ipproxy run`
//! processes sharing a real `redis-server`, with and without it.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::child::ChildProxy;
use support::metrics::{scrape, sum};
use support::redis::RedisServer;
use support::{Proxy, Sim, client, closed_port, eventually, vars};

const SEND: &str = "/_rest/v4/app/sms/send";
const STORE_KEY: &str = "5f0c2a7e9b1d4c3a8e6f7b2d1c0a9e8f7d6c5b4a392817160f1e2d3c4b5a6978";

/// An idempotent route for the SMS API, and a plain one for everything else.
fn routes_toml(upstream: Option<&str>) -> String {
    let upstream = upstream.map_or_else(String::new, |url| format!("upstream = \"{url}\"\n"));
    format!(
        "[[route]]\nname = \"sms\"\nprefix = \"/_rest/v4/app/sms/\"\nidempotency = true\n{upstream}\n\
         [[route]]\nname = \"rest\"\nprefix = \"/\"\n"
    )
}

fn sms(text: &str) -> String {
    format!(r#"{{"from":"+15550001111","to":"+15550002222","text":"{text}"}}"#)
}

struct Answer {
    status: u16,
    replayed: bool,
    body: String,
    error: Option<String>,
    retry_after: Option<String>,
}

async fn post(url: &str, key: Option<&str>, body: &str) -> Answer {
    post_as(url, key, body, None).await
}

async fn post_as(url: &str, key: Option<&str>, body: &str, caller: Option<&str>) -> Answer {
    let mut request = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    if let Some(caller) = caller {
        request = request.header("proxy-authorization", format!("Bearer {caller}"));
    }
    let response = request.send().await.expect("response");
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().expect("ascii").to_owned())
    };
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let retry_after = header("retry-after");
    let body = response.text().await.expect("body");
    let error = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|json| json["error"].as_str().map(str::to_owned));
    Answer {
        status,
        replayed,
        body,
        error,
        retry_after,
    }
}

#[tokio::test]
async fn a_repeated_send_is_sent_once_and_replayed_byte_for_byte() {
    let sim = Sim::default().await;
    let proxy = Proxy::start_with_file(&routes_toml(None), sim.vars()).await;
    let url = proxy.url(SEND);

    let first = post(&url, Some("order-1"), &sms("twice")).await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert!(!first.replayed);
    let second = post(&url, Some("\"order-1\""), &sms("twice")).await;
    assert_eq!(second.status, 202);
    assert!(second.replayed, "the repeat is marked");
    assert_eq!(
        second.body, first.body,
        "the simulator's random refid comes back: the same answer, not a new send"
    );
    assert_eq!(sim.sends_of("twice"), 1);

    // Without a key, on another method or on another route: untouched.
    post(&url, None, &sms("no key")).await;
    post(&url, None, &sms("no key")).await;
    assert_eq!(sim.sends_of("no key"), 2);
    let echo = |path: &str| {
        let url = proxy.url(path);
        async move { post(&url, Some("order-1"), "{}").await }
    };
    let plain = echo("/_rest/v4/my/did").await;
    assert_eq!(plain.status, 200);
    assert!(
        !echo("/_rest/v4/my/did").await.replayed,
        "not an idempotent route"
    );
}

#[tokio::test]
async fn concurrent_duplicates_make_one_send_and_the_rest_wait_or_replay() {
    let sim = Sim::default().await;
    sim.sim.set_latency(Duration::from_millis(300));
    let proxy = Proxy::start_with_file(&routes_toml(None), sim.vars()).await;
    let url = proxy.url(SEND);
    let body = sms("burst");
    let answers = join_all((0..24).map(|_| post(&url, Some("burst-1"), &body))).await;
    assert_eq!(sim.sends_of("burst"), 1);
    let sent: Vec<&Answer> = answers
        .iter()
        .filter(|answer| answer.status == 202)
        .collect();
    assert!(!sent.is_empty());
    assert!(sent.iter().all(|answer| answer.body == sent[0].body));
    for answer in &answers {
        match answer.status {
            202 => {}
            409 => {
                assert_eq!(answer.error.as_deref(), Some("idempotency_in_progress"));
                assert_eq!(answer.retry_after.as_deref(), Some("1"));
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    let after = post(&url, Some("burst-1"), &sms("burst")).await;
    assert!(after.replayed && after.body == sent[0].body);
    assert_eq!(sim.sends_of("burst"), 1);
}

#[tokio::test]
async fn the_same_key_for_another_request_is_refused_422() {
    let sim = Sim::default().await;
    let proxy = Proxy::start_with_file(&routes_toml(None), sim.vars()).await;
    let url = proxy.url(SEND);
    assert_eq!(
        post(&url, Some("k-mismatch"), &sms("one")).await.status,
        202
    );
    let other = post(&url, Some("k-mismatch"), &sms("another")).await;
    assert_eq!(other.status, 422);
    assert_eq!(other.error.as_deref(), Some("idempotency_key_mismatch"));
    let query = post(&format!("{url}?x=1"), Some("k-mismatch"), &sms("one")).await;
    assert_eq!(query.status, 422, "the query is part of the fingerprint");
    assert_eq!(sim.sends_of("another"), 0);
    assert_eq!(sim.sends_of("one"), 1);
}

#[tokio::test]
async fn malformed_keys_and_bodies_over_replay_limit_are_refused() {
    let sim = Sim::default().await;
    let mut all = sim.vars();
    all.extend(vars(&[("IPPROXY_SERVER__REPLAY_LIMIT", "1KiB")]));
    let proxy = Proxy::start_with_file(&routes_toml(None), all).await;
    let url = proxy.url(SEND);
    let bad = post(&url, Some("\"unterminated"), &sms("bad key")).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("Idempotency-Key") && !bad.body.contains("unterminated"));
    let large = sms(&"x".repeat(2048));
    let refused = post(&url, Some("big"), &large).await;
    assert_eq!(refused.status, 413);
    assert_eq!(refused.error.as_deref(), Some("body_too_large"));
    assert_eq!(sim.sends_of("bad key"), 0);
    assert_eq!(sim.counters().api_calls, 0);
}

#[tokio::test]
async fn a_timeout_after_the_send_is_the_keys_answer_for_good() {
    let sim = Sim::default().await;
    sim.sim.set_answer_delay(Duration::from_secs(3));
    let mut all = sim.vars();
    all.extend(vars(&[("IPPROXY_SERVER__REQUEST_TIMEOUT", "300ms")]));
    let proxy = Proxy::start_with_file(&routes_toml(None), all).await;
    let url = proxy.url(SEND);
    let first = post(&url, Some("slow-1"), &sms("late")).await;
    assert_eq!(first.status, 504);
    assert_eq!(first.error.as_deref(), Some("upstream_timeout"));
    sim.sim.set_answer_delay(Duration::ZERO);
    let again = post(&url, Some("slow-1"), &sms("late")).await;
    assert_eq!(again.status, 504);
    assert!(again.replayed);
    assert_eq!(again.body, first.body);
    assert_eq!(sim.sends_of("late"), 1);
}

#[tokio::test]
async fn a_request_that_never_left_releases_its_key() {
    let sim = Sim::default().await;
    let (addr, socket) = closed_port();
    let toml = routes_toml(Some(&format!("http://{addr}")));
    let proxy = Proxy::start_with_file(&toml, sim.vars()).await;
    let url = proxy.url(SEND);
    let refused = post(&url, Some("retry-me"), &sms("refused")).await;
    assert_eq!(refused.status, 502, "{}", refused.body);
    // The same simulator now listens where the route points.
    let listener = socket.listen(16).expect("listen");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sim.sim.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    let retried = post(&url, Some("retry-me"), &sms("refused")).await;
    assert_eq!(retried.status, 202, "{}", retried.body);
    assert!(!retried.replayed);
    assert_eq!(sim.sends_of("refused"), 1);
    drop(stop);
}

#[tokio::test]
async fn an_answer_over_max_response_passes_through_and_is_not_kept() {
    let sim = Sim::default().await;
    let mut all = sim.vars();
    all.extend(vars(&[("IPPROXY_IDEMPOTENCY__MAX_RESPONSE", "16")]));
    let proxy = Proxy::start_with_file(&routes_toml(None), all).await;
    let url = proxy.url(SEND);
    let first = post(&url, Some("large-1"), &sms("large")).await;
    assert_eq!(first.status, 202);
    assert!(first.body.contains("refid"), "passed through whole");
    let again = post(&url, Some("large-1"), &sms("large")).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.error.as_deref(), Some("idempotency_answer_not_kept"));
    assert_eq!(sim.sends_of("large"), 1);
}

fn keys_file(dir: &Path, lines: &[String]) -> PathBuf {
    let path = dir.join("keys");
    std::fs::write(&path, lines.join("\n")).expect("keys file");
    path
}

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[tokio::test]
async fn two_callers_with_the_same_key_are_two_keys() {
    let sim = Sim::default().await;
    let dir = tempfile::tempdir().expect("dir");
    let keys = keys_file(
        dir.path(),
        &[
            format!("{} billing", digest("billing-key")),
            digest("unnamed-key"),
        ],
    );
    let mut all = sim.vars();
    all.extend(vars(&[(
        "IPPROXY_ACCESS__KEYS_FILE",
        &keys.display().to_string(),
    )]));
    let proxy = Proxy::start_with_file(&routes_toml(None), all).await;
    let url = proxy.url(SEND);
    let billing = post_as(&url, Some("shared"), &sms("callers"), Some("billing-key")).await;
    let unnamed = post_as(&url, Some("shared"), &sms("callers"), Some("unnamed-key")).await;
    assert_eq!((billing.status, unnamed.status), (202, 202));
    assert!(
        !unnamed.replayed,
        "another caller never sees billing's answer"
    );
    assert_ne!(billing.body, unnamed.body);
    assert_eq!(sim.sends_of("callers"), 2);
    let again = post_as(&url, Some("shared"), &sms("callers"), Some("unnamed-key")).await;
    assert!(again.replayed && again.body == unnamed.body);
    assert_eq!(sim.sends_of("callers"), 2);
}

// --- two replicas, one redis-server ---

fn store_key_file(dir: &Path) -> PathBuf {
    let path = dir.join("store-key");
    std::fs::write(&path, format!("{STORE_KEY}\n")).expect("store key");
    path
}

/// Everything through the documented configuration: a file for the routes
/// (`IPPROXY_CONFIG`) and variables for the rest.
fn replica_vars(
    sim: &Sim,
    dir: &Path,
    redis: &RedisServer,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let config = dir.join("ipproxy.toml");
    std::fs::write(&config, routes_toml(None)).expect("config");
    let mut all = sim.vars();
    all.extend(vars(&[
        ("IPPROXY_CONFIG", &config.display().to_string()),
        ("IPPROXY_STORE__KIND", "redis"),
        ("IPPROXY_STORE__URL", &redis.url()),
        (
            "IPPROXY_STORE__KEY_FILE",
            &store_key_file(dir).display().to_string(),
        ),
        ("IPPROXY_STORE__TIMEOUT", "300ms"),
    ]));
    all.extend(vars(extra));
    all
}

#[tokio::test]
async fn a_repeat_on_the_other_replica_gets_the_first_answer_and_redis_holds_nothing_in_the_clear()
{
    let sim = Sim::default().await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let all = replica_vars(&sim, dir.path(), &redis, &[]);
    let a = ChildProxy::start(&all).await;
    let b = ChildProxy::start(&all).await;
    let text = "fleet-message-text";
    let key = "fleet-key-7f3a";
    let first = post(&a.url(SEND), Some(key), &sms(text)).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let on_b = post(&b.url(SEND), Some(key), &sms(text)).await;
    assert!(on_b.replayed, "{} {}", on_b.status, on_b.body);
    assert_eq!(on_b.body, first.body);
    // Concurrent repeats on both replicas.
    let repeats = join_all((0..6).map(|index| {
        let url = if index % 2 == 0 {
            a.url(SEND)
        } else {
            b.url(SEND)
        };
        async move { post(&url, Some(key), &sms(text)).await }
    }))
    .await;
    assert!(
        repeats
            .iter()
            .all(|answer| answer.replayed && answer.body == first.body)
    );
    assert_eq!(sim.sends_of(text), 1);

    let refid = serde_json::from_str::<Value>(&first.body).expect("json")["refid"]
        .as_str()
        .expect("refid")
        .to_owned();
    let mut secrets = vec![
        text.to_owned(),
        "+15550001111".to_owned(),
        "+15550002222".to_owned(),
        key.to_owned(),
        refid,
    ];
    secrets.extend(sim.sim.issued_tokens());
    let dump = redis.dump();
    assert!(
        dump.iter()
            .any(|(name, _)| name.starts_with("ipproxy:idem:")),
        "{:?}",
        dump.iter().map(|(name, _)| name).collect::<Vec<_>>()
    );
    for (name, value) in &dump {
        for secret in &secrets {
            let clear = secret.as_bytes();
            assert!(!name.contains(secret.as_str()), "{name} names a secret");
            assert!(
                !value.windows(clear.len()).any(|window| window == clear),
                "{name} holds {secret:?} in the clear"
            );
        }
    }
}

#[tokio::test]
async fn with_redis_down_a_replica_falls_back_to_its_memory_or_refuses_when_told() {
    let sim = Sim::default().await;
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let local = ChildProxy::start(&replica_vars(&sim, dir.path(), &redis, &[])).await;
    let reject_dir = tempfile::tempdir().expect("dir");
    let reject = ChildProxy::start(&replica_vars(
        &sim,
        reject_dir.path(),
        &redis,
        &[("IPPROXY_IDEMPOTENCY__ON_STORE_DOWN", "reject")],
    ))
    .await;
    redis.kill();

    for _ in 0..2 {
        let first = post(&local.url(SEND), Some("outage-1"), &sms("outage")).await;
        assert_eq!(first.status, 202, "{}", first.body);
    }
    let again = post(&local.url(SEND), Some("outage-1"), &sms("outage")).await;
    assert!(again.replayed, "kept in the replica's memory");
    assert_eq!(sim.sends_of("outage"), 1);
    let metrics = scrape(&client(), &local.admin_url("/metrics")).await;
    assert!(
        sum(
            &metrics,
            "ipproxy_idempotency_total",
            &[("result", "store_down")]
        ) >= 3.0,
        "{metrics}"
    );
    assert_eq!(
        sum(
            &metrics,
            "ipproxy_idempotency_total",
            &[("result", "first")]
        ),
        1.0
    );
    let lines = local.lines();
    let logged = lines
        .iter()
        .filter(|line| line.contains("the shared store is unreachable"))
        .count();
    assert_eq!(logged, 1, "once per outage: {lines:?}");

    let refused = post(&reject.url(SEND), Some("outage-2"), &sms("refused")).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.error.as_deref(), Some("idempotency_unavailable"));
    assert_eq!(sim.sends_of("refused"), 0);
    let plain = post(&reject.url(SEND), None, &sms("no key")).await;
    assert_eq!(plain.status, 202, "requests without a key are untouched");
}

#[tokio::test]
async fn the_log_line_names_the_caller_and_the_outcome_never_the_key() {
    let sim = Sim::default().await;
    let dir = tempfile::tempdir().expect("dir");
    let keys = keys_file(dir.path(), &[format!("{} billing", digest("billing-key"))]);
    let config = dir.path().join("ipproxy.toml");
    std::fs::write(&config, routes_toml(None)).expect("config");
    let mut all = sim.vars();
    all.extend(vars(&[
        ("IPPROXY_CONFIG", &config.display().to_string()),
        ("IPPROXY_ACCESS__KEYS_FILE", &keys.display().to_string()),
    ]));
    let proxy = ChildProxy::start(&all).await;
    let key = "log-key-51c2";
    for _ in 0..2 {
        post_as(
            &proxy.url(SEND),
            Some(key),
            &sms("logged"),
            Some("billing-key"),
        )
        .await;
    }
    let request_lines = || {
        proxy
            .lines()
            .into_iter()
            .filter(|line| line.contains("\"request\""))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            request_lines().len() >= 2
        })
        .await,
        "{:?}",
        proxy.lines()
    );
    let lines = request_lines();
    let fields: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).expect("json line"))
        .collect();
    let field = |line: &Value, name: &str| {
        line.get(name)
            .or_else(|| line["fields"].get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    assert_eq!(field(&fields[0], "caller").as_deref(), Some("billing"));
    assert_eq!(field(&fields[0], "idempotency").as_deref(), Some("first"));
    assert_eq!(
        field(&fields[1], "idempotency").as_deref(),
        Some("replayed")
    );
    for line in proxy.lines() {
        assert!(
            !line.contains(key) && !line.contains("billing-key"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn every_keyed_request_is_counted_once_by_its_result_and_unkeyed_ones_not_at_all() {
    let sim = Sim::default().await;
    sim.sim.set_latency(Duration::from_millis(300));
    let (closed, _socket) = closed_port();
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("ipproxy.toml");
    // The send's answer (`{"refid": ...}`) fits 200 bytes; the echo of another path
    // (method, path, headers, digest) does not.
    let toml = format!(
        "[idempotency]\nmax_response = \"200\"\n\n\
         [[route]]\nname = \"down\"\nprefix = \"/_rest/v4/app/sms/down/\"\nidempotency = true\n\
         upstream = \"http://{closed}\"\n\n{}",
        routes_toml(None)
    );
    std::fs::write(&config, toml).expect("config");
    let mut all = sim.vars();
    all.extend(vars(&[("IPPROXY_CONFIG", &config.display().to_string())]));
    let proxy = ChildProxy::start(&all).await;
    let url = proxy.url(SEND);

    let body = sms("counted");
    let burst = join_all((0..8).map(|_| post(&url, Some("count-1"), &body))).await;
    let in_progress = burst.iter().filter(|answer| answer.status == 409).count();
    let replayed = burst.iter().filter(|answer| answer.replayed).count();
    assert_eq!(in_progress + replayed + 1, burst.len());
    assert!(post(&url, Some("count-1"), &sms("counted")).await.replayed);
    let mismatch = post(&url, Some("count-1"), &sms("other text")).await;
    assert_eq!(mismatch.status, 422);
    let echo = proxy.url("/_rest/v4/app/sms/echo");
    assert_eq!(post(&echo, Some("large-1"), "{}").await.status, 200);
    let not_kept = post(&echo, Some("large-1"), "{}").await;
    assert_eq!(
        not_kept.error.as_deref(),
        Some("idempotency_answer_not_kept")
    );
    let down = post(&proxy.url("/_rest/v4/app/sms/down/x"), Some("k"), "{}").await;
    assert_eq!(down.status, 502);
    for _ in 0..3 {
        post(&url, None, &sms("unkeyed")).await;
    }

    let metrics = scrape(&client(), &proxy.admin_url("/metrics")).await;
    let count = |result: &str| sum(&metrics, "ipproxy_idempotency_total", &[("result", result)]);
    assert_eq!(count("first"), 2.0, "{metrics}");
    assert_eq!(count("replayed"), (replayed + 1) as f64);
    assert_eq!(count("in_progress"), in_progress as f64);
    assert_eq!(count("mismatch"), 1.0);
    assert_eq!(count("not_kept"), 1.0);
    assert_eq!(count("released"), 1.0);
    assert_eq!(count("store_down"), 0.0);
    assert_eq!(
        sum(&metrics, "ipproxy_idempotency_total", &[]),
        (burst.len() + 5) as f64,
        "one result per keyed request, none for the three without a key"
    );
    assert_eq!(
        sum(&metrics, "ipproxy_idempotency_entries", &[]),
        2.0,
        "the sent key and the unkept one; the released one is gone"
    );
}

/// Repeats a keyed send while it is in flight (409, as `Retry-After` invites), for at
/// most 15 s; the first answer that is not a 409.
async fn until_answered(url: &str, key: &str, body: &str) -> Answer {
    for _ in 0..150 {
        let answer = post(url, Some(key), body).await;
        if answer.status != 409 {
            return answer;
        }
        assert_eq!(answer.error.as_deref(), Some("idempotency_in_progress"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("still in progress after 15 s");
}

#[tokio::test]
async fn clients_that_give_up_and_repeat_on_both_replicas_send_each_message_once() {
    let sim = Sim::default().await;
    // Every send is counted at once and answered after 1 s; clients give up at 200 ms.
    sim.sim.set_answer_delay(Duration::from_secs(1));
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let all = replica_vars(&sim, dir.path(), &redis, &[]);
    let a = ChildProxy::start(&all).await;
    let b = ChildProxy::start(&all).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let messages: Vec<(String, String)> = (0..4)
        .map(|index| (format!("msg-key-{index}"), sms(&format!("message {index}"))))
        .collect();

    // 1. Each message once to replica A, abandoned by its client mid-request.
    for (key, body) in &messages {
        let gave_up = impatient
            .post(a.url(SEND))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.clone())
            .send()
            .await;
        assert!(gave_up.is_err(), "the client times out first");
    }
    // 2. Two more times each, at once, on A and on B, until answered.
    let repeats = join_all(messages.iter().flat_map(|(key, body)| {
        [a.url(SEND), b.url(SEND)]
            .map(|url| async move { (key, until_answered(&url, key, body).await) })
    }))
    .await;
    for (key, answer) in &repeats {
        assert_eq!(answer.status, 202, "{key}: {}", answer.body);
        assert!(
            answer.replayed,
            "{key}: the abandoned first send is the answer"
        );
        let same_key = repeats.iter().filter(|(other, _)| other == key);
        assert!(
            same_key
                .into_iter()
                .all(|(_, other)| other.body == answer.body)
        );
    }
    for index in 0..4 {
        assert_eq!(
            sim.sends_of(&format!("message {index}")),
            1,
            "message {index}"
        );
    }
}
