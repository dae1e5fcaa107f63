#!/usr/bin/env bash
# What tracing costs a request, on loopback: ipproxy built without the `otel` feature,
# built with it but tracing off (the default), with tracing on but the collector down
# (a closed port), and with tracing on and a collector that accepts every batch (nginx
# answering 200 on /v1/traces: the export's own cost, not a collector's). Every
# request is sampled (no traceparent from wrk, sample_ratio 1.0).
#
# Usage: bench/tracing.sh              5 repetitions x 6 s per target, at 1 and 64 connections
#        QUICK=1 bench/tracing.sh      1 x 2 s (smoke)
# Knobs (env): REPS, DURATION (s), CONNS ("1 64"), WRK_THREADS (1), SKIP_BUILD=1 (use
#              BIN_OTEL and BIN_PLAIN as they are).
# Needs: cargo, wrk, nginx, curl, python3. Writes bench/results/tracing-<stamp>/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
if [[ "${QUICK:-0}" == 1 ]]; then
    REPS=${REPS:-1}
    DURATION=${DURATION:-2}
else
    REPS=${REPS:-5}
    DURATION=${DURATION:-6}
fi
CONNS=${CONNS:-"1 64"}
WRK_THREADS=${WRK_THREADS:-1}
PING_PATH=/_rest/v4/sim/ping
# Every wrk run is bounded: its own duration plus this much.
WRK_GRACE=30

for tool in cargo wrk nginx curl python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found" >&2; exit 2; }
done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$ROOT/bench/results/tracing-$STAMP"
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/ipproxy-tracing-bench.XXXXXX)
chmod 755 "$WORK"

# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

# ---- the two builds ----------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_OTEL=${BIN_OTEL:-$WORK/ipproxy-otel}
BIN_PLAIN=${BIN_PLAIN:-$WORK/ipproxy-plain}
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "bench: building release with and without the otel feature"
    (cd "$ROOT" && timeout 3600 cargo build --release --locked --bin ipproxy)
    cp "$TARGET_DIR/release/ipproxy" "$BIN_OTEL"
    (cd "$ROOT" && timeout 3600 cargo build --release --locked --no-default-features --bin ipproxy)
    cp "$TARGET_DIR/release/ipproxy" "$BIN_PLAIN"
fi
for bin in "$BIN_OTEL" "$BIN_PLAIN"; do
    [[ -x "$bin" ]] || { echo "bench: $bin missing" >&2; exit 1; }
done
{
    echo "otel    $(stat -c %s "$BIN_OTEL") bytes"
    echo "plain   $(stat -c %s "$BIN_PLAIN") bytes"
} >"$OUT/binary-sizes.txt"

# ---- the upstream and the collectors -----------------------------------------------
BIN=$BIN_PLAIN start_sim "$OUT/sim.log"

# A port where nothing listens: every export is refused.
DOWN="127.0.0.1:$(free_port)"
# A collector that takes every batch and answers 200 (and drops it).
SINK_PORT=$(free_port)
SINK_DIR="$WORK/sink"
nginx_prefix "$SINK_DIR"
cat >"$SINK_DIR/nginx.conf" <<EOF
worker_processes 1;
error_log $SINK_DIR/error.log warn;
pid $SINK_DIR/nginx.pid;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $SINK_DIR/client_body;
    proxy_temp_path $SINK_DIR/proxy_temp;
    fastcgi_temp_path $SINK_DIR/fastcgi_temp;
    uwsgi_temp_path $SINK_DIR/uwsgi_temp;
    scgi_temp_path $SINK_DIR/scgi_temp;
    client_max_body_size 16m;
    server {
        listen 127.0.0.1:$SINK_PORT;
        location = /v1/traces { return 200; }
    }
}
EOF
run_nginx "$SINK_DIR" "$OUT/sink.log"
wait_for "collector sink" -X POST "http://127.0.0.1:$SINK_PORT/v1/traces"

