//! The shipped alert rules and dashboard against a real Prometheus (Debian's) scraping
//! the real binary: every series and label the rules and the dashboard's panels use is
//! scraped as they expect, and the token-expiry alert goes pending for a short-lived
//! token. The rules' own logic (fires / stays quiet) is tested with `promtool test
//! rules` (deploy/prometheus/check.sh).
//!
//! Metric names and label matchers are read out of the rule expressions as Prometheus
//! loaded them (`/api/v1/rules`) and out of the dashboard's JSON, never restated here:
//! a renamed metric or label fails this test.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipproxy::sim::{AuthMode, SimConfig};
use serde_json::Value;
use support::child::ChildProxy;
use support::prometheus::PrometheusServer;
use support::redis::RedisServer;
use support::{FixedUpstream, Sim, client, closed_port, eventually, metrics, vars};

/// Labels every scraped series has (the target's), not the proxy's own.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// How long a change may take to show in Prometheus: a scrape (1 s), an evaluation
/// (1 s), on a busy machine.
const SHOW_LIMIT: Duration = Duration::from_secs(30);

/// Stands in for `$__rate_interval` in the dashboard's queries: many 1 s scrapes.
const RATE_INTERVAL: &str = "30s";

const STORE_KEY: &str = "5f0c2a7e9b1d4c3a8e6f7b2d1c0a9e8f7d6c5b4a392817160f1e2d3c4b5a6978";

