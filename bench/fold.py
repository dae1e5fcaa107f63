#!/usr/bin/env python3
"""Reads `perf script` output on stdin; prints the share of samples whose stack holds
each marker (inclusive cost of a component), then the hottest leaf functions.

Markers are substrings of symbol names; a sample counts once per marker."""

import re
import sys
from collections import Counter

MARKERS = [
    ("kernel (any [kernel] frame on top)", None),
    ("syscalls: sendto/write*", r"__x64_sys_(sendto|write|writev)\b"),
    ("syscalls: recvfrom/read*", r"__x64_sys_(recvfrom|read|readv)\b"),
    ("syscalls: epoll_wait", r"__x64_sys_epoll_wait"),
    ("futex (wakeups, parking)", r"futex"),
    ("malloc/free/realloc (libc)", r"^(malloc|free|realloc|calloc|_int_malloc|_int_free|cfree|__libc_malloc|__libc_free|malloc_consolidate|_int_realloc)"),
    ("ipproxy::proxy::pool (checkout, drive, return)", r"ipproxy::proxy::pool"),
    ("hyper_util::client (legacy pool, connect)", r"hyper_util::client"),
    ("hyper client dispatch/conn", r"hyper::client::"),
    ("hyper h1 (server and client roles)", r"hyper::proto::h1"),
    ("hyper_util server (auto, graceful)", r"hyper_util::server"),
    ("rustls (records, state machine)", r"rustls::"),
    ("ring (AES-GCM, hashes)", r"(ring::|ring_core_|aes_gcm|gcm_)"),
    ("axum/tower router + layers", r"(axum::|tower::|tower_http::)"),
    ("ipproxy::proxy::pipeline (whole handler)", r"ipproxy::proxy::pipeline"),
    ("ipproxy::proxy::forward", r"ipproxy::proxy::forward"),
    ("metrics + prometheus recorder", r"(metrics::|metrics_exporter_prometheus|metrics_util)"),
    ("tracing (events, spans, fmt)", r"(tracing::|tracing_core::|tracing_subscriber::)"),
    ("url::Url::parse / Url handling", r"url::"),
    ("http::HeaderMap ops", r"http::header::map::"),
    ("upstream_request_headers", r"upstream_request_headers"),
    ("RequestId::generate (rand + format)", r"RequestId::generate"),
    ("tokio scheduler/runtime", r"tokio::runtime::"),
    ("tokio::time (timeouts, timer wheel)", r"tokio::(time|runtime::time)"),
]


def main():
    samples = []
    stack = []
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                samples.append(stack)
            stack = []
            continue
        if not line.startswith((" ", "\t")):
            continue  # the sample header line
        parts = line.strip().split(" ", 1)
        if len(parts) < 2:
            continue
        symbol = parts[1]
        symbol = re.sub(r"\+0x[0-9a-f]+", "", symbol)
        stack.append(symbol)
    if stack:
        samples.append(stack)
    total = len(samples)
    if not total:
        print("no samples")
        return
    print(f"{total} samples; inclusive share of samples whose stack holds the marker:\n")
    for name, pattern in MARKERS:
        if pattern is None:
            hits = sum(1 for s in samples if s and "[kernel" in s[0])
        else:
            regex = re.compile(pattern)
            hits = sum(1 for s in samples if any(regex.search(f.split(" (")[0]) for f in s))
        print(f"{hits / total * 100:6.1f} %  {name}")
    leaves = Counter(s[0].split(" (")[0] for s in samples if s)
    print("\nhottest leaf functions (self):\n")
    for symbol, count in leaves.most_common(40):
        print(f"{count / total * 100:6.1f} %  {symbol[:150]}")


if __name__ == "__main__":
    main()
