//! Micro-benchmarks of the per-request work the proxy does besides moving bytes:
//! the header rewrite, the token load (one `ArcSwap` load and a `HeaderValue` clone),
//! the upstream URL, and the request id.
//!
//! `cargo bench --bench hot_path`. The load benchmark against nginx is `bench/run.sh`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use ipproxy::config;
use ipproxy::proxy::headers::{strip_response_headers, upstream_request_headers};
use ipproxy::request_id::RequestId;
use ipproxy::route::RouteTable;
use ipproxy::token::Registry;
use ipproxy::token::store::Store;

/// What an app's HTTP client typically sends to IntelePeer through the proxy.
fn typical_request_headers(with_connection: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut add = |name: &'static str, value: &'static str| {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    };
    add("host", "127.0.0.1:8080");
    add("user-agent", "python-requests/2.32.3");
    add("accept-encoding", "gzip, deflate");
    add("accept", "application/json");
    add("content-type", "application/json");
    add("content-length", "74");
    add("x-request-id", "0f6d2c3e9a8b4c1d8e7f6a5b4c3d2e1f");
    add(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    if with_connection {
        add("connection", "keep-alive");
    }
    headers
}

fn typical_response_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("48"));
    headers.insert(
        header::DATE,
        HeaderValue::from_static("Tue, 01 Jul 2025 12:00:00 GMT"),
    );
    headers.insert(header::SERVER, HeaderValue::from_static("nginx"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    headers
}

fn header_rewrite(c: &mut Criterion) {
    let token_header = header::AUTHORIZATION;
    let plain = typical_request_headers(false);
    let keep_alive = typical_request_headers(true);
    c.bench_function("upstream_request_headers/8 headers", |b| {
        b.iter(|| upstream_request_headers(black_box(&plain), black_box(&token_header)))
    });
    c.bench_function(
        "upstream_request_headers/8 headers + connection: keep-alive",
        |b| b.iter(|| upstream_request_headers(black_box(&keep_alive), black_box(&token_header))),
    );
    let response = typical_response_headers();
    c.bench_function("strip_response_headers/5 headers", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |headers| strip_response_headers(black_box(headers)),
            criterion::BatchSize::SmallInput,
        )
    });
}

/// A route table as `ipproxy run` builds it from `IPPROXY_*` variables, with its token
/// stored, so the benchmarks below run the real lookup code.
fn route_table(runtime: &tokio::runtime::Runtime) -> RouteTable {
    let vars = [
        ("IPPROXY_UPSTREAM__URL", "http://127.0.0.1:9"),
        ("IPPROXY_AUTH__KIND", "static"),
        // A JWT-shaped token of realistic length (IntelePeer's are ~600 bytes).
        ("IPPROXY_AUTH__TOKEN", &"t".repeat(600)),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_string()));
    let config = config::load(None, vars).expect("benchmark configuration is valid");
    let login = ipproxy::proxy::build_login_client(&config.upstream).expect("login client");
    let credentials = Registry::build(&config, &login, &Store::memory());
    let table = RouteTable::build(&config, &credentials);
    runtime.block_on(async {
        for credential in credentials.iter() {
            credential
                .force_refresh()
                .await
                .expect("a static token is stored without I/O");
        }
    });
    table
}

fn token_and_route(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let table = route_table(&runtime);
    let path = "/_rest/v4/app/sms/send";
    let route = table
        .find(path)
        .expect("the default route matches everything");

    c.bench_function(
        "Credential::current (ArcSwap load + HeaderValue clone)",
        |b| b.iter(|| black_box(&route.credential).current(black_box(route.format))),
    );
    c.bench_function("RouteTable::find", |b| {
        b.iter(|| table.find(black_box(path)).is_some())
    });
    c.bench_function(
        "Route::upstream_uri (path string + shared scheme and authority)",
        |b| b.iter(|| route.upstream_uri(black_box(path), black_box(Some("from=1555&to=1666")))),
    );
    c.bench_function("RequestId::generate", |b| b.iter(RequestId::generate));
    let inbound = typical_request_headers(true);
    c.bench_function("RequestId::from_headers (client id kept)", |b| {
        b.iter(|| RequestId::from_headers(black_box(&inbound)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = header_rewrite, token_and_route
}
criterion_main!(benches);