fn repository_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rules_and_dashboard_find_every_series_they_use_in_a_real_scrape() {
    // A 10-minute token: within IpproxyTokenExpiringSoon's 30 minutes from the start.
    let sim = Sim::start(SimConfig {
        token_ttl: Duration::from_secs(600),
        ..SimConfig::default()
    })
    .await;
    let rejecting = FixedUpstream::start(403, r#"{"error":"forbidden"}"#).await;
    let (unreachable, _reserved) = closed_port();
    let mut redis = RedisServer::start();
    // An entry that does not open: read (and counted unreadable) at start-up.
    redis.set("ipproxy:{default}:token", b"v1:41:not-base64-!!");
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("store-key");
    std::fs::write(&key, format!("{STORE_KEY}\n")).expect("key file");
    let config = dir.path().join("ipproxy.toml");
    std::fs::write(
        &config,
        format!(
            "[[route]]\nname = \"rejecting\"\nprefix = \"/rejecting/\"\nupstream = \"{}\"\n\n\
             [[route]]\nname = \"unreachable\"\nprefix = \"/unreachable/\"\nupstream = \"http://{unreachable}\"\n\n\
             [[route]]\nname = \"sms\"\nprefix = \"/_rest/v4/app/sms/\"\nidempotency = true\n\n\
             [[route]]\nname = \"sim\"\nprefix = \"/\"\n",
            rejecting.url()
        ),
    )
    .expect("config");
    let mut all = sim.vars();
    all.extend(vars(&[
        ("IPPROXY_CONFIG", &config.display().to_string()),
        ("IPPROXY_STORE__KIND", "redis"),
        ("IPPROXY_STORE__URL", &redis.url()),
        ("IPPROXY_STORE__KEY_FILE", &key.display().to_string()),
        ("IPPROXY_SERVER__MAX_CONCURRENCY", "1"),
    ]));
    let proxy = ChildProxy::start(&all).await;
    let client = client();
    assert!(
        eventually(SHOW_LIMIT, || async {
            client
                .get(proxy.admin_url("/readyz"))
                .send()
                .await
                .is_ok_and(|response| response.status() == 200)
        })
        .await,
        "the proxy became ready"
    );
    let rules = repository_file("deploy/prometheus/ipproxy-rules.yaml");
    let prometheus = PrometheusServer::start(&[proxy.admin], std::slice::from_ref(&rules)).await;

    drive_traffic(&client, &proxy, &sim).await;

    // The rules Prometheus loaded are the shipped file's, all of them.
    let loaded = prometheus.alerting_rules().await;
    let shipped = shipped_alert_names(&rules);
    let loaded_names: BTreeSet<String> = loaded
        .iter()
        .filter_map(|rule| rule["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(loaded_names, shipped, "{}", prometheus.log());

    // A short-lived token: the expiry alert goes pending (or firing).
    assert!(
        await_alert(&prometheus, "IpproxyTokenExpiringSoon").await,
        "IpproxyTokenExpiringSoon never went pending for a 10-minute token"
    );

    // The store outage: its series move, and its alert goes pending.
    redis.kill();
    assert!(
        await_results(&prometheus, "ipproxy_store_up == 0").await,
        "ipproxy_store_up never showed 0 with redis-server stopped"
    );
    assert!(
        await_alert(&prometheus, "IpproxyTokenStoreDown").await,
        "IpproxyTokenStoreDown never went pending with redis-server stopped"
    );

    // A keyed send with the store down: kept in this replica's memory, counted
    // store_down (the fallback alert's series, and the memory store's gauge).
    assert_eq!(
        keyed_send(&client, &proxy, "while-redis-is-down").await,
        202
    );

    // Every selector of every rule matches scraped series; every label the rules group
    // or join by is on the series they use.
    let mut checked = 0;
    for rule in &loaded {
        let name = rule["name"].as_str().unwrap_or("?");
        let expr = rule["query"].as_str().expect("a rule's expression");
        checked += check_expression(&prometheus, &format!("rule {name}"), expr).await;
    }
    assert!(checked >= 10, "only {checked} selectors in the rules");

    // Every panel's every query returns data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repository_file("deploy/grafana/ipproxy.json"))
            .expect("deploy/grafana/ipproxy.json"),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard_queries(&dashboard);
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for (title, expr) in &panels {
        let expr = substitute_variables(expr);
        check_expression(&prometheus, &format!("panel {title:?}"), &expr).await;
        assert!(
            await_results(&prometheus, &expr).await,
            "panel {title:?}: `{expr}` returns no data from a real scrape"
        );
    }
}

/// Traffic for every series the rules use: requests answered by the simulator, by an
/// upstream that answers 403, and by the proxy itself (502 for an unreachable
/// upstream, 503 overloaded); a keyed send and its replay; a failed and a successful
/// forced refresh.
async fn drive_traffic(client: &reqwest::Client, proxy: &ChildProxy, sim: &Sim) {
    assert_eq!(keyed_send(client, proxy, "first-send").await, 202);
    assert_eq!(
        keyed_send(client, proxy, "first-send").await,
        202,
        "the replay"
    );
    for path in ["/_rest/v4/sim/ping", "/rejecting/x", "/unreachable/x"] {
        for _ in 0..3 {
            let response = client.get(proxy.url(path)).send().await.expect("answer");
            let expected = match path {
                "/rejecting/x" => 403,
                "/unreachable/x" => 502,
                _ => 200,
            };
            assert_eq!(response.status(), expected, "{path}");
        }
    }
    // Overload: a download that is never read holds the one slot.
    let held = client
        .get(proxy.url("/_rest/v4/sim/bytes/1073741824"))
        .send()
        .await
        .expect("download head");
    assert_eq!(held.status(), 200);
    let refused = client
        .get(proxy.url("/_rest/v4/sim/ping"))
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status(), 503, "refused while the slot is held");
    drop(held);
    let admin_metrics = proxy.admin_url("/metrics");
    assert!(
        eventually(SHOW_LIMIT, || async {
            let text = metrics::scrape(client, &admin_metrics).await;
            metrics::value(&text, "ipproxy_inflight_requests", &[]) == 0.0
        })
        .await,
        "the abandoned download gave its slot back"
    );
    // A login IntelePeer refuses, then one that works: POST /refresh forces both.
    sim.sim.set_auth_mode(AuthMode::Reject);
    let failed = client
        .post(proxy.admin_url("/refresh"))
        .send()
        .await
        .expect("refresh");
    assert_eq!(failed.status(), 502, "the refused login fails the refresh");
    sim.sim.set_auth_mode(AuthMode::Ok);
    let refreshed = client
        .post(proxy.admin_url("/refresh"))
        .send()
        .await
        .expect("refresh");
    assert_eq!(refreshed.status(), 200);
}

/// An SMS send on the idempotent route with `Idempotency-Key: key`; its status, once
/// the whole answer is read (the key's answer is kept before its last byte goes out,
/// so a repeat after this is replayed, never `409 idempotency_in_progress`).
async fn keyed_send(client: &reqwest::Client, proxy: &ChildProxy, key: &str) -> u16 {
    let response = client
        .post(proxy.url("/_rest/v4/app/sms/send"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(r#"{"from":"+15550001111","to":"+15550002222","text":"alert rules"}"#)
        .send()
        .await
        .expect("answer");
    let status = response.status().as_u16();
    response.bytes().await.expect("the whole answer");
    status
}

/// Checks one PromQL expression against the scrape: each `ipproxy_*` selector in it
/// matches series, and each label named
/// in `by`/`without`/`on`/`ignoring` is on a series of a metric the expression uses.
/// Returns the number of selectors checked.
async fn check_expression(prometheus: &PrometheusServer, what: &str, expr: &str) -> usize {
    let selectors = selectors(expr);
    assert!(
        !selectors.is_empty(),
        "{what}: no ipproxy_ metric in `{expr}`"
    );
    let mut labels_seen: BTreeSet<String> = TARGET_LABELS.iter().map(|l| (*l).to_owned()).collect();
    let mut checked = 0;
    for (metric, selector) in &selectors {
        let deadline = Instant::now() + SHOW_LIMIT;
        let found = loop {
            let found = prometheus.series(selector).await;
            if !found.is_empty() || Instant::now() >= deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if found.is_empty() {
            let all = prometheus
                .series(&format!("{{__name__=~\"{metric}.*\"}}"))
                .await;
            panic!(
                "{what}: `{selector}` (in `{expr}`) matches no scraped series; the scrape has {all:?}"
            );
        }
        for series in &found {
            if let Some(map) = series.as_object() {
                labels_seen.extend(map.keys().cloned());
            }
        }
        checked += 1;
    }
    if checked == 0 {
        return 0;
    }
    for label in grouping_labels(expr) {
        assert!(
            labels_seen.contains(&label),
            "{what}: label {label:?} (in `{expr}`) is on none of its series: {labels_seen:?}"
        );
    }
    checked
}

/// Each `ipproxy_*` metric in `expr` with its selector (the metric and its matchers,
/// as written). A name that ends `_bucket`/`_sum`/`_count` is a histogram's.
fn selectors(expr: &str) -> Vec<(String, String)> {
    let bytes = expr.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = expr[at..].find("ipproxy_") {
        let start = at + offset;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        at = end;
        if preceded {
            continue;
        }
        let metric = &expr[start..end];
        let matchers = if expr[end..].starts_with('{') {
            let close = expr[end..].find('}').map_or(expr.len(), |c| end + c + 1);
            at = close;
            &expr[end..close]
        } else {
            ""
        };
        found.push((metric.to_owned(), format!("{metric}{matchers}")));
    }
    found
}

/// The labels of `by (...)`, `without (...)`, `on (...)`, `ignoring (...)` clauses.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for keyword in ["by", "without", "on", "ignoring"] {
        let mut at = 0;
        while let Some(offset) = expr[at..].find(keyword) {
            let start = at + offset;
            at = start + keyword.len();
            let before = expr[..start].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let rest = expr[at..].trim_start();
            let Some(list) = rest.strip_prefix('(') else {
                continue;
            };
            let Some(close) = list.find(')') else {
                continue;
            };
            labels.extend(
                list[..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|label| !label.is_empty() && *label != "le")
                    .map(str::to_owned),
            );
        }
    }
    labels
}

/// `$__rate_interval` and the dashboard's template variables, as Grafana would fill
/// them in with "All" selected.
fn substitute_variables(expr: &str) -> String {
    let mut expr = expr.replace("$__rate_interval", RATE_INTERVAL);
    for variable in ["${instance}", "$instance"] {
        expr = expr.replace(variable, ".+");
    }
    assert!(
        !expr.contains('$'),
        "a template variable the test does not know: `{expr}`"
    );
    expr
}

/// (panel title, query) for every target of every panel, rows' panels included.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            walk(&panel["panels"], out);
            if panel["type"] == "row" {
                continue;
            }
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "panel {title:?} has no query");
            for target in targets {
                let expr = target["expr"].as_str().expect("a target's expr").to_owned();
                out.push((title.clone(), expr));
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The `alert:` names in the shipped rules file.
fn shipped_alert_names(rules: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(rules)
        .expect("rules file")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// Whether alert `name` is pending or firing within [`SHOW_LIMIT`].
async fn await_alert(prometheus: &PrometheusServer, name: &str) -> bool {
    let deadline = Instant::now() + SHOW_LIMIT;
    loop {
        let states = prometheus.alert_states(name).await;
        if states
            .iter()
            .any(|state| state == "pending" || state == "firing")
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the instant query `promql` returns a non-empty result within [`SHOW_LIMIT`].
async fn await_results(prometheus: &PrometheusServer, promql: &str) -> bool {
    let deadline = Instant::now() + SHOW_LIMIT;
    loop {
        if !prometheus.query(promql).await.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn selectors_and_grouping_labels_are_read_out_of_an_expression() {
    let expr = r#"sum without (method, status) (rate(ipproxy_requests_total{route!="-",status=~"401|403"}[5m])) / on (job, instance) ipproxy_store_up unless my_ipproxy_other"#;
    assert_eq!(
        selectors(expr),
        vec![
            (
                "ipproxy_requests_total".to_owned(),
                r#"ipproxy_requests_total{route!="-",status=~"401|403"}"#.to_owned()
            ),
            ("ipproxy_store_up".to_owned(), "ipproxy_store_up".to_owned()),
        ]
    );
    let labels: Vec<String> = grouping_labels(expr).into_iter().collect();
    assert_eq!(labels, ["instance", "job", "method", "status"]);
}
