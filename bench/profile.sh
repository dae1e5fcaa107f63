#!/usr/bin/env bash
# CPU profile of ipproxy under load: a release build with symbols and frame pointers
# (separate target dir, same LTO settings), the simulator as upstream (in TLS mode
# behind the nginx that terminates TLS, as in run.sh), wrk driving
# GET /_rest/v4/sim/ping, `perf record -g` (cpu-clock: this VM has no hardware
# counters) on the ipproxy process only. Pinned as run.sh pins (PIN=1): ipproxy and the
# upstream on CPU 0, wrk on CPU 1.
#
# Usage: bench/profile.sh
# Knobs (env): PROFILE_SECONDS (10), PROFILE_CONNS (64), PROFILE_MODE (plain | tls),
#              PROF_TARGET (target/prof), SKIP_BUILD=1, PROFILE_NO_SCRAPE=1 (no metrics
#              recorder), QUIET=0 (do not wait for a quiet machine), PIN (1),
#              PROXY_BIN (profile this binary instead: a release binary keeps its
#              symbols, so a flat profile needs no separate build).
# Output: bench/results/profile-<stamp>/{perf.data,report-*.txt,folded-top.txt}
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
SECONDS_TO_PROFILE=${PROFILE_SECONDS:-10}
CONNS=${PROFILE_CONNS:-64}
MODE=${PROFILE_MODE:-plain}
PROF_TARGET=${PROF_TARGET:-$ROOT/target/prof}
OUT="$BENCH/results/profile-$(date -u +%Y%m%dT%H%M%SZ)-$MODE-c$CONNS"
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/ipproxy-profile.XXXXXX)
chmod 755 "$WORK"
if [[ "${PIN:-1}" == 1 ]]; then
    ON_PROXY="taskset -c 0"
    ON_LOAD="taskset -c 1"
    WORKERS=1
else
    ON_PROXY=""
    ON_LOAD=""
fi
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

if [[ "${SKIP_BUILD:-0}" != 1 && -z "${PROXY_BIN:-}" ]]; then
    (cd "$ROOT" && CARGO_TARGET_DIR="$PROF_TARGET" CARGO_PROFILE_RELEASE_STRIP=false \
        CARGO_PROFILE_RELEASE_DEBUG=line-tables-only RUSTFLAGS="-C force-frame-pointers=yes" \
        timeout 3600 cargo build --release --bin ipproxy)
fi
BIN=${PROXY_BIN:-$PROF_TARGET/release/ipproxy}

wait_quiet
echo "load at start: $(cat /proc/loadavg)" >"$OUT/load.txt"

start_proxied "$MODE"
PROXY_PID=$LAST_PID
# Install the metrics recorder the way production does: by scraping (see run.sh).
[[ "${PROFILE_NO_SCRAPE:-0}" == 1 ]] || curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics"

timeout $((SECONDS_TO_PROFILE + 30)) $ON_LOAD wrk -t1 -c"$CONNS" -d"$((SECONDS_TO_PROFILE + 3))s" \
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
perf script -i "$OUT/perf.data" 2>/dev/null | python3 "$BENCH/fold.py" >"$OUT/folded-top.txt"
rm -f "$OUT/perf.data.old"
echo "profile: $OUT"
head -n 40 "$OUT/report-self.txt" | grep -v '^#' | grep -v '^$' || true
