# shellcheck shell=bash
# Shared by every bench/*.sh (sourced, not run): process tracking and cleanup, free
# ports, bounded waits, the quiet-machine wait, CPU and memory readings, the test PKI,
# nginx, and the simulator and ipproxy started the same way everywhere.
# Expects OUT (results directory), WORK (scratch directory, removed on exit) and BENCH
# (this directory) set; start_sim and start_ipproxy also BIN (the ipproxy binary);
# start_nginx also TOKEN (written into configurations, redacted in OUT's copies).
# ME names the script in messages (default "bench").
ME=${ME:-bench}
QUIET=${QUIET:-1}
QUIET_WAIT=${QUIET_WAIT:-1200}
QUIET_LOAD=${QUIET_LOAD:-0.5}
# Before each repetition: how long to wait for other people's builds to finish.
BUILD_WAIT=${BUILD_WAIT:-600}
WORKERS=${WORKERS:-$(nproc)}
# A command prefix for the proxies and the upstream (run.sh: taskset to one CPU).
ON_PROXY=${ON_PROXY:-}

# ---- processes: every one we start is recorded here and stopped by PID -----------
PIDS=()
# True while PID is a live (not zombie) process.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}
# Stops the given PIDs (TERM, then KILL after 10 s), reaps them, forgets them.
stop_pids() {
    local pid keep=() _
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 100); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        [[ " $* " == *" $pid "* ]] || keep+=("$pid")
    done
    PIDS=("${keep[@]}")
}
cleanup() {
    if ((${#PIDS[@]})); then stop_pids "${PIDS[@]}"; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for WHAT CURL_ARGS...: waits (bounded: 30 s) until `curl ARGS...` succeeds
# (an answer below 400); wait_answer: until it gets any HTTP answer at all.
wait_for() {
    local what=$1
    shift
    wait_curl "$what" -f "$@"
}
wait_answer() {
    local what=$1
    shift
    wait_curl "$what" "$@"
}
wait_curl() {
    local what=$1
    shift
    for _ in $(seq 300); do
        if curl -sS -o /dev/null --max-time 1 "$@" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "$ME: $what did not come up within 30 s" >&2
    exit 1
}

# COUNT distinct free ports on 127.0.0.1, one a line (all bound at once: distinct).
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
PY
}
free_port() {
    free_ports 1
}

# Fills a template: every @KEY@ by the value of KEY=value arguments.
fill() {
    python3 - "$@" <<'EOF'
import sys
template, out, *pairs = sys.argv[1:]
text = open(template).read()
for pair in pairs:
    key, value = pair.split("=", 1)
    text = text.replace("@" + key + "@", value)
open(out, "w").write(text)
EOF
}

# ---- a quiet machine: other people compile and test on these cores ------------------
builds_running() {
    # rustc or cargo of anyone (this script builds before it measures, never during).
    pgrep -x rustc >/dev/null 2>&1 || pgrep -x cargo >/dev/null 2>&1
}
load1() {
    cut -d' ' -f1 /proc/loadavg
}
loadavg() {
    cut -d' ' -f1-3 /proc/loadavg
}
# until_quiet BUSY [ON_WAIT]: waits (at most QUIET_WAIT s, re-checking every 30 s)
# until the 1-minute load is below QUIET_LOAD and the command BUSY prints nothing (it
# names what runs that should not); ON_WAIT runs before each 30 s sleep. Sets
# QUIET_LOADAVG and QUIET_BUSY (as last seen) and QUIET_WAITED (s); fails when it
# gave up.
until_quiet() {
    local busy=$1 on_wait=${2:-:}
    QUIET_WAITED=0
    while :; do
        QUIET_LOADAVG=$(loadavg)
        QUIET_BUSY=$($busy) || true
        if [[ -z "$QUIET_BUSY" ]] &&
            python3 -c "import sys; sys.exit(0 if float('${QUIET_LOADAVG%% *}') < $QUIET_LOAD else 1)"; then
            return 0
        fi
        if ((QUIET_WAITED >= QUIET_WAIT)); then
            return 1
        fi
        $on_wait
        sleep 30
        QUIET_WAITED=$((QUIET_WAITED + 30))
    done
}
builds_seen() {
    if builds_running; then echo builds; fi
}
# Waits (at most QUIET_WAIT s, checking every 30 s) until the 1-minute load is below
# QUIET_LOAD and nobody builds; says so when it gives up and measures anyway.
wait_quiet() {
    [[ "$QUIET" == 1 ]] || return 0
    if until_quiet builds_seen; then
        echo "$ME: machine quiet (load $QUIET_LOADAVG)"
    else
        echo "$ME: NOT QUIET after ${QUIET_WAIT}s (load $QUIET_LOADAVG${QUIET_BUSY:+, builds running}); measuring anyway" >&2
        NOT_QUIET=1
    fi
}
# Before a repetition: waits (at most BUILD_WAIT s) until nobody builds. The load
# average is not waited for here: the benchmark's own load keeps it up.
wait_no_builds() {
    [[ "$QUIET" == 1 ]] || return 0
    local waited=0
    while builds_running && ((waited < BUILD_WAIT)); do
        sleep 10
        waited=$((waited + 10))
    done
}
# Set by wait_quiet when it gave up; the scripts record it.
# shellcheck disable=SC2034
NOT_QUIET=0

# A test CA and a localhost / 127.0.0.1 certificate (ECDSA P-256) it signs, in DIR:
# ca.pem, leaf.pem, leaf.key.
make_pki() {
    local pki=$1
    mkdir -p "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$pki/ca.key" -out "$pki/ca.pem" -days 2 -subj "/CN=ipproxy bench CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$pki/leaf.key" -out "$pki/leaf.csr" -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$pki/leaf.ext"
    openssl x509 -req -in "$pki/leaf.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
        -CAcreateserial -out "$pki/leaf.pem" -days 2 -extfile "$pki/leaf.ext" 2>/dev/null
    chmod 644 "$pki"/*
}

# nginx_prefix DIR: a prefix directory for an nginx whose workers (unprivileged) write
# their temporary files in it.
nginx_prefix() {
    local dir=$1 sub
    mkdir -p "$dir"
    for sub in client_body proxy_temp fastcgi_temp uwsgi_temp scgi_temp; do
        mkdir -p "$dir/$sub"
        chmod 777 "$dir/$sub"   # workers drop to the unprivileged user
    done
}
# run_nginx DIR LOG: checks DIR/nginx.conf, then runs it in the foreground (under
# ON_PROXY); sets LAST_PID.
run_nginx() {
    local dir=$1 log=$2
    nginx -p "$dir" -c "$dir/nginx.conf" -t -q
    $ON_PROXY nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
# nginx instance NAME TEMPLATE KEY=value...: its own prefix directory; sets LAST_PID.
start_nginx() {
    local name=$1 template=$2
    shift 2
    local dir="$WORK/$name"
    nginx_prefix "$dir"
    fill "$template" "$dir/nginx.conf" "DIR=$dir" "WORKERS=$WORKERS" "TOKEN=$TOKEN" "$@"
    sed -e "s|$TOKEN|<token>|g" "$dir/nginx.conf" >"$OUT/$name.conf"
    run_nginx "$dir" "$OUT/$name.log"
}

# ---- the simulator and ipproxy, started alike by every script ---------------------
# start_proxied MODE: the simulator, the MODE upstream (start_upstream) and one ipproxy
# in front of it (log OUT/ipproxy.log), ready. Sets SIM, UPSTREAM, PROXY_PORT,
# ADMIN_PORT and LAST_PID (ipproxy's).
start_proxied() {
    start_sim "$OUT/sim.log"
    TOKEN=${TOKEN:-unused}
    start_upstream "$1"
    start_ipproxy "$OUT/ipproxy.log" "$UPSTREAM" "${UPSTREAM_VARS[@]}"
    wait_for ipproxy "http://127.0.0.1:$ADMIN_PORT/readyz"
}
# start_sim LOG [SIM_ARGS...]: the simulator (BIN, under ON_PROXY, a clean environment)
# on a free port, its output appended to LOG; waits until it answers. Sets SIM
# (host:port) and SIM_PID.
start_sim() {
    local log=$1
    shift
    SIM="127.0.0.1:$(free_port)"
    # shellcheck disable=SC2086 # ON_PROXY is a command prefix: split on purpose
    env -i PATH="$PATH" RUST_LOG=warn $ON_PROXY "$BIN" sim --listen "$SIM" "$@" >>"$log" 2>&1 &
    SIM_PID=$!
    PIDS+=("$SIM_PID")
    wait_for simulator "http://$SIM/__sim/counters"
}
# start_upstream MODE: what ipproxy forwards to. plain: the simulator (SIM) itself;
# tls: an nginx terminating TLS in front of it (bench/tls-upstream.conf.in) with a
# certificate from a test CA made for the run in WORK/pki (needs TOKEN, see
# start_nginx). Sets UPSTREAM (the URL), UPSTREAM_VARS (the ipproxy variables it
# needs) and, in tls mode, TLS_PORT and LAST_PID.
# shellcheck disable=SC2034 # UPSTREAM, UPSTREAM_VARS, TLS_PORT: for the caller
start_upstream() {
    case $1 in
        plain)
            UPSTREAM="http://$SIM"
            UPSTREAM_VARS=()
            ;;
        tls)
            make_pki "$WORK/pki"
            TLS_PORT=$(free_port)
            start_nginx tls-upstream "$BENCH/tls-upstream.conf.in" "LISTEN=127.0.0.1:$TLS_PORT" \
                "SIM=$SIM" "CERT=$WORK/pki/leaf.pem" "KEY=$WORK/pki/leaf.key"
            UPSTREAM="https://localhost:$TLS_PORT"
            UPSTREAM_VARS=(IPPROXY_UPSTREAM__CA_FILE="$WORK/pki/ca.pem")
            ;;
        *) echo "$ME: unknown mode $1 (plain, tls)" >&2; exit 2 ;;
    esac
}
# start_ipproxy LOG UPSTREAM [VAR=value...]: ipproxy (BIN, under ON_PROXY) on two free
# ports, forwarding to UPSTREAM with the simulator's demo login, log level warn,
# max_concurrency 4096, configured by the IPPROXY_* variables here and the VARs (which
# come later and so win), none of the caller's logging, tracing or proxy variables.
# Does not wait. Sets PROXY_PORT, ADMIN_PORT and LAST_PID.
start_ipproxy() {
    local log=$1 upstream=$2
    shift 2
    PROXY_PORT=$(free_port)
    ADMIN_PORT=$(free_port)
    # shellcheck disable=SC2086 # ON_PROXY is a command prefix: split on purpose
    env -u RUST_LOG -u OTEL_EXPORTER_OTLP_ENDPOINT -u HTTPS_PROXY -u https_proxy -u http_proxy \
        IPPROXY_SERVER__LISTEN="127.0.0.1:$PROXY_PORT" \
        IPPROXY_SERVER__ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
        IPPROXY_SERVER__MAX_CONCURRENCY=4096 \
        IPPROXY_UPSTREAM__URL="$upstream" \
        IPPROXY_AUTH__URL="http://$SIM/_rest/v4/authenticate" \
        IPPROXY_AUTH__USERNAME=demo \
        IPPROXY_AUTH__PASSWORD=demo-password \
        IPPROXY_LOG__LEVEL=warn \
        "$@" $ON_PROXY "$BIN" run >"$log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
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
# "utime stime" in clock ticks, each summed over the given PIDs.
cpu_split() {
    local user=0 sys=0 pid stat rest
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat")
        rest=${stat##*) }
        read -r -a fields <<<"$rest"
        user=$((user + fields[11]))
        sys=$((sys + fields[12]))
    done
    echo "$user $sys"
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
