//! Reading `/metrics` in tests: samples by name and labels, and waiting for a counter
//! to move (the observable event of a reload, a login, a store operation).

use std::collections::BTreeMap;
use std::time::Duration;

/// Samples of one metric: label set → value.
pub(crate) fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    Some((key.to_owned(), value.trim_matches('"').to_owned()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The values of the samples of `name` whose labels include `labels`.
fn matching(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    samples(text, name)
        .into_iter()
        .filter(|(have, _)| {
            labels
                .iter()
                .all(|(key, value)| have.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|(_, value)| value)
        .collect()
}

/// The value of the one sample of `name` whose labels include `labels`; 0 when none.
pub(crate) fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching = matching(text, name, labels);
    assert!(matching.len() <= 1, "{name} {labels:?} is ambiguous");
    matching.first().copied().unwrap_or(0.0)
}

/// The sum of every sample of `name` whose labels include `labels`.
pub(crate) fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(text, name, labels).into_iter().sum()
}

/// The metrics text of an admin listener (`http://host:port/metrics`).
pub(crate) async fn scrape(client: &reqwest::Client, url: &str) -> String {
    let response = client.get(url).send().await.expect("metrics");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()[http::header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|value| value.starts_with("text/plain"))
    );
    response.text().await.expect("metrics text")
}

/// Waits (at most `limit`, looking every 20 ms) until the sum of `name{labels}` is
/// above `above`; returns the metrics text it saw then, or `None` on time-out.
pub(crate) async fn await_above(
    client: &reqwest::Client,
    url: &str,
    name: &str,
    labels: &[(&str, &str)],
    above: f64,
    limit: Duration,
) -> Option<String> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let text = scrape(client, url).await;
        if sum(&text, name, labels) > above {
            return Some(text);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
