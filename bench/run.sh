#!/usr/bin/env bash
# ipproxy against nginx, the floor proxy (bench/floor.rs: the thinnest hyper proxy) and
# the direct upstream, side by side, on loopback, with the upstream over plain HTTP and
# over HTTPS.
#
# Builds the release binary and the floor, starts the simulator (the origin), an HTTPS
# front for it (nginx terminating TLS with a test certificate), and per mode an ipproxy
# (log level warn), an nginx doing the same job with a fixed token (upstream keepalive
# above the connection count) and a floor proxy; plus, in plain mode, a second ipproxy
# at log level info (only to show the logging cost). Drives them with wrk, targets
# interleaved within every repetition; records user and system CPU per request of every
# target and of the upstream; writes raw results and a markdown summary under
# bench/results/.
#
# The default shape is a sidecar's (PIN=1): every proxy and the upstream share CPU
# PROXY_CPU (0) through taskset, one worker each (ipproxy's worker count follows its
# CPU affinity; nginx worker_processes 1), and wrk runs alone on LOAD_CPU (1).
# PIN=0 lets everything float over all cores (nginx worker_processes = nproc).
#
# Usage: bench/run.sh                  full run (5 repetitions x 6 s per cell, ~20 min)
#        QUICK=1 bench/run.sh          smoke run (1 x 2 s)
# Knobs (env): REPS, DURATION (s), MODES ("plain tls"), CONNS ("1 64 256"),
#              BODY_CONNS (16), BODIES=0 (skip the 1 MiB POST and 10 MiB download cells),
#              WRK_THREADS (1), SKIP_BUILD=1, PROXY_BIN (a binary to measure instead),
#              FLOOR_BIN (a floor binary to use), BEFORE_BIN (a second ipproxy binary,
#              measured in the same run as target "before": before/after comparisons), PIN (1), PROXY_CPU (0), LOAD_CPU (1),
#              WORKERS (nginx worker_processes; default 1 pinned, else nproc, as
#              ipproxy's workers),
#              QUIET=0 (do not wait for a quiet machine), QUIET_WAIT (s, 1200),
#              QUIET_LOAD (0.5), INFO=0 (no ipproxy at log level info),
#              COUNTS=0 (no syscall, context-switch and TCP segment counts; they need
#              perf with tracepoint access, and are on when it works).
# Needs: cargo, nginx, wrk, curl, openssl, python3 (see bench/README.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
if [[ "${QUICK:-0}" == 1 ]]; then
    REPS=${REPS:-1}
    DURATION=${DURATION:-2}
    QUIET=${QUIET:-0}
else
    REPS=${REPS:-5}
    DURATION=${DURATION:-6}
    QUIET=${QUIET:-1}
fi
MODES=${MODES:-"plain tls"}
CONNS=${CONNS:-"1 64 256"}
BODY_CONNS=${BODY_CONNS:-16}
BODIES=${BODIES:-1}
WRK_THREADS=${WRK_THREADS:-1}
PING_PATH=/_rest/v4/sim/ping
POST_PATH=/_rest/v4/echo
POST_BYTES=$((1024 * 1024))
DOWNLOAD_BYTES=$((10 * 1024 * 1024))
DOWNLOAD_PATH=/_rest/v4/sim/bytes/$DOWNLOAD_BYTES
# Every wrk run is bounded: its own duration plus this much.
WRK_GRACE=30

for tool in cargo nginx wrk curl openssl python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found (see bench/README.md)" >&2; exit 2; }
done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$BENCH/results/$STAMP"
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/ipproxy-bench.XXXXXX)
chmod 755 "$WORK"

PIN=${PIN:-1}
# Per-request counts of the target's syscalls and context switches (perf stat attached
# to its processes for the measured run) and of the TCP segments the whole machine sent
# (/proc/net/snmp: client, proxy and upstream together, so a proxied request's two
# connections against the direct target's one).
if [[ -z "${COUNTS:-}" ]]; then
    COUNTS=0
    perf stat -x, -e raw_syscalls:sys_enter,context-switches -- true >/dev/null 2>&1 && COUNTS=1
fi
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
if [[ "$PIN" == 1 ]]; then
    command -v taskset >/dev/null || { echo "bench: taskset not found (PIN=0 to run unpinned)" >&2; exit 2; }
    ON_PROXY="taskset -c $PROXY_CPU"
    ON_LOAD="taskset -c $LOAD_CPU"
    WORKERS=${WORKERS:-1}
