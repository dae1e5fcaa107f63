//! A cross-site `POST /refresh` on the admin port.

use super::*;

/// A ready proxy in front of a simulator, and the logins made so far.
async fn ready_proxy() -> (Sim, Proxy, u64) {
    let sim = Sim::default().await;
    let proxy = Proxy::start(sim.vars()).await;
    wait_ready(proxy.admin).await;
    let logins = sim.counters().auth_calls;
    (sim, proxy, logins)
}

#[tokio::test]
async fn a_cross_site_refresh_is_403_and_causes_no_login() {
    let (sim, proxy, logins) = ready_proxy().await;
    let client = client();
    let url = proxy.admin_url("/refresh");
    let evil = "http://evil.example";
    let attempts = [
        (
            "form POST",
            client
                .post(&url)
                .header("origin", evil)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("credential=default"),
        ),
        (
            "text/plain POST",
            client
                .post(&url)
                .header("origin", evil)
                .header("content-type", "text/plain")
                .body("{}"),
        ),
        ("bodiless POST", client.post(&url).header("origin", evil)),
        (
            "Sec-Fetch-Site cross-site",
            client.post(&url).header("sec-fetch-site", "cross-site"),
        ),
        (
            "Sec-Fetch-Site same-site",
            client.post(&url).header("sec-fetch-site", "same-site"),
        ),
        ("Origin null", client.post(&url).header("origin", "null")),
        // DNS rebinding: the attacker's name resolving to the admin listener.
        (
            "rebound name",
            client
                .post(&url)
                .header("host", "evil.example")
                .header("origin", evil),
        ),
    ];
    for (what, attempt) in attempts {
        let response = attempt.send().await.expect("an answer");
        assert_eq!(response.status(), 403, "{what}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], "cross_site_refused", "{what}");
        assert!(
            !body["request_id"].as_str().unwrap_or("").is_empty(),
            "{what}"
        );
    }
    assert_eq!(sim.counters().auth_calls, logins, "no login was made");
}

#[tokio::test]
async fn same_origin_tools_still_refresh() {
    let (sim, proxy, logins) = ready_proxy().await;
    let client = client();
    let url = proxy.admin_url("/refresh");
    let own = format!("http://{}", proxy.admin);
    let attempts = [
        // curl, kubectl port-forward, scripts: no Origin, no Sec-Fetch-Site.
        ("curl", client.post(&url)),
        (
            "a page of the admin listener itself",
            client
                .post(&url)
                .header("origin", &own)
                .header("sec-fetch-site", "same-origin"),
        ),
        (
            "a typed URL",
            client.post(&url).header("sec-fetch-site", "none"),
        ),
    ];
    for (what, attempt) in attempts {
        let response = attempt.send().await.expect("an answer");
        assert_eq!(response.status(), 200, "{what}");
    }
    assert_eq!(sim.counters().auth_calls, logins + 3, "one login each");
}
