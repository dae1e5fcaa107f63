//! Metric labels a client could grow without bound.

use super::*;

/// `VmRSS` of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The series count and the size in bytes of `/metrics`.
async fn metrics_shape(proxy: &ChildProxy) -> (usize, usize) {
    let text = client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let series = text
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count();
    (series, text.len())
}

/// Sends `count` requests, each with a distinct 60,000-character method (what the
/// reproduction used), on one keep-alive connection, and checks each is refused 407.
async fn distinct_methods(stream: &mut TcpStream, from: usize, count: usize) {
    let padding = "X".repeat(60_000);
    let mut response = vec![0u8; 64 * 1024];
    for index in from..from + count {
        let request = format!("M{index:06}{padding} {ECHO_PATH} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        // Read one whole answer: the head, then `content-length` bytes.
        let mut filled = 0;
        let end = loop {
            let read =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut response[filled..]))
                    .await
                    .expect("an answer within 5 s")
                    .expect("read");
            assert!(
                read > 0,
                "the proxy closed the connection at request {index}"
            );
            filled += read;
            let text = String::from_utf8_lossy(&response[..filled]);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                assert!(head.starts_with("HTTP/1.1 407"), "{head}");
                let length: usize = raw_header(&text, "content-length")
                    .and_then(|length| length.parse().ok())
                    .expect("content-length");
                if body.len() >= length {
                    break filled;
                }
            }
        };
        assert!(end < response.len());
    }
}

#[tokio::test]
async fn a_thousand_distinct_methods_grow_neither_the_metrics_nor_the_memory() {
    let sim = Sim::default().await;
    let (_keys, proxy) = keyed_child_proxy(
        &sim,
        &[
            // One 60 KB request line per request would only measure the log writer;
            // the "listening" line (another target) is still needed.
            ("RUST_LOG", "info,ipproxy::pipeline=warn"),
        ],
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    // A first round brings every series and the allocator to their steady state.
    distinct_methods(&mut stream, 0, 100).await;
    let (series_before, size_before) = metrics_shape(&proxy).await;
    let rss_before = rss_kib(proxy.pid());

    distinct_methods(&mut stream, 100, 1000).await;
    let (series_after, size_after) = metrics_shape(&proxy).await;
    let rss_after = rss_kib(proxy.pid());
    eprintln!(
        "1,000 methods: series {series_before} → {series_after}, /metrics {size_before} → \
         {size_after} bytes, RSS {rss_before} → {rss_after} KiB"
    );
    assert_eq!(series_after, series_before, "no new series");
    // Counter values and histogram sums gain a few digits (100 → 1100), nothing
    // like one more 60,000-character label.
    assert!(
        size_after.abs_diff(size_before) < 1024,
        "/metrics grew from {size_before} to {size_after} bytes"
    );
    // The reproduction grew by 70 MB for 600 such methods; allow allocator noise.
    assert!(
        rss_after < rss_before + 4 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert_eq!(sim.counters().api_calls, 0);
}
