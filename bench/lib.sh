# Shared by bench/run.sh, bench/allocs.sh and bench/profile.sh (sourced, not run).
# Expects OUT (results directory) and WORK (scratch directory, removed on exit) set;
# start_nginx also TOKEN (written into configurations, redacted in OUT's copies).
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
# Waits (at most QUIET_WAIT s, checking every 30 s) until the 1-minute load is below
# QUIET_LOAD and nobody builds; says so when it gives up and measures anyway.
wait_quiet() {
    [[ "$QUIET" == 1 ]] || return 0
    local waited=0
    while :; do
        if ! builds_running && python3 -c "import sys; sys.exit(0 if $(load1) < $QUIET_LOAD else 1)"; then
            echo "bench: machine quiet (load $(cut -d' ' -f1-3 /proc/loadavg))"
            return 0
        fi
        if ((waited >= QUIET_WAIT)); then
            echo "bench: NOT QUIET after ${QUIET_WAIT}s (load $(cut -d' ' -f1-3 /proc/loadavg)$(builds_running && echo ', builds running')); measuring anyway" >&2
            NOT_QUIET=1
            return 0
        fi
        sleep 30
        waited=$((waited + 30))
    done
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

# nginx instance NAME TEMPLATE KEY=value...: its own prefix directory; sets LAST_PID.
start_nginx() {
    local name=$1 template=$2
    shift 2
    local dir="$WORK/$name"
    mkdir -p "$dir"
    for sub in client_body proxy_temp fastcgi_temp uwsgi_temp scgi_temp; do
        mkdir -p "$dir/$sub"
        chmod 777 "$dir/$sub"   # workers drop to the unprivileged user
    done
    fill "$template" "$dir/nginx.conf" "DIR=$dir" "WORKERS=$WORKERS" "TOKEN=$TOKEN" "$@"
    sed -e "s|$TOKEN|<token>|g" "$dir/nginx.conf" >"$OUT/$name.conf"
    nginx -p "$dir" -c "$dir/nginx.conf" -t -q
    $ON_PROXY nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$OUT/$name.log" 2>&1 &
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



