#!/usr/bin/env bash
# What `Idempotency-Key` costs on the request path: SMS sends through ipproxy to the
# simulator, four targets interleaved within every repetition:
#   plain        the sms route without idempotency, requests without a key
#   nokey        the sms route with idempotency = true, requests without a key
#                (must cost nothing measurable against plain)
#   key-memory   the same proxy, every request with its own key (memory store)
#   key-redis    a proxy with [store] kind = "redis" on a local redis-server, every
#                request with its own key (a claim, an answer written, in Redis)
# The sidecar's shape: the proxies, the simulator and redis-server share CPU 0, wrk
# runs alone on CPU 1 (taskset); one worker per proxy (its affinity).
# Writes runs.jsonl, meta.json and summary.md under bench/results/idempotency-<stamp>/.
#
# Usage: bench/idempotency.sh          (3 repetitions x 3 s per cell, ~2 min)
# Knobs (env): REPS (3), DURATION (s, 3), CONNS ("1 16"), PROXY_BIN (a binary to
#              measure; default target/release/ipproxy, built unless SKIP_BUILD=1),
#              QUIET=0 (do not wait for a quiet machine), QUIET_WAIT, QUIET_LOAD.
# Needs: cargo, wrk, redis-server, redis-cli, curl, python3, taskset.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
REPS=${REPS:-3}
DURATION=${DURATION:-3}
CONNS=${CONNS:-"1 16"}
QUIET=${QUIET:-1}
SEND_PATH=/_rest/v4/app/sms/send
WRK_GRACE=30
ON_PROXY="taskset -c 0"
ON_LOAD="taskset -c 1"

for tool in cargo wrk redis-server redis-cli curl python3 taskset; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found (see bench/README.md)" >&2; exit 2; }
done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$BENCH/results/idempotency-$STAMP"
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/ipproxy-bench.XXXXXX)
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

BIN=${PROXY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/ipproxy}
if [[ "${SKIP_BUILD:-0}" != 1 && -z "${PROXY_BIN:-}" ]]; then
    echo "bench: building release (cargo build --release)"
    (cd "$ROOT" && timeout 3600 cargo build --release --bin ipproxy)
fi
[[ -x "$BIN" ]] || { echo "bench: $BIN missing" >&2; exit 1; }
wait_quiet
LOAD_AT_START=$(cat /proc/loadavg)

start_sim "$WORK/sim.log"

REDIS_PORT=$(free_port)
$ON_PROXY redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no >"$WORK/redis.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done
python3 -c 'import secrets; print(secrets.token_hex(32))' >"$WORK/store-key"

# start_proxy NAME IDEMPOTENT [VAR=value...]: an ipproxy whose sms route has
# idempotency = IDEMPOTENT; sets URL[NAME], PROXY_PID[NAME], ADMIN[NAME].
declare -A URL PROXY_PID ADMIN
start_proxy() {
    local name=$1 idempotent=$2
    shift 2
    printf '[[route]]\nname = "sms"\nprefix = "/_rest/v4/app/sms/"\nidempotency = %s\n\n[[route]]\nname = "rest"\nprefix = "/"\n' \
        "$idempotent" >"$WORK/$name.toml"
    start_ipproxy "$WORK/$name.log" "http://$SIM" IPPROXY_CONFIG="$WORK/$name.toml" "$@"
    PROXY_PID[$name]=$LAST_PID
    URL[$name]="http://127.0.0.1:$PROXY_PORT"
    ADMIN[$name]=$ADMIN_PORT
}
start_proxy plain false
start_proxy idem true
start_proxy redis true IPPROXY_STORE__KIND=redis \
    IPPROXY_STORE__URL="redis://127.0.0.1:$REDIS_PORT/0" \
    IPPROXY_STORE__KEY_FILE="$WORK/store-key"
for name in "${!ADMIN[@]}"; do
    wait_for "$name" "http://127.0.0.1:${ADMIN[$name]}/readyz"
done

# target → proxy, keyed
declare -A TARGET_PROXY=([plain]=plain [nokey]=idem [key-memory]=idem [key-redis]=redis)
declare -A TARGET_KEYED=([plain]=0 [nokey]=0 [key-memory]=1 [key-redis]=1)
TARGETS=(plain nokey key-memory key-redis)

# Sanity: a keyed send is sent once and replayed by both idempotent proxies.
for name in idem redis; do
    for _ in 1 2; do
        replayed=$(curl -fsS -o /dev/null -D - --max-time 5 -X POST "${URL[$name]}$SEND_PATH" \
            -H 'content-type: application/json' -H "idempotency-key: sanity-$name" \
            -d '{"from":"+15550001111","to":"+15550002222","text":"sanity"}' |
            tr -d '\r' | sed -n 's/^idempotent-replayed: //Ip')
    done
    [[ "$replayed" == true ]] || { echo "bench: $name does not replay" >&2; exit 1; }
