#!/usr/bin/env bash
# ipproxy against nginx and the direct upstream, side by side, on loopback.
#
# Builds the release binary, starts the simulator (upstream), ipproxy (log level warn),
# a second ipproxy at log level info (only to show the logging cost), and nginx doing
# the same job with a fixed token; drives them with wrk, targets interleaved within
# every repetition; writes raw results and a markdown summary under bench/results/.
#
# Usage: bench/run.sh                  full run (5 repetitions x 6 s per cell, ~9 min)
#        QUICK=1 bench/run.sh          smoke run (1 x 2 s, ~1 min)
# Knobs (env): REPS, DURATION (s), CONNS ("1 64 256"), BODY_CONNS (16), WRK_THREADS (1),
#              SKIP_BUILD=1, WORKERS (nginx worker_processes; default nproc, as tokio).
# Needs: cargo, nginx, wrk, curl, python3 (see bench/README.md).
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
CONNS=${CONNS:-"1 64 256"}
BODY_CONNS=${BODY_CONNS:-16}
WRK_THREADS=${WRK_THREADS:-1}
WORKERS=${WORKERS:-$(nproc)}
PING_PATH=/_rest/v4/sim/ping
POST_PATH=/_rest/v4/echo
POST_BYTES=$((1024 * 1024))
DOWNLOAD_BYTES=$((10 * 1024 * 1024))
DOWNLOAD_PATH=/_rest/v4/sim/bytes/$DOWNLOAD_BYTES
# Every wrk run is bounded: its own duration plus this much.
WRK_GRACE=30

for tool in cargo nginx wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found (see bench/README.md)" >&2; exit 2; }
done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$BENCH/results/$STAMP"
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/ipproxy-bench.XXXXXX)
chmod 755 "$WORK"