else
    ON_PROXY=""
    ON_LOAD=""
fi

# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

# ---- build ----------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${PROXY_BIN:-$TARGET_DIR/release/ipproxy}
FLOOR=${FLOOR_BIN:-$TARGET_DIR/release/examples/floor}
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "bench: building release (cargo build --release --bin ipproxy --example floor)"
    if [[ -z "${PROXY_BIN:-}" ]]; then
        (cd "$ROOT" && timeout 3600 cargo build --release --locked --bin ipproxy)
    fi
    if [[ -z "${FLOOR_BIN:-}" ]]; then
        (cd "$ROOT" && timeout 3600 cargo build --release --locked --example floor)
    fi
fi
[[ -x "$BIN" ]] || { echo "bench: $BIN missing" >&2; exit 1; }
[[ -x "$FLOOR" ]] || { echo "bench: $FLOOR missing" >&2; exit 1; }

wait_quiet
LOAD_AT_START=$(cat /proc/loadavg)

# ---- simulator (the origin) --------------------------------------------------------
start_sim "$OUT/sim.log"

TOKEN=$(curl -fsS --max-time 5 -X POST "http://$SIM/_rest/v4/authenticate" \
    -H 'Content-Type: application/json' -H 'Accept: application/json' \
    -d '{"username":"demo","password":"demo-password"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# The floor proxy: LISTEN UPSTREAM(host:port) HOST [CA_FILE SERVER_NAME].
start_floor() {
    local listen=$1 upstream=$2 host=$3 ca=${4:-} name=${5:-}
    local tls=()
    [[ -n "$ca" ]] && tls=(FLOOR_CA_FILE="$ca" FLOOR_SERVER_NAME="$name")
    env FLOOR_LISTEN="127.0.0.1:$listen" FLOOR_UPSTREAM="$upstream" FLOOR_HOST="$host" \
        FLOOR_TOKEN="$TOKEN" "${tls[@]}" $ON_PROXY "$FLOOR" >"$OUT/floor-$listen.log" 2>&1 &
    PIDS+=("$!")
    LAST_PID=$!
}

declare -A URL HEADER PROXY_PID NGINX_MASTER UPSTREAM_PIDS ADMIN
INFO_LOG="$WORK/ipproxy-info.log"

for mode in $MODES; do
    case $mode in
        plain)
            start_upstream plain
            URL[plain/direct]="http://$SIM"
            UPSTREAM_PIDS[plain]="$SIM_PID"
            nginx_port=$(free_port)
            start_nginx nginx "$BENCH/nginx.conf.in" "LISTEN=127.0.0.1:$nginx_port" \
                "UPSTREAM=$SIM" "UPSTREAM_HOST=$SIM" "SCHEME=http" "TLS="
            ;;
        tls)
            start_upstream tls
            pki="$WORK/pki"
            tls_port=$TLS_PORT
            TLS_UPSTREAM_PID=$LAST_PID
            URL[tls/direct]="$UPSTREAM"
            UPSTREAM_PIDS[tls]="$SIM_PID $TLS_UPSTREAM_PID"
            wait_for "tls upstream" --cacert "$pki/ca.pem" -H "Authorization: Bearer $TOKEN" "$UPSTREAM$PING_PATH"
            tls_directives="            proxy_ssl_trusted_certificate $pki/ca.pem;
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_protocols TLSv1.2 TLSv1.3;   # 1.22 leaves TLSv1.3 out by default; rustls uses it
            proxy_ssl_session_reuse on;"
            nginx_port=$(free_port)
            start_nginx nginx-tls "$BENCH/nginx.conf.in" "LISTEN=127.0.0.1:$nginx_port" \
                "UPSTREAM=127.0.0.1:$tls_port" "UPSTREAM_HOST=localhost:$tls_port" "SCHEME=https" \
                "TLS=$tls_directives"
            ;;
        *) echo "bench: unknown mode $mode (plain, tls)" >&2; exit 2 ;;
    esac
    NGINX_MASTER[$mode]=$LAST_PID
    URL[$mode/nginx]="http://127.0.0.1:$nginx_port"
    HEADER[$mode/direct]="Authorization: Bearer $TOKEN"
    HEADER[$mode/nginx]=""
    if [[ $mode == tls ]]; then
        start_ipproxy "$OUT/ipproxy-tls.log" "$UPSTREAM" "${UPSTREAM_VARS[@]}"
    else
        start_ipproxy "$OUT/ipproxy.log" "$UPSTREAM"
    fi
    PROXY_PID[$mode/ipproxy]=$LAST_PID
    URL[$mode/ipproxy]="http://127.0.0.1:$PROXY_PORT"
    HEADER[$mode/ipproxy]=""
    ADMIN[$mode/ipproxy]=$ADMIN_PORT
    port=$(free_port)
    if [[ $mode == tls ]]; then
        start_floor "$port" "127.0.0.1:$tls_port" "localhost:$tls_port" "$pki/ca.pem" localhost
    else
        start_floor "$port" "$SIM" "$SIM"
    fi
    PROXY_PID[$mode/floor]=$LAST_PID
    URL[$mode/floor]="http://127.0.0.1:$port"
    HEADER[$mode/floor]=""
    if [[ -n "${BEFORE_BIN:-}" ]]; then
        BIN=$BEFORE_BIN start_ipproxy "$OUT/before-$mode.log" "$UPSTREAM" "${UPSTREAM_VARS[@]}"
        PROXY_PID[$mode/before]=$LAST_PID
        URL[$mode/before]="http://127.0.0.1:$PROXY_PORT"
        HEADER[$mode/before]=""
        ADMIN[$mode/before]=$ADMIN_PORT
    fi
    if [[ $mode == plain && "${INFO:-1}" == 1 ]]; then
        start_ipproxy "$INFO_LOG" "$UPSTREAM" IPPROXY_LOG__LEVEL=info
        PROXY_PID[plain/ipproxy-info]=$LAST_PID
        URL[plain/ipproxy-info]="http://127.0.0.1:$PROXY_PORT"
        HEADER[plain/ipproxy-info]=""
        ADMIN[plain/ipproxy-info]=$ADMIN_PORT
    fi