# ---- the four proxies --------------------------------------------------------------
# start_target NAME BINARY OTLP_ENDPOINT (empty: tracing off): sets PORT[NAME], ADMIN[NAME].
declare -A PORT ADMIN
start_target() {
    local name=$1 bin=$2 endpoint=$3
    local tracing=()
    [[ -n "$endpoint" ]] && tracing=(IPPROXY_TRACING__OTLP_ENDPOINT="$endpoint")
    BIN=$bin start_ipproxy "$OUT/ipproxy-$name.log" "http://$SIM" "${tracing[@]}"
    PORT[$name]=$PROXY_PORT
    ADMIN[$name]=$ADMIN_PORT
}
TARGETS=(plain otel-off otel-down otel-up)
start_target plain "$BIN_PLAIN" ""
start_target otel-off "$BIN_OTEL" ""
start_target otel-down "$BIN_OTEL" "http://$DOWN"
start_target otel-up "$BIN_OTEL" "http://127.0.0.1:$SINK_PORT"
for name in "${TARGETS[@]}"; do
    wait_for "ipproxy $name" "http://127.0.0.1:${ADMIN[$name]}/readyz"
    # Scraped once, as in production: the metrics recorder is installed.
    curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:${ADMIN[$name]}/metrics"
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:${PORT[$name]}$PING_PATH")
    [[ "$code" == 200 ]] || { echo "bench: $name ping answered $code" >&2; exit 1; }
done

# ---- measurement -------------------------------------------------------------------
RAW="$OUT/raw.tsv"
printf 'conns\trep\ttarget\trps\tp50_ms\tp99_ms\tnon2xx\tload1\n' >"$RAW"
for conns in $CONNS; do
for rep in $(seq "$REPS"); do
    for name in "${TARGETS[@]}"; do
        load1=$(load1)
        text=$(timeout $((DURATION + WRK_GRACE)) wrk -t"$WRK_THREADS" -c"$conns" -d"${DURATION}s" \
            --timeout 10s --latency "http://127.0.0.1:${PORT[$name]}$PING_PATH")
        echo "$text" >"$OUT/wrk-$name-c$conns-$rep.txt"
        python3 - "$conns" "$rep" "$name" "$load1" "$OUT/wrk-$name-c$conns-$rep.txt" >>"$RAW" <<'PY'
import re, sys
conns, rep, name, load1, path = sys.argv[1:6]
text = open(path).read()
def ms(label):
    m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
print(f"{conns}\t{rep}\t{name}\t{rps:.0f}\t{ms('50'):.3f}\t{ms('99'):.3f}\t{non2xx.group(1) if non2xx else 0}\t{load1}")
PY
        echo "c=$conns rep $rep $name: $(tail -1 "$RAW" | cut -f4) req/s"
    done
done
done

# Drops and exports as the proxies counted them.
for name in otel-down otel-up; do
    curl -fsS --max-time 5 "http://127.0.0.1:${ADMIN[$name]}/metrics" |
        grep '^ipproxy_trace_spans' | sed "s/^/$name /" >>"$OUT/trace-metrics.txt" || true
done

python3 - "$RAW" "$OUT/binary-sizes.txt" >"$OUT/summary.md" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
sizes = open(sys.argv[2]).read().strip()
order = ["plain", "otel-off", "otel-down", "otel-up"]
print("| conns | target | req/s (median) | p50 ms | p99 ms | non-2xx | reps |")
print("|---:|---|---:|---:|---:|---:|---:|")
for conns in dict.fromkeys(r["conns"] for r in rows):
    base = None
    for name in order:
        mine = [r for r in rows if r["target"] == name and r["conns"] == conns]
        rps = statistics.median(float(r["rps"]) for r in mine)
        p50 = statistics.median(float(r["p50_ms"]) for r in mine)
        p99 = statistics.median(float(r["p99_ms"]) for r in mine)
        bad = sum(int(r["non2xx"]) for r in mine)
        base = base or rps
        print(f"| {conns} | {name} | {rps:,.0f} ({rps / base - 1:+.1%}) | {p50:.3f} | {p99:.3f} | {bad} | {len(mine)} |")
loads = [float(r["load1"]) for r in rows]
print(f"\n1-minute load before each run: min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}")
print("\nBinary sizes (release, stripped):\n")
for line in sizes.splitlines():
    print(f"    {line}")
PY
cat "$OUT/summary.md"
echo "bench: results in $OUT"
