#!/usr/bin/env bash
# Many replicas, one token: N ipproxy replicas (release build) behind a round-robin
# load balancer, against the simulator in --invalidate-on-reauth mode, with the memory
# store (each replica logs in by itself) and the redis store (the fleet shares one
# token); then the redis store's cost on the hot path: one replica per store, side by
# side, with a long-lived token.
#
# Usage: bench/fleet.sh                 both phases (~12 min after the build, ~17 with memory0, plus the quiet gates)
#        QUICK=1 bench/fleet.sh         smoke run (~3 min: 1 run x 5 s per cell, 2 latency reps)
# Knobs (env):
#   fleet phase:   REPLICAS ("1 3 10"), STORES ("memory redis"; also "memory0" = memory
#                  with auth.min_reauth_interval=0s, the behaviour before that key
#                  existed), REPS (3), DURATION (20 s), WARMUP (3 s), CONNS (16),
#                  TOKEN_TTL (8s), REFRESH_BEFORE (3s)
#   latency phase: LAT_CONNS ("1 64"), LAT_REPS (5), LAT_DURATION (6 s)
#   PHASES ("latency fleet"), WRK_THREADS (1), SKIP_BUILD=1, PROXY_BIN (a binary to
#   measure; default target/release/ipproxy, built unless SKIP_BUILD=1),
#   QUIET_WAIT (1200 s: the longest wait for a quiet machine before each phase; 0 = no
#   wait), QUIET=0 (no wait either), QUIET_LOAD (0.6: the 1-minute load average that
#   counts as quiet).
# Needs: cargo, wrk, nginx, redis-server, redis-cli, curl, openssl, python3.
#
# Loopback only, ports picked free; every process it starts (simulator, replicas,
# nginx, redis-server) is stopped by PID when its cell ends and on exit; every wrk is
# bounded by `timeout`, every wait by a count. Results: bench/results/fleet-<stamp>/
# (runs.jsonl, raw/ with wrk's output and the replicas' logs, meta.json, summary.md);
# nothing saved holds a token, the store key or the Redis password.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
if [[ "${QUICK:-0}" == 1 ]]; then
    REPS=${REPS:-1}
    DURATION=${DURATION:-5}
    LAT_REPS=${LAT_REPS:-2}
    LAT_DURATION=${LAT_DURATION:-2}
    WARMUP=${WARMUP:-2}
fi
REPLICAS=${REPLICAS:-"1 3 10"}
STORES=${STORES:-"memory redis"}
REPS=${REPS:-3}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-16}
TOKEN_TTL=${TOKEN_TTL:-8s}
REFRESH_BEFORE=${REFRESH_BEFORE:-3s}
LAT_CONNS=${LAT_CONNS:-"1 64"}
LAT_REPS=${LAT_REPS:-5}
LAT_DURATION=${LAT_DURATION:-6}
LAT_TOKEN_TTL=24h
PHASES=${PHASES:-"latency fleet"}
WRK_THREADS=${WRK_THREADS:-1}
QUIET_WAIT=${QUIET_WAIT:-1200}
QUIET_LOAD=${QUIET_LOAD:-0.6}
PING_PATH=/_rest/v4/sim/ping
# Every wrk run is bounded: its own duration plus this much.
WRK_GRACE=30

for tool in cargo wrk nginx redis-server redis-cli curl openssl python3; do
    command -v "$tool" >/dev/null || { echo "fleet: $tool not found (see bench/README.md)" >&2; exit 2; }
done
for store in $STORES; do
    case $store in memory | memory0 | redis) ;; *) echo "fleet: unknown store $store" >&2; exit 2 ;; esac
done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$BENCH/results/fleet-$STAMP"
RAW="$OUT/raw"
mkdir -p "$RAW"
RUNS="$OUT/runs.jsonl"
: >"$RUNS"
WORK=$(mktemp -d /tmp/ipproxy-fleet.XXXXXX)
chmod 755 "$WORK"

ME=fleet
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

# Other engineers' compilers and load generators (ours are not running between runs;
# our nginx is left out by PID).
foreign_procs() {
    local ours=" ${PIDS[*]} " pid name
    for name in rustc wrk nginx; do
        for pid in $(pgrep -x "$name" || true); do
            [[ "$ours" == *" $pid "* ]] && continue
            [[ "$ours" == *" $(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null) "* ]] && continue
            echo -n "$name "
        done
    done
}