# ---- processes: every one we start is recorded here and stopped by PID -----------
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits (bounded) until `curl ARGS...` succeeds.
wait_for() {
    local what=$1
    shift
    for _ in $(seq 300); do
        if curl -fsS -o /dev/null --max-time 1 "$@" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "bench: $what did not come up within 30 s" >&2
    exit 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# ---- build ----------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET_DIR/release/ipproxy"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "bench: building release (cargo build --release)"
    (cd "$ROOT" && timeout 3600 cargo build --release --bin ipproxy)
fi
[[ -x "$BIN" ]] || { echo "bench: $BIN missing" >&2; exit 1; }

SIM_PORT=$(free_port)
PROXY_PORT=$(free_port)
ADMIN_PORT=$(free_port)
INFO_PORT=$(free_port)
INFO_ADMIN_PORT=$(free_port)
NGINX_PORT=$(free_port)
SIM="127.0.0.1:$SIM_PORT"

# ---- simulator (the upstream) ----------------------------------------------------
RUST_LOG=warn "$BIN" sim --listen "$SIM" >"$OUT/sim.log" 2>&1 &
SIM_PID=$!
PIDS+=("$SIM_PID")
wait_for simulator "http://$SIM/__sim/counters"

# ---- ipproxy ---------------------------------------------------------------------
start_ipproxy() {
    local listen=$1 admin=$2 level=$3 log=$4
    env -u RUST_LOG \
        IPPROXY_SERVER__LISTEN="127.0.0.1:$listen" \
        IPPROXY_SERVER__ADMIN_LISTEN="127.0.0.1:$admin" \
        IPPROXY_SERVER__MAX_CONCURRENCY=4096 \
        IPPROXY_UPSTREAM__URL="http://$SIM" \
        IPPROXY_AUTH__URL="http://$SIM/_rest/v4/authenticate" \
        IPPROXY_AUTH__USERNAME=demo \
        IPPROXY_AUTH__PASSWORD=demo-password \
        IPPROXY_LOG__LEVEL="$level" \
        "$BIN" run >"$log" 2>&1 &
    PIDS+=("$!")
    LAST_PID=$!
}
start_ipproxy "$PROXY_PORT" "$ADMIN_PORT" warn "$OUT/ipproxy.log"
IPPROXY_PID=$LAST_PID
start_ipproxy "$INFO_PORT" "$INFO_ADMIN_PORT" info "$WORK/ipproxy-info.log"
IPPROXY_INFO_PID=$LAST_PID
wait_for ipproxy "http://127.0.0.1:$ADMIN_PORT/readyz"
wait_for "ipproxy (info)" "http://127.0.0.1:$INFO_ADMIN_PORT/readyz"
# Scrape /metrics once, as Prometheus would: ipproxy installs its metrics recorder on
# the first scrape, and until then the per-request metrics cost nothing (and count
# nothing). Production is scraped, so the benchmark is too.
curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics"
curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:$INFO_ADMIN_PORT/metrics"

# ---- nginx with a token fetched once ---------------------------------------------
TOKEN=$(curl -fsS --max-time 5 -X POST "http://$SIM/_rest/v4/authenticate" \
    -H 'Content-Type: application/json' -H 'Accept: application/json' \
    -d '{"username":"demo","password":"demo-password"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
NGINX_DIR="$WORK/nginx"
mkdir -p "$NGINX_DIR"
for dir in client_body proxy_temp fastcgi_temp uwsgi_temp scgi_temp; do
    mkdir -p "$NGINX_DIR/$dir"
    chmod 777 "$NGINX_DIR/$dir"   # workers drop to the unprivileged user
done
sed -e "s|@DIR@|$NGINX_DIR|g" -e "s|@LISTEN@|127.0.0.1:$NGINX_PORT|g" \
    -e "s|@UPSTREAM@|$SIM|g" -e "s|@TOKEN@|$TOKEN|g" -e "s|@WORKERS@|$WORKERS|g" \
    "$BENCH/nginx.conf.in" >"$NGINX_DIR/nginx.conf"
sed -e "s|$TOKEN|<token>|g" "$NGINX_DIR/nginx.conf" >"$OUT/nginx.conf"
nginx -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" -t -q
nginx -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" -g 'daemon off;' >"$OUT/nginx.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_for nginx "http://127.0.0.1:$NGINX_PORT$PING_PATH"

declare -A URL=(
    [direct]="http://$SIM"
    [nginx]="http://127.0.0.1:$NGINX_PORT"
    [ipproxy]="http://127.0.0.1:$PROXY_PORT"
    [ipproxy-info]="http://127.0.0.1:$INFO_PORT"
)
declare -A HEADER=(
    [direct]="Authorization: Bearer $TOKEN"
    [nginx]=""
    [ipproxy]=""
    [ipproxy-info]=""
)

# Sanity: every target answers the token-checked ping with 200.
for target in direct nginx ipproxy ipproxy-info; do
    args=()
    [[ -n "${HEADER[$target]}" ]] && args=(-H "${HEADER[$target]}")
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${args[@]}" "${URL[$target]}$PING_PATH")
    [[ "$code" == 200 ]] || { echo "bench: $target ping answered $code" >&2; exit 1; }
done

# ---- measurement helpers ---------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)

# The processes whose CPU a target costs: ipproxy's one process; nginx master+workers.
target_pids() {
    case $1 in
        direct) ;;
        nginx) echo "$NGINX_PID" $(pgrep -P "$NGINX_PID" || true) ;;
        ipproxy) echo "$IPPROXY_PID" ;;
        ipproxy-info) echo "$IPPROXY_INFO_PID" ;;
    esac
}
# The processes whose peak RSS is reported: ipproxy's process; nginx's workers.
rss_pids() {
    case $1 in
        nginx) pgrep -P "$NGINX_PID" || true ;;
        *) target_pids "$1" ;;
    esac
}
# utime+stime in clock ticks, summed over the given PIDs.
cpu_ticks() {
    local total=0 pid stat rest
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat")
        rest=${stat##*) }          # fields from 3 on; comm may hold spaces
        read -r -a fields <<<"$rest"
        total=$((total + fields[11] + fields[12]))   # fields 14 and 15 of stat
    done
    echo "$total"
}
# Sum of a /proc/PID/status field (kB) over the given PIDs.
status_kib() {
    local field=$1 total=0 pid value
    shift
    for pid in "$@"; do
        value=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status")
        total=$((total + ${value:-0}))
    done
    echo "$total"
}

# Machine and run description, for the summary.
IDLE_RSS_KIB=$(status_kib VmRSS "$IPPROXY_PID")
NGINX_IDLE_RSS_KIB=$(status_kib VmRSS $(rss_pids nginx))
NGINX_MASTER_RSS_KIB=$(status_kib VmRSS "$NGINX_PID")
python3 - "$OUT/meta.json" <<EOF
import json, platform, subprocess, sys
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
def out(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or subprocess.run(cmd, capture_output=True, text=True, timeout=10).stderr.strip()
    except Exception as error:
        return str(error)
json.dump({
    "stamp": "$STAMP", "nproc": $(nproc), "cpu": cpu, "kernel": platform.release(),
    "mem_kib": int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))),
    "nginx": out("nginx", "-v"), "wrk": out("wrk", "-v").splitlines()[0],
    "rustc": out("rustc", "-V"), "commit": out("git", "-C", "$ROOT", "rev-parse", "--short", "HEAD"),
    "reps": $REPS, "duration_s": $DURATION, "wrk_threads": $WRK_THREADS, "nginx_workers": $WORKERS,
    "body_conns": $BODY_CONNS, "clk_tck": $CLK_TCK,
    "ipproxy_idle_rss_kib": $IDLE_RSS_KIB, "nginx_idle_rss_kib": $NGINX_IDLE_RSS_KIB,
    "nginx_master_rss_kib": $NGINX_MASTER_RSS_KIB,
}, open(sys.argv[1], "w"), indent=1)
EOF

