#!/usr/bin/env bash
# CPU profile of ipproxy under load: a release build with symbols and frame pointers
# (separate target dir, same LTO settings), the simulator as upstream, wrk driving
# GET /_rest/v4/sim/ping at 64 connections, `perf record -g` (cpu-clock: this VM has no
# hardware counters) on the ipproxy process only.
#
# Usage: bench/profile.sh             (PROFILE_SECONDS=10, PROFILE_CONNS=64)
# Output: bench/results/profile-<stamp>/{perf.data,report.txt,folded-top.txt}
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_TO_PROFILE=${PROFILE_SECONDS:-10}
CONNS=${PROFILE_CONNS:-64}
PROF_TARGET=${PROF_TARGET:-/tmp/ipproxy-prof-target}
OUT="$ROOT/bench/results/profile-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() {
    for _ in $(seq 300); do
        curl -fsS -o /dev/null --max-time 1 "$2" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "profile: $1 did not come up within 30 s" >&2
    exit 1
}
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

(cd "$ROOT" && CARGO_TARGET_DIR="$PROF_TARGET" CARGO_PROFILE_RELEASE_STRIP=false \
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only RUSTFLAGS="-C force-frame-pointers=yes" \
    timeout 3600 cargo build --release --bin ipproxy)
BIN="$PROF_TARGET/release/ipproxy"

SIM="127.0.0.1:$(free_port)"
PROXY_PORT=$(free_port)
ADMIN_PORT=$(free_port)
RUST_LOG=warn "$BIN" sim --listen "$SIM" >"$OUT/sim.log" 2>&1 &
PIDS+=("$!")
wait_for simulator "http://$SIM/__sim/counters"
env -u RUST_LOG IPPROXY_SERVER__LISTEN="127.0.0.1:$PROXY_PORT" \
    IPPROXY_SERVER__ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" IPPROXY_SERVER__MAX_CONCURRENCY=4096 \
    IPPROXY_UPSTREAM__URL="http://$SIM" IPPROXY_AUTH__URL="http://$SIM/_rest/v4/authenticate" \
    IPPROXY_AUTH__USERNAME=demo IPPROXY_AUTH__PASSWORD=demo-password IPPROXY_LOG__LEVEL=warn \
    "$BIN" run >"$OUT/ipproxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
wait_for ipproxy "http://127.0.0.1:$ADMIN_PORT/readyz"
# Install the metrics recorder the way production does: by scraping (see run.sh).
# PROFILE_NO_SCRAPE=1 profiles without it.
[[ "${PROFILE_NO_SCRAPE:-0}" == 1 ]] || curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics"

timeout $((SECONDS_TO_PROFILE + 30)) wrk -t1 -c"$CONNS" -d"$((SECONDS_TO_PROFILE + 3))s" \
    --latency "http://127.0.0.1:$PROXY_PORT/_rest/v4/sim/ping" >"$OUT/wrk.txt" 2>&1 &
WRK_PID=$!
PIDS+=("$WRK_PID")
sleep 2
timeout $((SECONDS_TO_PROFILE + 30)) perf record -e cpu-clock -F 1999 -g -p "$PROXY_PID" \
    -o "$OUT/perf.data" -- sleep "$SECONDS_TO_PROFILE" 2>"$OUT/perf-record.log"
wait "$WRK_PID" || true

# Flat (self) and inclusive (children) views, and a coarse grouping by crate.
perf report -i "$OUT/perf.data" --no-children --stdio --percent-limit 0.7 -g none \
    --sort symbol 2>/dev/null | sed 's/[ -]*$//' >"$OUT/report-self.txt"
perf report -i "$OUT/perf.data" --children --stdio --percent-limit 2 -g none \
    --sort symbol 2>/dev/null | sed 's/[ -]*$//' >"$OUT/report-children.txt"
perf script -i "$OUT/perf.data" 2>/dev/null | python3 "$ROOT/bench/fold.py" >"$OUT/folded-top.txt"
rm -f "$OUT/perf.data.old"
echo "profile: $OUT"
head -n 40 "$OUT/report-self.txt" | grep -v '^#' | grep -v '^$' || true
