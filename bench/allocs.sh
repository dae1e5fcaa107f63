#!/usr/bin/env bash
# Heap allocations per proxied request: uprobes on glibc's malloc, calloc and realloc,
# counted by `perf stat` on the ipproxy process while wrk drives it, divided by wrk's
# request count.
#
# Usage: bench/allocs.sh [BINARY]      (default: target/release/ipproxy, built first)
# Knobs (env): ALLOC_MODE (plain | tls), ALLOC_CONNS (64), ALLOC_SECONDS (8),
#              QUIET=0 (do not wait for a quiet machine).
# Needs: root (perf probe), perf, wrk, curl, openssl, nginx (tls mode), python3.
# The probes (probe_libc:malloc, :calloc, :realloc) are added when missing and left in
# place; `perf probe -d 'probe_libc:*'` removes them.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
MODE=${ALLOC_MODE:-plain}
CONNS=${ALLOC_CONNS:-64}
SECONDS_TO_COUNT=${ALLOC_SECONDS:-8}
LIBC=/lib/x86_64-linux-gnu/libc.so.6
PING_PATH=/_rest/v4/sim/ping

OUT="$BENCH/results/allocs-$(date -u +%Y%m%dT%H%M%SZ)-$MODE"
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/ipproxy-allocs.XXXXXX)
chmod 755 "$WORK"
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

BIN=${1:-}
if [[ -z "$BIN" ]]; then
    (cd "$ROOT" && timeout 3600 cargo build --release --bin ipproxy)
    BIN="$ROOT/target/release/ipproxy"
fi

for function in malloc calloc realloc; do
    perf probe -l 2>/dev/null | grep -q "probe_libc:$function " ||
        perf probe -q -x "$LIBC" "$function" >/dev/null
done

wait_quiet
LOAD_AT_START=$(cat /proc/loadavg)

start_proxied "$MODE"
PROXY_PID=$LAST_PID
curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics"
URL="http://127.0.0.1:$PROXY_PORT$PING_PATH"
wait_for "ipproxy ping" "$URL"

# Warm-up: connections open, pools filled, caches warm.
timeout 30 wrk -t1 -c"$CONNS" -d2s "$URL" >/dev/null

perf stat -x, -e probe_libc:malloc,probe_libc:calloc,probe_libc:realloc -p "$PROXY_PID" \
    -o "$OUT/perf-stat.csv" &
PERF_PID=$!
PIDS+=("$PERF_PID")
sleep 0.2
timeout $((SECONDS_TO_COUNT + 30)) wrk -t1 -c"$CONNS" -d"${SECONDS_TO_COUNT}s" \
    -s "$BENCH/report.lua" "$URL" >"$OUT/wrk.txt" 2>&1
sleep 0.2
kill -INT "$PERF_PID"
wait "$PERF_PID" || true

python3 - "$OUT" "$MODE" "$CONNS" "$LOAD_AT_START" "$BIN" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
out, mode, conns, load, binary = sys.argv[1:]
wrk = json.loads(next(l for l in open(f"{out}/wrk.txt") if l.startswith("BENCH_JSON ")).split(" ", 1)[1])
counts = {}
for line in open(f"{out}/perf-stat.csv"):
    fields = line.strip().split(",")
    if len(fields) > 2 and fields[2].startswith("probe_libc:"):
        counts[fields[2].split(":")[1]] = int(fields[0]) if fields[0].isdigit() else 0
requests = wrk["requests"]
total = sum(counts.values())
print(f"{binary}: mode {mode}, {conns} connections, {requests} requests; load at start {load.strip()}")
for name, count in counts.items():
    print(f"  {name}: {count} ({count / requests:.2f} per request)")
print(f"allocations per request: {total / requests:.2f}")
EOF
