//! `[tracing]`: where OpenTelemetry spans go, or nowhere (the default).
//!
//! The keys win; without them the standard OpenTelemetry variables
//! `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_SERVICE_NAME` are read from the same list
//! of variables as the `IPPROXY_*` ones (never from the process environment here), so
//! that an image configured the OpenTelemetry way just works. They are not `IPPROXY_*`
//! variables, so the unknown-variable rule does not apply to them. Knows nothing of
//! exporters (that is `telemetry`).

use std::fmt;

use super::Problem;
use super::raw::{RawRatio, RawTracing};

/// The standard variable naming the collector's base URL (OTLP/HTTP: spans go to
/// `<endpoint>/v1/traces`).
pub(super) const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The standard variable naming the service in every exported span.
pub(super) const SERVICE_NAME_VAR: &str = "OTEL_SERVICE_NAME";

/// `service.name` when neither `tracing.service_name` nor `OTEL_SERVICE_NAME` is set.
pub(super) const DEFAULT_SERVICE_NAME: &str = "ipproxy";
/// Every trace is sampled unless said otherwise (a sampled parent always is).
const DEFAULT_SAMPLE_RATIO: f64 = 1.0;
/// A service name is a short label in a trace viewer, not a place for text.
const MAX_SERVICE_NAME: usize = 255;

/// Whether `name` is one of the OpenTelemetry variables [`resolve`] reads.
pub(super) fn is_otel_var(name: &str) -> bool {
    name == OTLP_ENDPOINT_VAR || name == SERVICE_NAME_VAR
}

/// `[tracing]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The collector; `None`: tracing is off and costs nothing per request.
    pub otlp_endpoint: Option<OtlpEndpoint>,
    /// `service.name` of every span.
    pub service_name: String,
    /// The share of new traces (no sampled or unsampled parent) that is sampled,
    /// 0.0 to 1.0. A parent's decision is always kept.
    pub sample_ratio: f64,
    /// Which of the two came from the OpenTelemetry variables, for `check`.
    pub from_variables: Vec<&'static str>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            sample_ratio: DEFAULT_SAMPLE_RATIO,
            from_variables: Vec::new(),
        }
    }
}

impl TracingConfig {
    /// True when spans are exported.
    pub fn is_on(&self) -> bool {
        self.otlp_endpoint.is_some()
    }
}

/// A collector's OTLP/HTTP base URL: `http`/`https`, a host, an optional base path,
/// no user info, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// As given, without a trailing `/`.
    base: String,
}

impl OtlpEndpoint {
    fn parse(text: &str) -> Result<Self, String> {
        let target = super::parse::upstream_target(text)?;
        Ok(Self {
            base: format!(
                "{}://{}{}",
                target.scheme(),
                target.authority(),
                target.base_path()
            ),
        })
    }

    /// Where spans are posted: `<base>/v1/traces`, the OTLP/HTTP convention.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.base)
    }

    /// The base URL as configured (for `check`).
    pub fn as_str(&self) -> &str {
        &self.base
    }
}

impl fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

/// `[tracing]` from the keys, else from the OpenTelemetry variables among `vars`
/// (an empty variable counts as unset, as the OpenTelemetry specification says).
/// Problems name the key, or the variable when it gave the value.
pub(super) fn resolve(
    raw: RawTracing,
    vars: &[(String, String)],
    problems: &mut Vec<Problem>,
) -> TracingConfig {
    let variable = |name: &str| {
        vars.iter()
            .find(|(var, value)| var == name && !value.trim().is_empty())
            .map(|(_, value)| value.clone())
    };
    let mut config = TracingConfig::default();

    let endpoint = match raw.otlp_endpoint {
        Some(text) => Some(("tracing.otlp_endpoint", text)),
        None => variable(OTLP_ENDPOINT_VAR).map(|text| (OTLP_ENDPOINT_VAR, text)),
    };
    if let Some((key, text)) = endpoint {
        if key == OTLP_ENDPOINT_VAR {
            config.from_variables.push(OTLP_ENDPOINT_VAR);
        }
        match OtlpEndpoint::parse(&text) {
            Ok(endpoint) => config.otlp_endpoint = Some(endpoint),
            Err(message) => problems.push(Problem::new(key, message)),
        }
    }

    let service_name = match raw.service_name {
        Some(name) => Some(("tracing.service_name", name)),
        None => variable(SERVICE_NAME_VAR).map(|name| (SERVICE_NAME_VAR, name)),
    };
    if let Some((key, name)) = service_name {
        if key == SERVICE_NAME_VAR {
            config.from_variables.push(SERVICE_NAME_VAR);
        }
        let name = name.trim();
        if name.is_empty() {
            problems.push(Problem::new(key, "is empty"));
        } else if name.len() > MAX_SERVICE_NAME || name.chars().any(char::is_control) {
            problems.push(Problem::new(
                key,
                format!("must be at most {MAX_SERVICE_NAME} bytes without control characters"),
            ));
        } else {
            config.service_name = name.to_owned();
        }
    }

    if let Some(ratio) = raw.sample_ratio {
        let ratio = match ratio {
            RawRatio::Number(ratio) => Some(ratio),
            RawRatio::Text(text) => text.trim().parse::<f64>().ok(),
        };
        match ratio {
            Some(ratio) if (0.0..=1.0).contains(&ratio) => config.sample_ratio = ratio,
            _ => problems.push(Problem::new(
                "tracing.sample_ratio",
                "must be a number from 0.0 (no new trace sampled) to 1.0 (every trace)",
            )),
        }
    }
    config
}