done

for key in "${!ADMIN[@]}"; do
    wait_for "$key" "http://127.0.0.1:${ADMIN[$key]}/readyz"
    # Scrape /metrics once, as Prometheus would (production is scraped).
    curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:${ADMIN[$key]}/metrics"
done

# ---- measurement helpers ---------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)

# The processes whose CPU a target costs: ipproxy's one process; nginx master+workers.
target_pids() {
    local mode=$1 target=$2
    case $target in
        direct) ;;
        nginx) echo "${NGINX_MASTER[$mode]}" $(pgrep -P "${NGINX_MASTER[$mode]}" || true) ;;
        *) echo "${PROXY_PID[$mode/$target]}" ;;
    esac
}
# The processes whose peak RSS is reported: ipproxy's process; nginx's workers.
rss_pids() {
    case $2 in
        nginx) pgrep -P "${NGINX_MASTER[$1]}" || true ;;
        *) target_pids "$1" "$2" ;;
    esac
}
# The upstream's processes: the simulator (and in TLS mode the nginx in front of it).
upstream_pids() {
    local pid
    for pid in ${UPSTREAM_PIDS[$1]}; do
        echo "$pid"
        [[ "$pid" == "$SIM_PID" ]] || pgrep -P "$pid" || true
    done
}
# Idle memory, ready and before any request: every ipproxy, and nginx (workers;
# master apart).
idle_json="{"
for key in "${!PROXY_PID[@]}"; do
    idle_json+="\"$key\": $(status_kib VmRSS "${PROXY_PID[$key]}"), "
done
for mode in $MODES; do
    idle_json+="\"$mode/nginx\": $(status_kib VmRSS $(rss_pids "$mode" nginx)), "
    idle_json+="\"$mode/nginx-master\": $(status_kib VmRSS "${NGINX_MASTER[$mode]}"), "
done
idle_json="${idle_json%, }}"

# Sanity: every target answers the token-checked ping with 200.
for key in "${!URL[@]}"; do
    args=(-k)
    [[ -n "${HEADER[$key]}" ]] && args+=(-H "${HEADER[$key]}")
    wait_for "$key" "${args[@]}" "${URL[$key]}$PING_PATH"
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${args[@]}" "${URL[$key]}$PING_PATH")
    [[ "$code" == 200 ]] || { echo "bench: $key ping answered $code" >&2; exit 1; }