# Waits (bounded by QUIET_WAIT, re-checking every 30 s; QUIET=0: not at all) for a
# quiet machine: 1-minute load average below QUIET_LOAD and nobody else's rustc, wrk
# or nginx running; the verdict is recorded either way.
GATES=()
announce_wait() {
    echo "fleet: waiting for a quiet machine (load $QUIET_LOADAVG; others running: ${QUIET_BUSY:-none}); ${QUIET_WAITED}s of ${QUIET_WAIT}s"
}
quiet_gate() {
    local phase=$1 verdict QUIET_WAIT=$QUIET_WAIT
    [[ "$QUIET" == 1 ]] || QUIET_WAIT=0
    if until_quiet foreign_procs announce_wait; then
        verdict=quiet
    else
        verdict="NOT quiet (busy: ${QUIET_BUSY:-none}; load above $QUIET_LOAD)"
    fi
    echo "fleet: quiet gate before the $phase phase: $verdict after ${QUIET_WAITED}s (load $QUIET_LOADAVG)"
    GATES+=("{\"phase\":\"$phase\",\"verdict\":\"$verdict\",\"waited_s\":$QUIET_WAITED,\"load\":\"$QUIET_LOADAVG\"}")
}

# Removes anything secret-looking from a saved file: JWT-shaped tokens, the store key,
# the Redis password.
redact() {
    sed -i -E -e 's/eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*/<token>/g' \
        -e "s/$STORE_KEY/<store-key>/g" -e "s/$REDIS_PASSWORD/<redis-password>/g" "$@"
}

# ---- build ----------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${PROXY_BIN:-$TARGET_DIR/release/ipproxy}
if [[ "${SKIP_BUILD:-0}" != 1 && -z "${PROXY_BIN:-}" ]]; then
    echo "fleet: building release (cargo build --release)"
    (cd "$ROOT" && timeout 3600 cargo build --release --bin ipproxy)
fi
[[ -x "$BIN" ]] || { echo "fleet: $BIN missing" >&2; exit 1; }

# ---- secrets, as files (as in production), in the temporary directory only -------
printf 'demo-password\n' >"$WORK/password"
STORE_KEY=$(openssl rand -hex 32)
printf '%s\n' "$STORE_KEY" >"$WORK/store-key"
REDIS_PASSWORD=$(openssl rand -hex 16)
chmod 600 "$WORK/password" "$WORK/store-key"

# ---- redis-server: one for the whole run, persistence off, password on -----------
REDIS_PORT=$(free_port)
mkdir -p "$WORK/redis"
printf 'port %s\nbind 127.0.0.1\nsave ""\nappendonly no\ndir %s\nrequirepass %s\n' \
    "$REDIS_PORT" "$WORK/redis" "$REDIS_PASSWORD" >"$WORK/redis/redis.conf"
redis-server "$WORK/redis/redis.conf" >"$WORK/redis/redis.log" 2>&1 &
PIDS+=("$!")
redis() { REDISCLI_AUTH=$REDIS_PASSWORD timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
for _ in $(seq 100); do
    [[ "$(redis PING 2>/dev/null)" == PONG ]] && break
    sleep 0.1
done
[[ "$(redis PING)" == PONG ]] || { echo "fleet: redis-server did not come up" >&2; exit 1; }
printf 'redis://:%s@127.0.0.1:%s/0\n' "$REDIS_PASSWORD" "$REDIS_PORT" >"$WORK/redis-url"
chmod 600 "$WORK/redis-url"

# ---- the pieces of a cell ----------------------------------------------------------
# start_replica STORE PROXY_PORT ADMIN_PORT LOG [VAR=VALUE...]: appends to REPLICA_PIDS.
# A clean environment: no inherited IPPROXY_* or proxy variable decides anything.
start_replica() {
    local store=$1 port=$2 admin=$3 log=$4
    shift 4
    local -a vars=(
        IPPROXY_SERVER__LISTEN="127.0.0.1:$port"
        IPPROXY_SERVER__ADMIN_LISTEN="127.0.0.1:$admin"
        IPPROXY_UPSTREAM__URL="http://$SIM"
        IPPROXY_AUTH__URL="http://$SIM/_rest/v4/authenticate"
        IPPROXY_AUTH__USERNAME=demo
        IPPROXY_AUTH__PASSWORD_FILE="$WORK/password"
        IPPROXY_LOG__LEVEL=warn
    )
    case $store in
        memory) ;;
        memory0) vars+=(IPPROXY_AUTH__MIN_REAUTH_INTERVAL=0s) ;;
        redis) vars+=(
            IPPROXY_STORE__KIND=redis
            IPPROXY_STORE__URL_FILE="$WORK/redis-url"
            IPPROXY_STORE__KEY_FILE="$WORK/store-key"
        ) ;;
    esac
    env -i PATH="$PATH" "${vars[@]}" "$@" "$BIN" run >"$log" 2>&1 &
    PIDS+=("$!")
    REPLICA_PIDS+=("$!")
}