done

RUNS="$OUT/runs.jsonl"
: >"$RUNS"
CLK_TCK=$(getconf CLK_TCK)

# run_wrk TARGET CONNS REP RECORD
run_wrk() {
    local target=$1 conns=$2 rep=$3 record=$4 duration=$DURATION
    [[ "$record" == 1 ]] || duration=1
    local proxy=${TARGET_PROXY[$target]} raw="$WORK/wrk.txt" before after line
    before=$(cpu_ticks "${PROXY_PID[$proxy]}")
    BENCH_KEYED=${TARGET_KEYED[$target]} BENCH_RUN="$target-$conns-$rep-$record" \
        timeout $((duration + WRK_GRACE)) \
        $ON_LOAD wrk -t1 -c"$conns" -d"${duration}s" --timeout 10s -s "$BENCH/idempotency.lua" \
        "${URL[$proxy]}$SEND_PATH" >"$raw" 2>&1 || {
        cat "$raw" >&2
        echo "bench: wrk failed for $target" >&2
        exit 1
    }
    after=$(cpu_ticks "${PROXY_PID[$proxy]}")
    [[ "$record" == 1 ]] || return 0
    line=$(sed -n 's/^BENCH_JSON //p' "$raw")
    [[ -n "$line" ]] || { cat "$raw" >&2; exit 1; }
    printf '{"target":"%s","conns":%d,"rep":%d,"cpu_ticks":%d,"load1":%s,"wrk":%s}\n' \
        "$target" "$conns" "$rep" $((after - before)) "$(load1)" "$line" >>"$RUNS"
    python3 -c 'import json,sys; w=json.loads(sys.argv[1]); print("bench: %-11s c=%-3s rep %s %8.0f req/s  p50 %6.3f ms  p99 %6.3f ms  errors %d" % (sys.argv[2], sys.argv[3], sys.argv[4], w["requests"]/w["duration_us"]*1e6, w["p50_us"]/1e3, w["p99_us"]/1e3, w["err_status"]+w["err_read"]+w["err_timeout"]))' \
        "$line" "$target" "$conns" "$rep"
}

for conns in $CONNS; do
    for target in "${TARGETS[@]}"; do
        run_wrk "$target" "$conns" 0 0
    done
    for rep in $(seq "$REPS"); do
        wait_no_builds
        n=${#TARGETS[@]}
        for i in $(seq 0 $((n - 1))); do
            run_wrk "${TARGETS[$(((i + rep) % n))]}" "$conns" "$rep" 1
        done
    done
done

redis_keys=$(redis-cli -p "$REDIS_PORT" --scan --pattern 'ipproxy:idem:*' | wc -l)
python3 - "$OUT" "$STAMP" "$BIN" "$LOAD_AT_START" "$NOT_QUIET" "$CLK_TCK" "$redis_keys" \
    "$(git -C "$ROOT" rev-parse --short HEAD)" <<'PY'
import json, statistics, sys
out, stamp, binary, load, not_quiet, clk, redis_keys, commit = sys.argv[1:]
runs = [json.loads(line) for line in open(f"{out}/runs.jsonl")]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
json.dump({"stamp": stamp, "binary": binary, "commit": commit, "cpu": cpu,
           "load_at_start": load, "not_quiet": not_quiet == "1",
           "redis_idem_keys_at_end": int(redis_keys)}, open(f"{out}/meta.json", "w"), indent=1)
lines = [f"# idempotency cost, {stamp} (commit {commit}; load at start {load.split()[0]}"
         + (", NOT QUIET" if not_quiet == "1" else "") + ")", "",
         "| conns | target | req/s (median, range) | p50 ms | p99 ms | proxy CPU µs/req | errors |",
         "|---|---|---|---|---|---|---|"]
for conns in sorted({r["conns"] for r in runs}):
    base = None
    for target in ["plain", "nokey", "key-memory", "key-redis"]:
        cell = [r for r in runs if r["conns"] == conns and r["target"] == target]
        if not cell:
            continue
        rps = [r["wrk"]["requests"] / r["wrk"]["duration_us"] * 1e6 for r in cell]
        p50 = statistics.median(r["wrk"]["p50_us"] for r in cell) / 1e3
        p99 = statistics.median(r["wrk"]["p99_us"] for r in cell) / 1e3
        cpu_us = statistics.median(r["cpu_ticks"] / int(clk) * 1e6 / r["wrk"]["requests"] for r in cell)
        errors = sum(r["wrk"]["err_status"] + r["wrk"]["err_read"] + r["wrk"]["err_timeout"] for r in cell)
        lines.append(f"| {conns} | {target} | {statistics.median(rps):,.0f} ({min(rps):,.0f}–{max(rps):,.0f}) "
                     f"| {p50:.3f} | {p99:.3f} | {cpu_us:.0f} | {errors} |")
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "bench: results in $OUT"