done

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
    "openssl": out("openssl", "version"),
    "rustc": out("rustc", "-V"), "commit": out("git", "-C", "$ROOT", "rev-parse", "--short", "HEAD"),
    "binary": "$BIN",
    "pinned": $PIN, "proxy_cpu": "$PROXY_CPU", "load_cpu": "$LOAD_CPU",
    "reps": $REPS, "duration_s": $DURATION, "wrk_threads": $WRK_THREADS, "nginx_workers": $WORKERS,
    "body_conns": $BODY_CONNS, "clk_tck": $CLK_TCK, "modes": "$MODES",
    "load_at_start": "$LOAD_AT_START", "quiet_wait": $QUIET, "not_quiet": $NOT_QUIET,
    "idle_rss_kib": $idle_json,
}, open(sys.argv[1], "w"), indent=1)
EOF

RUNS="$OUT/runs.jsonl"
: >"$RUNS"

# TCP segments sent by the whole machine so far.
out_segments() {
    awk '$1 == "Tcp:" && $2 != "RtoAlgorithm" {print $12}' /proc/net/snmp
}
# One event's count from `perf stat -x,` output (-1 when perf counted nothing).
perf_count() {
    awk -F, -v event="$1" '$3 == event {print ($1 ~ /^[0-9]+$/) ? $1 : -1; found = 1}
        END {if (!found) print -1}' "$2"
}

