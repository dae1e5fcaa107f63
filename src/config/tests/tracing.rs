//! Tracing: the OTLP exporter's settings.

use super::*;

#[test]
fn tracing_is_off_unless_an_endpoint_is_set() {
    let config = expect_ok(load(None, vars(&login())));
    assert!(!config.tracing.is_on());
    assert_eq!(config.tracing.service_name, "ipproxy");
    assert_eq!(config.tracing.sample_ratio, 1.0);
    let text = config.to_redacted_toml();
    assert!(text.contains("[tracing]"), "{text}");
    assert!(!text.contains("otlp_endpoint"), "{text}");
}

#[test]
fn tracing_keys_set_the_collector_service_and_ratio() {
    let config = expect_ok(load_toml(
        &with_auth(
            "[tracing]\notlp_endpoint = \"http://otel-collector:4318/\"\n\
             service_name = \"sms-sidecar\"\nsample_ratio = 0.25\n",
        ),
        &[],
    ));
    let endpoint = config.tracing.otlp_endpoint.as_ref().expect("on");
    assert_eq!(
        endpoint.traces_url(),
        "http://otel-collector:4318/v1/traces"
    );
    assert_eq!(config.tracing.service_name, "sms-sidecar");
    assert_eq!(config.tracing.sample_ratio, 0.25);
    let text = config.to_redacted_toml();
    for line in [
        "[tracing]",
        "otlp_endpoint = \"http://otel-collector:4318\"",
        "service_name = \"sms-sidecar\"",
        "sample_ratio = 0.25",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    assert!(!text.contains("from the environment"), "{text}");
    let with_path = expect_ok(load(
        None,
        vars(&[
            login()[0],
            login()[1],
            (
                "IPPROXY_TRACING__OTLP_ENDPOINT",
                "https://collector.internal/otlp",
            ),
            ("IPPROXY_TRACING__SAMPLE_RATIO", "0"),
        ]),
    ));
    let endpoint = with_path.tracing.otlp_endpoint.expect("on");
    assert_eq!(
        endpoint.traces_url(),
        "https://collector.internal/otlp/v1/traces"
    );
    assert_eq!(with_path.tracing.sample_ratio, 0.0);
}

#[test]
fn the_opentelemetry_variables_apply_when_the_keys_are_unset() {
    let mut pairs = login();
    pairs.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"));
    pairs.push(("OTEL_SERVICE_NAME", "from-otel"));
    let config = expect_ok(load(None, vars(&pairs)));
    assert_eq!(
        config
            .tracing
            .otlp_endpoint
            .as_ref()
            .map(OtlpEndpoint::traces_url),
        Some("http://127.0.0.1:4318/v1/traces".to_owned())
    );
    assert_eq!(config.tracing.service_name, "from-otel");
    let text = config.to_redacted_toml();
    assert!(
        text.contains(
            "# tracing from the environment: OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME"
        ),
        "{text}"
    );
    toml::from_str::<toml::Table>(&text).expect("still TOML");

    // The keys win over the variables; an empty variable counts as unset.
    pairs.push(("IPPROXY_TRACING__SERVICE_NAME", "from-key"));
    pairs.push(("IPPROXY_TRACING__OTLP_ENDPOINT", "http://collector:4318"));
    let config = expect_ok(load(None, vars(&pairs)));
    assert_eq!(config.tracing.service_name, "from-key");
    assert_eq!(
        config
            .tracing
            .otlp_endpoint
            .map(|endpoint| endpoint.traces_url()),
        Some("http://collector:4318/v1/traces".to_owned())
    );
    assert!(config.tracing.from_variables.is_empty());
    let mut empty = login();
    empty.push(("OTEL_EXPORTER_OTLP_ENDPOINT", " "));
    assert!(!expect_ok(load(None, vars(&empty))).tracing.is_on());
}

#[test]
fn tracing_problems_name_the_key_or_the_variable() {
    let error = load_toml(
        &with_auth(
            "[tracing]\notlp_endpoint = \"grpc://collector:4317\"\n\
             service_name = \" \"\nsample_ratio = 1.5\nexporter = \"otlp\"\n",
        ),
        &[],
    )
    .expect_err("invalid");
    let keys: Vec<&str> = error.problems().iter().map(|p| p.key.as_str()).collect();
    for key in [
        "tracing.otlp_endpoint",
        "tracing.service_name",
        "tracing.sample_ratio",
        "tracing.exporter",
    ] {
        assert!(keys.contains(&key), "{key} in {error}");
    }
    let mut pairs = login();
    pairs.push((
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://user:pw@collector:4318",
    ));
    pairs.push(("IPPROXY_TRACING__SAMPLE_RATIO", "most"));
    let error = load(None, vars(&pairs)).expect_err("invalid");
    let text = error.to_string();
    assert!(text.contains("OTEL_EXPORTER_OTLP_ENDPOINT: "), "{text}");
    assert!(text.contains("tracing.sample_ratio: "), "{text}");
    assert!(
        !text.contains("pw@"),
        "the URL's password is not repeated: {text}"
    );
}