RUNS="$OUT/runs.jsonl"
: >"$RUNS"

# run_wrk SCENARIO TARGET CONNS REP PATH BODY_BYTES RECORD
run_wrk() {
    local scenario=$1 target=$2 conns=$3 rep=$4 path=$5 body=$6 record=$7
    local duration=$DURATION threads=$WRK_THREADS
    [[ "$record" == 1 ]] || duration=1
    ((threads > conns)) && threads=$conns
    local pids sim_before sim_after before after line raw
    pids=$(target_pids "$target")
    sim_before=$(cpu_ticks "$SIM_PID")
    before=$(cpu_ticks $pids)
    raw="$OUT/raw/$scenario.$target.rep$rep.txt"
    mkdir -p "$OUT/raw"
    BENCH_BODY_BYTES=$body BENCH_HEADER="${HEADER[$target]}" \
        timeout $((duration + WRK_GRACE)) \
        wrk -t"$threads" -c"$conns" -d"${duration}s" --timeout 10s \
        -s "$BENCH/report.lua" "${URL[$target]}$path" >"$raw" 2>&1 || {
        echo "bench: wrk failed for $scenario/$target (see $raw)" >&2
        exit 1
    }
    after=$(cpu_ticks $pids)
    sim_after=$(cpu_ticks "$SIM_PID")
    if [[ "$record" != 1 ]]; then
        rm -f "$raw"
        return
    fi
    sed -i "s|$TOKEN|<token>|g" "$raw"
    line=$(sed -n 's/^BENCH_JSON //p' "$raw")
    [[ -n "$line" ]] || { echo "bench: no result in $raw" >&2; exit 1; }
    local rss_list
    rss_list=$(rss_pids "$target")
    printf '{"scenario":"%s","target":"%s","conns":%d,"rep":%d,"cpu_ticks":%d,"sim_cpu_ticks":%d,"rss_kib":%d,"hwm_kib":%d,"wrk":%s}\n' \
        "$scenario" "$target" "$conns" "$rep" $((after - before)) $((sim_after - sim_before)) \
        "$(status_kib VmRSS $rss_list)" "$(status_kib VmHWM $rss_list)" "$line" >>"$RUNS"
    printf 'bench: %-10s %-13s rep %d  %s\n' "$scenario" "$target" "$rep" \
        "$(python3 -c 'import json,sys; w=json.loads(sys.argv[1]); print("%8.0f req/s  p50 %6.3f ms  p99 %6.3f ms" % (w["requests"]/w["duration_us"]*1e6, w["p50_us"]/1e3, w["p99_us"]/1e3))' "$line")"
}

# One scenario: a 1 s warm-up per target, then REPS repetitions, the target order
# rotated every repetition so that drift (thermal, page cache, the other tenants of
# the machine) spreads evenly over the targets.
run_scenario() {
    local scenario=$1 conns=$2 path=$3 body=$4
    shift 4
    local targets=("$@") rep i n
    n=${#targets[@]}
    for target in "${targets[@]}"; do
        run_wrk "$scenario" "$target" "$conns" 0 "$path" "$body" 0
    done
    for rep in $(seq "$REPS"); do
        for i in $(seq 0 $((n - 1))); do
            run_wrk "$scenario" "${targets[$(((i + rep) % n))]}" "$conns" "$rep" "$path" "$body" 1
        done
    done
}

echo "bench: $REPS repetitions x ${DURATION}s; results in $OUT"
for conns in $CONNS; do
    if [[ "$conns" == 64 ]]; then
        run_scenario "ping-c$conns" "$conns" "$PING_PATH" 0 direct nginx ipproxy ipproxy-info
    else
        run_scenario "ping-c$conns" "$conns" "$PING_PATH" 0 direct nginx ipproxy
    fi
done
run_scenario "post1MiB-c$BODY_CONNS" "$BODY_CONNS" "$POST_PATH" "$POST_BYTES" direct nginx ipproxy
run_scenario "get10MiB-c$BODY_CONNS" "$BODY_CONNS" "$DOWNLOAD_PATH" 0 direct nginx ipproxy

# Idle again: what the allocator kept.
sleep 1
python3 - "$OUT/meta.json" "$(status_kib VmRSS "$IPPROXY_PID")" "$(wc -l <"$WORK/ipproxy-info.log")" "$(wc -c <"$WORK/ipproxy-info.log")" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1]))
meta["ipproxy_rss_after_kib"] = int(sys.argv[2])
meta["info_log_lines"] = int(sys.argv[3])
meta["info_log_bytes"] = int(sys.argv[4])
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
tail -n 3 "$WORK/ipproxy-info.log" >"$OUT/ipproxy-info.sample.log"

python3 "$BENCH/summarize.py" "$OUT" | tee "$OUT/summary.md"
echo "bench: raw results and summary in $OUT"