scrape() { curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" >"$2"; }

# run_wrk URL CONNS SECONDS OUTFILE [COUNT_STATUS]
run_wrk() {
    local url=$1 conns=$2 seconds=$3 out=$4 count=${5:-0} threads=$WRK_THREADS
    ((threads > conns)) && threads=$conns
    FLEET_COUNT_STATUS=$count timeout $((seconds + WRK_GRACE)) \
        wrk -t"$threads" -c"$conns" -d"${seconds}s" --timeout 10s \
        -s "$BENCH/fleet/report.lua" "$url" >"$out" 2>&1 || {
        echo "fleet: wrk failed (see $out)" >&2
        exit 1
    }
}

# ---- fleet phase: N replicas behind nginx, one cell = one fresh fleet --------------
fleet_cell() {
    local store=$1 n=$2 rep=$3
    local cell="$WORK/cell-$store-n$n-rep$rep" name="fleet-$store-n$n-rep$rep" i
    mkdir -p "$cell"
    redis FLUSHALL >/dev/null
    start_sim "$WORK/sim.log" --token-ttl "$TOKEN_TTL" --invalidate-on-reauth
    local -a ports
    mapfile -t ports < <(free_ports $((2 * n + 1)))
    REPLICA_PIDS=()
    for i in $(seq 0 $((n - 1))); do
        start_replica "$store" "${ports[$((2 * i))]}" "${ports[$((2 * i + 1))]}" "$cell/replica-$i.log" \
            IPPROXY_AUTH__REFRESH_BEFORE="$REFRESH_BEFORE"
    done
    for i in $(seq 0 $((n - 1))); do
        wait_for "replica $i" "http://127.0.0.1:${ports[$((2 * i + 1))]}/readyz"
        # Installs the metrics recorder, as a Prometheus scrape does in production.
        scrape "${ports[$((2 * i + 1))]}" /dev/null
    done

    # The load balancer: nginx, round robin over the replicas.
    local front_port=${ports[$((2 * n))]} servers="" nginx_dir="$cell/nginx"
    for i in $(seq 0 $((n - 1))); do
        servers+="        server 127.0.0.1:${ports[$((2 * i))]} max_fails=0;"$'\n'
    done
    nginx_prefix "$nginx_dir"
    fill "$BENCH/fleet/nginx-front.conf.in" "$nginx_dir/nginx.conf" "DIR=$nginx_dir" \
        "LISTEN=127.0.0.1:$front_port" "SERVERS=${servers%$'\n'}"
    run_nginx "$nginx_dir" "$cell/nginx.log"
    local nginx_pid=$LAST_PID
    local front="http://127.0.0.1:$front_port"
    wait_answer nginx "$front$PING_PATH"

    # Warm-up (startup logins settle), then zero the counters and measure.
    run_wrk "$front$PING_PATH" "$CONNS" "$WARMUP" "$cell/warmup.txt"
    for i in $(seq 0 $((n - 1))); do
        scrape "${ports[$((2 * i + 1))]}" "$cell/before-$i.prom"
    done
    curl -fsS --max-time 5 -X POST -o /dev/null "http://$SIM/__sim/reset"
    redis CONFIG RESETSTAT >/dev/null
    local load_before foreign
    load_before=$(loadavg)
    foreign=$(foreign_procs)
    run_wrk "$front$PING_PATH" "$CONNS" "$DURATION" "$cell/wrk.txt" 1
    curl -fsS --max-time 5 "http://$SIM/__sim/counters" >"$cell/sim.json"
    for i in $(seq 0 $((n - 1))); do
        scrape "${ports[$((2 * i + 1))]}" "$cell/after-$i.prom"
    done
    if [[ $store == redis ]]; then
        redis INFO commandstats >"$cell/redis.txt"
    fi

    stop_pids "$nginx_pid" "${REPLICA_PIDS[@]}" "$SIM_PID"
    python3 "$BENCH/fleet/report.py" fleet --out "$RUNS" --cell "$cell" --store "$store" \
        --replicas "$n" --rep "$rep" --load "$load_before / $(loadavg)" --foreign "$foreign"
    # Raw output kept: wrk's, the simulator's counters, the replicas' logs (warn level).
    cp "$cell/wrk.txt" "$RAW/$name.wrk.txt"
    cp "$cell/sim.json" "$RAW/$name.sim.json"
    for i in $(seq 0 $((n - 1))); do
        sed "s/^/replica-$i: /" "$cell/replica-$i.log"
    done >"$RAW/$name.replicas.log"
    cp "$cell/after-0.prom" "$RAW/$name.replica-0.metrics.txt"
    redact "$RAW/$name".*
    rm -rf "$cell"
}

fleet_phase() {
    local rep n i stores=($STORES) count
    count=${#stores[@]}
    echo "fleet: fleet phase: replicas {$REPLICAS} x stores {$STORES} x $REPS run(s) x ${DURATION}s"
    for rep in $(seq "$REPS"); do
        for n in $REPLICAS; do
            # The store order rotates every repetition, so drift spreads over both.
            for i in $(seq 0 $((count - 1))); do
                fleet_cell "${stores[$(((i + rep) % count))]}" "$n" "$rep"
            done
        done
    done
}

# ---- latency phase: one memory and one redis replica, side by side ----------------
latency_phase() {
    echo "fleet: latency phase: connections {$LAT_CONNS} x $LAT_REPS rep(s) x ${LAT_DURATION}s, memory vs redis"
    redis FLUSHALL >/dev/null
    start_sim "$WORK/sim.log" --token-ttl "$LAT_TOKEN_TTL"
    local -a ports
    mapfile -t ports < <(free_ports 4)
    REPLICA_PIDS=()
    start_replica memory "${ports[0]}" "${ports[1]}" "$WORK/latency-memory.log"
    local memory_pid=${REPLICA_PIDS[0]}
    start_replica redis "${ports[2]}" "${ports[3]}" "$WORK/latency-redis.log"
    local redis_pid=${REPLICA_PIDS[1]}
    declare -A url=([memory]="http://127.0.0.1:${ports[0]}" [redis]="http://127.0.0.1:${ports[2]}")
    declare -A pid=([memory]=$memory_pid [redis]=$redis_pid)
    wait_for "memory replica" "http://127.0.0.1:${ports[1]}/readyz"
    wait_for "redis replica" "http://127.0.0.1:${ports[3]}/readyz"
    scrape "${ports[1]}" /dev/null
    scrape "${ports[3]}" /dev/null
    local target conns rep i before after raw requests=0 targets=(memory redis)
    for conns in $LAT_CONNS; do
        for target in "${targets[@]}"; do
            run_wrk "${url[$target]}$PING_PATH" "$conns" 1 "$WORK/warmup.txt"
        done
    done
    # From here on, every Redis command and store operation is the hot path's.
    scrape "${ports[3]}" "$WORK/latency-before.prom"
    redis CONFIG RESETSTAT >/dev/null
    curl -fsS --max-time 5 -X POST -o /dev/null "http://$SIM/__sim/reset"
    for conns in $LAT_CONNS; do
        for rep in $(seq "$LAT_REPS"); do
            for i in 0 1; do
                target=${targets[$(((i + rep) % 2))]}
                raw="$RAW/latency-c$conns-$target-rep$rep.wrk.txt"
                before=$(cpu_ticks "${pid[$target]}")
                local load
                load=$(loadavg)
                run_wrk "${url[$target]}$PING_PATH" "$conns" "$LAT_DURATION" "$raw"
                after=$(cpu_ticks "${pid[$target]}")
                python3 "$BENCH/fleet/report.py" latency --out "$RUNS" --wrk "$raw" --store "$target" \
                    --conns "$conns" --rep "$rep" --cpu-ticks $((after - before)) --load "$load"
                if [[ $target == redis ]]; then
                    requests=$((requests + $(sed -n 's/^BENCH_JSON {"requests":\([0-9]*\).*/\1/p' "$raw")))
                fi
            done
        done
    done
    scrape "${ports[3]}" "$WORK/latency-after.prom"
    redis INFO commandstats >"$WORK/latency-redis.txt"
    curl -fsS --max-time 5 "http://$SIM/__sim/counters" >"$WORK/latency-sim.json"
    stop_pids "$memory_pid" "$redis_pid" "$SIM_PID"
    python3 - "$OUT/meta.json" "$requests" "$WORK/latency-redis.txt" "$WORK/latency-sim.json" \
        "$(python3 "$BENCH/fleet/report.py" counters "$WORK/latency-before.prom" "$WORK/latency-after.prom")" <<'EOF'
import json, re, sys
meta = json.load(open(sys.argv[1]))
calls = {m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_(\S+):calls=(\d+)", open(sys.argv[3]).read())}
# Not the proxy's: our CONFIG RESETSTAT, and the AUTH + INFO of the redis-cli that read these.
calls = {k: v for k, v in calls.items() if not k.startswith(("config", "info"))}
if calls.get("auth"):
    calls["auth"] -= 1
calls = {k: v for k, v in calls.items() if v}
meta["hot_path"] = {"requests": int(sys.argv[2]), "redis_commands": calls,
                    "auth_calls": json.load(open(sys.argv[4]))["auth_calls"],
                    "store_ops": json.loads(sys.argv[5])}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
    for target in memory redis; do
        cp "$WORK/latency-$target.log" "$RAW/latency-$target.replica.log"
    done
    redact "$RAW"/latency-*
}

# ---- run ---------------------------------------------------------------------------
python3 - "$OUT/meta.json" <<EOF
import json, platform, subprocess, sys
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
def out(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    return (r.stdout.strip() or r.stderr.strip()).splitlines()[0]
json.dump({
    "stamp": "$STAMP", "nproc": $(nproc), "cpu": cpu, "kernel": platform.release(),
    "commit": out("git", "-C", "$ROOT", "rev-parse", "--short", "HEAD"),
    "wrk": out("wrk", "-v"), "nginx": out("nginx", "-v"), "redis": out("redis-server", "--version"),
    "rustc": out("rustc", "-V"), "clk_tck": $(getconf CLK_TCK), "wrk_threads": $WRK_THREADS,
    "fleet": {"replicas": "$REPLICAS".split(), "stores": "$STORES".split(), "reps": $REPS,
              "duration_s": $DURATION, "warmup_s": $WARMUP, "conns": $CONNS,
              "token_ttl": "$TOKEN_TTL", "refresh_before": "$REFRESH_BEFORE"},
    "latency": {"conns": "$LAT_CONNS".split(), "reps": $LAT_REPS, "duration_s": $LAT_DURATION,
                "token_ttl": "$LAT_TOKEN_TTL"},
}, open(sys.argv[1], "w"), indent=1)
EOF

echo "fleet: results in $OUT"
for phase in $PHASES; do
    quiet_gate "$phase"
    case $phase in
        fleet) fleet_phase ;;
        latency) latency_phase ;;
        *) echo "fleet: unknown phase $phase" >&2; exit 2 ;;
    esac
done

python3 - "$OUT/meta.json" "[$(IFS=,; echo "${GATES[*]}")]" "$(loadavg)" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1]))
meta["quiet_gates"] = json.loads(sys.argv[2])
meta["load_at_end"] = sys.argv[3]
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
cp "$WORK/sim.log" "$RAW/sim.log" 2>/dev/null || true
redact "$RAW/sim.log" 2>/dev/null || true
python3 "$BENCH/fleet/report.py" summary "$OUT" | tee "$OUT/summary.md"

# Nothing secret may have been saved.
if grep -rqE -e "$STORE_KEY" -e "$REDIS_PASSWORD" -e 'eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.' "$OUT"; then
    echo "fleet: a secret reached $OUT" >&2
    exit 1
fi
echo "fleet: raw results and summary in $OUT"