# run_wrk SCENARIO MODE TARGET CONNS REP PATH BODY_BYTES RECORD
run_wrk() {
    local scenario=$1 mode=$2 target=$3 conns=$4 rep=$5 path=$6 body=$7 record=$8
    local duration=$DURATION threads=$WRK_THREADS key="$mode/$target"
    [[ "$record" == 1 ]] || duration=1
    ((threads > conns)) && threads=$conns
    local pids up_pids up_before up_after before after line raw load builds_before builds_after
    local -a b a ub ua
    pids=$(target_pids "$mode" "$target")
    up_pids=$(upstream_pids "$mode")
    load=$(load1)
    builds_before=$(builds_running && echo 1 || echo 0)
    read -r -a ub <<<"$(cpu_split $up_pids)"
    read -r -a b <<<"$(cpu_split $pids)"
    raw="$OUT/raw/$scenario.$target.rep$rep.txt"
    mkdir -p "$OUT/raw"
    local perf_out="$raw.perf" perf_pid="" segs_before
    segs_before=$(out_segments)
    if [[ "$record" == 1 && "$COUNTS" == 1 && -n "$pids" ]]; then
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$(echo $pids | tr ' ' ,)" \
            -o "$perf_out" &
        perf_pid=$!
    fi
    BENCH_BODY_BYTES=$body BENCH_HEADER="${HEADER[$key]}" \
        timeout $((duration + WRK_GRACE)) \
        $ON_LOAD wrk -t"$threads" -c"$conns" -d"${duration}s" --timeout 10s \
        -s "$BENCH/report.lua" "${URL[$key]}$path" >"$raw" 2>&1 || {
        echo "bench: wrk failed for $scenario/$target (see $raw)" >&2
        exit 1
    }
    read -r -a a <<<"$(cpu_split $pids)"
    read -r -a ua <<<"$(cpu_split $up_pids)"
    local segments=$(($(out_segments) - segs_before)) syscalls=-1 switches=-1
    if [[ -n "$perf_pid" ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        syscalls=$(perf_count raw_syscalls:sys_enter "$perf_out")
        switches=$(perf_count context-switches "$perf_out")
    fi
    builds_after=$(builds_running && echo 1 || echo 0)
    if [[ "$record" != 1 ]]; then
        rm -f "$raw"
        return
    fi
    sed -i "s|$TOKEN|<token>|g" "$raw"
    line=$(sed -n 's/^BENCH_JSON //p' "$raw")
    [[ -n "$line" ]] || { echo "bench: no result in $raw" >&2; exit 1; }
    local rss_list
    rss_list=$(rss_pids "$mode" "$target")
    printf '{"scenario":"%s","mode":"%s","target":"%s","conns":%d,"rep":%d,"cpu_ticks":%d,"user_ticks":%d,"sys_ticks":%d,"sim_cpu_ticks":%d,"sim_user_ticks":%d,"sim_sys_ticks":%d,"rss_kib":%d,"hwm_kib":%d,"load1":%s,"builds":%d,"syscalls":%d,"ctx_switches":%d,"segments":%d,"wrk":%s}\n' \
        "$scenario" "$mode" "$target" "$conns" "$rep" \
        $((a[0] + a[1] - b[0] - b[1])) $((a[0] - b[0])) $((a[1] - b[1])) \
        $((ua[0] + ua[1] - ub[0] - ub[1])) $((ua[0] - ub[0])) $((ua[1] - ub[1])) \
        "$(status_kib VmRSS $rss_list)" "$(status_kib VmHWM $rss_list)" "$load" \
        $((builds_before | builds_after)) "$syscalls" "$switches" "$segments" "$line" >>"$RUNS"
    printf 'bench: %-17s %-13s rep %d  %s  (load %s)\n' "$scenario" "$target" "$rep" \
        "$(python3 -c 'import json,sys; w=json.loads(sys.argv[1]); print("%8.0f req/s  p50 %6.3f ms  p99 %6.3f ms" % (w["requests"]/w["duration_us"]*1e6, w["p50_us"]/1e3, w["p99_us"]/1e3))' "$line")" "$load"
}

# One scenario: a 1 s warm-up per target, then REPS repetitions, the target order
# rotated every repetition so that drift (thermal, page cache, the other tenants of
# the machine) spreads evenly over the targets.
run_scenario() {
    local scenario=$1 mode=$2 conns=$3 path=$4 body=$5
    shift 5
    local targets=("$@") rep i n
    n=${#targets[@]}
    for target in "${targets[@]}"; do
        run_wrk "$scenario" "$mode" "$target" "$conns" 0 "$path" "$body" 0
    done
    for rep in $(seq "$REPS"); do
        wait_no_builds
        for i in $(seq 0 $((n - 1))); do
            run_wrk "$scenario" "$mode" "${targets[$(((i + rep) % n))]}" "$conns" "$rep" "$path" "$body" 1
        done
    done
}

TARGETS=(direct nginx floor ipproxy)
[[ -n "${BEFORE_BIN:-}" ]] && TARGETS+=(before)
echo "bench: $REPS repetitions x ${DURATION}s, modes: $MODES; results in $OUT"
for mode in $MODES; do
    prefix=$([[ $mode == tls ]] && echo "tls-" || echo "")
    for conns in $CONNS; do
        if [[ "$mode" == plain && "$conns" == 64 ]]; then
            run_scenario "${prefix}ping-c$conns" "$mode" "$conns" "$PING_PATH" 0 "${TARGETS[@]}" \
                $([[ "${INFO:-1}" == 1 ]] && echo ipproxy-info)
        else
            run_scenario "${prefix}ping-c$conns" "$mode" "$conns" "$PING_PATH" 0 "${TARGETS[@]}"
        fi
    done
    if [[ "$BODIES" == 1 ]]; then
        run_scenario "${prefix}post1MiB-c$BODY_CONNS" "$mode" "$BODY_CONNS" "$POST_PATH" "$POST_BYTES" direct nginx ipproxy
        run_scenario "${prefix}get10MiB-c$BODY_CONNS" "$mode" "$BODY_CONNS" "$DOWNLOAD_PATH" 0 direct nginx ipproxy
    fi
done

# Idle again: what the allocator kept.
sleep 1
after_json="{"
for key in "${!PROXY_PID[@]}"; do
    after_json+="\"$key\": $(status_kib VmRSS "${PROXY_PID[$key]}"), "
done
after_json="${after_json%, }}"
info_lines=0
info_bytes=0
if [[ -f "$INFO_LOG" ]]; then
    info_lines=$(wc -l <"$INFO_LOG")
    info_bytes=$(wc -c <"$INFO_LOG")
    tail -n 3 "$INFO_LOG" >"$OUT/ipproxy-info.sample.log"
fi
python3 - "$OUT/meta.json" <<EOF
import json, sys
meta = json.load(open(sys.argv[1]))
meta["rss_after_kib"] = $after_json
meta["info_log_lines"] = $info_lines
meta["info_log_bytes"] = $info_bytes
meta["load_at_end"] = "$(cat /proc/loadavg)"
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF

python3 "$BENCH/summarize.py" "$OUT" | tee "$OUT/summary.md"
echo "bench: raw results and summary in $OUT"
