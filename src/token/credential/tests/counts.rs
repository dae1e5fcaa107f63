//! What the lifecycle counts: refreshes by reason, result and source, and the 401s
//! the reauth interval suppressed.

use super::*;

#[tokio::test(start_paused = true)]
async fn logins_adoptions_failures_and_suppressed_401s_are_counted() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    // Spawned flights run on this (current-thread) runtime's thread: they record here.
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let (a, b) = pair();
    // B adopts A's token on its own 401; a content-401 on that one is suppressed.
    let adopted = a_logs_in_on_a_401_and_b_adopts(&a, &b).await;
    assert!(b.after_401(&adopted).await.is_none());
    a.source.fail_with(Some(AuthError::BadCredentials));
    assert!(a.credential.force_refresh().await.is_err());

    let text = metrics.render();
    let refreshes = |labels: &str| format!("ipproxy_token_refreshes_total{{{labels}}} ");
    for (labels, count) in [
        (
            r#"credential="default",reason="startup",result="ok",source="login""#,
            1,
        ),
        (
            r#"credential="default",reason="startup",result="ok",source="store""#,
            1,
        ),
        (
            r#"credential="default",reason="401",result="ok",source="login""#,
            1,
        ),
        (
            r#"credential="default",reason="401",result="ok",source="store""#,
            1,
        ),
        (
            r#"credential="default",reason="manual",result="error",source="login""#,
            1,
        ),
    ] {
        let line = format!("{}{count}", refreshes(labels));
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    let suppressed = r#"ipproxy_reauth_suppressed_total{credential="default"} 1"#;
    assert!(
        text.lines().any(|l| l == suppressed),
        "{suppressed} in:\n{text}"
    );
}
