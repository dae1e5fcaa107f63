#!/usr/bin/env bash
# Builds the ipproxy image and runs it for real, with Podman (run by .ci/run):
#
#   1. image: built from the Dockerfile with a host-built static binary
#      (deploy/build-image.sh; no registry is needed), its size, its files (no shell,
#      no package manager);
#   2. smoke: read-only, non-root, the password as a mounted secret file, the simulator
#      from the same image as IntelePeer, named by its container name (DNS on a Podman
#      network); the image's HEALTHCHECK (`podman healthcheck run`), /readyz, a request
#      without credentials reaching the simulator with the injected token, an HTTPS
#      upstream verified with upstream.ca_file and one signed by an unknown CA refused,
#      `podman stop` draining an in-flight slow request and exiting 0 within
#      shutdown_grace, and no password or token in any container's logs;
#   3. fleet: 3 replicas sharing one token through the host's redis-server, against the
#      simulator in invalidate-on-reauth mode, 20 s of load → 0 failed requests, and
#      the fleet's logins no more than one replica's;
#   4. pod: the app and ipproxy in one Podman pod, the app reaching ipproxy on
#      127.0.0.1 as deploy/kubernetes/sidecar.yaml has it, and that manifest's probe
#      endpoints answering.
#
#   deploy/container-test.sh                    # builds the static release binary
#   IPPROXY_BIN=path/to/static/ipproxy deploy/container-test.sh
#
# Installs podman, runc, netavark, aardvark-dns, iptables, wrk and redis-server with
# apt-get when missing (as root).
# Containers need the runc runtime and explicit ulimits on some hosts (crun refuses a
# mixed cgroup layout; the runtime cannot raise limits above the shell's hard limits),
# so everything runs under a containers.conf of its own (CONTAINERS_CONF). Where
# containers cannot run at all, this fails loudly: it never skips.
#
# Every container is named with this run's prefix and removed (`podman rm -f`) on exit,
# whatever happened; every wait has a deadline. Ports: free ones on 127.0.0.1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started_at=$(date +%s)
passed=0
# The closing line counts the checks: "container-test: N passed, M failed".
die() { echo "container-test: FAIL: $*" >&2; echo "container-test: $passed passed, 1 failed"; exit 1; }
ok() { echo "ok: $*"; passed=$((passed + 1)); }
step() { echo; echo "== $*"; }
now_ms() { date +%s%3N; }

# --- tools ----------------------------------------------------------------------------
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
# netavark and aardvark-dns: the network backend whose DNS resolves container names.
[ -x /usr/lib/podman/netavark ] || missing+=(netavark)
[ -x /usr/lib/podman/aardvark-dns ] || missing+=(aardvark-dns)
# netavark sets up container networks with iptables; without it every `podman run`
# fails with "netavark: No such file or directory" (a fresh Debian has no iptables).
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=(iptables)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v readelf >/dev/null 2>&1 || missing+=(binutils)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]} and not root: install them first"
  echo "container-test: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get could not install ${missing[*]}"
fi
podman --version
for tool in curl python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is needed"
done

work="$(mktemp -d)"
chmod 0755 "$work"
podman_log="$work/podman.err"
prefix="ipproxy-ct-$$"
host_pids=()
cleanup() {
  local status=$?
  set +e
  local ids
  ids="$(podman ps -aq --filter "label=ipproxy-container-test=$prefix" 2>/dev/null)"
  [ -n "$ids" ] && podman rm -f -t 0 $ids >/dev/null 2>&1
  podman pod rm -f "$prefix-pod" >/dev/null 2>&1
  podman network rm -f "$prefix-net" >/dev/null 2>&1
  # Earlier builds of the test image, left untagged by this one (labelled: only ours).
  podman image prune -f --filter label=org.opencontainers.image.title=ipproxy >/dev/null 2>&1
  for pid in "${host_pids[@]}"; do kill "$pid" 2>/dev/null; done
  rm -rf "$work"
  if [ "$status" != 0 ]; then
    grep -v 'systemd' "$podman_log" 2>/dev/null | tail -20 >&2
    echo "container-test: FAILED (containers of $prefix removed)" >&2
  fi
}
trap cleanup EXIT

# Containers of an earlier run that was killed before its trap ran (its PID is gone).
for stale in $(podman ps -a --filter label=ipproxy-container-test \
  --format '{{index .Labels "ipproxy-container-test"}}' 2>/dev/null | sort -u); do
  if ! kill -0 "${stale##*-}" 2>/dev/null; then
    echo "container-test: removing the containers of $stale (an earlier run that was killed)"
    podman ps -aq --filter "label=ipproxy-container-test=$stale" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
    podman pod rm -f "$stale-pod" >/dev/null 2>&1 || true
    podman network rm -f "$stale-net" >/dev/null 2>&1 || true
  fi
done

# runc, and ulimits the runtime can set (at most this shell's hard limits).
hard_nofile="$(ulimit -Hn)"; hard_nproc="$(ulimit -Hu)"
[ "$hard_nofile" = unlimited ] && hard_nofile=65536
[ "$hard_nproc" = unlimited ] && hard_nproc=65536
nofile=$((hard_nofile < 8192 ? hard_nofile : 8192))
nproc=$((hard_nproc < 4096 ? hard_nproc : 4096))
cat >"$work/containers.conf" <<EOF
[engine]
runtime = "runc"
[network]
network_backend = "netavark"
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
EOF
export CONTAINERS_CONF="$work/containers.conf"

# Free loopback ports, as many as asked.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# until DEADLINE_S CMD...: run CMD until it succeeds, at most DEADLINE_S seconds.
until_ok() {
  local deadline=$(($(date +%s) + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true; }
is_200() { [ "$(http_code "$1")" = 200 ]; }
counter() { curl -sf --max-time 5 "$1/__sim/counters" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
# Podman's complaints that it has no systemd for healthcheck timers go to a file
# (shown on failure): the checks run the HEALTHCHECK themselves.
run_labelled() { podman run -d --label "ipproxy-container-test=$prefix" "$@" 2>>"$podman_log"; }
# The hardening every ipproxy container here runs with, as the manifests set it.
hardened=(--read-only --cap-drop all --security-opt no-new-privileges)

# --- 1. the image ---------------------------------------------------------------------
step "image: built from the Dockerfile (IPPROXY_BINARY=prebuilt, no registry)"
image="localhost/ipproxy:container-test"
build_start=$(date +%s)
ENGINE=podman bash deploy/build-image.sh "$image" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; die "the image did not build"; }
ok "built $image in $(($(date +%s) - build_start)) s (the binary's build included, if any)"
size_bytes="$(podman image inspect --format '{{.Size}}' "$image")"
size_mb="$(python3 -c "print(f'{$size_bytes / 1e6:.1f}')")"
ok "image size: $size_bytes bytes ($size_mb MB)"
[ "$size_bytes" -le 20000000 ] || die "the image is $size_mb MB, over the 20 MB goal"

[ "$(podman image inspect --format '{{.Config.User}}' "$image")" = 65532:65532 ] \
  || die "the image's USER is not 65532:65532"
podman image inspect --format '{{json .Config.Healthcheck}}' "$image" | grep -q healthcheck \
  || die "the image has no HEALTHCHECK (built without --format docker?)"

# Every file in the image: exactly what the Dockerfile puts there.
podman create --name "$prefix-files" --label "ipproxy-container-test=$prefix" "$image" >/dev/null 2>>"$podman_log"
podman export "$prefix-files" | tar -t | sed 's#/$##' | grep -v -E '^(\.|)$' | sort >"$work/files.txt"
podman rm -f "$prefix-files" >/dev/null 2>>"$podman_log"
expected_files="dev
etc
etc/group
etc/hosts
etc/ipproxy
etc/ipproxy/ipproxy.toml
etc/nsswitch.conf
etc/passwd
etc/resolv.conf
etc/ssl
etc/ssl/certs
etc/ssl/certs/ca-certificates.crt
proc
run
run/.containerenv
sys
usr
usr/local
usr/local/bin
usr/local/bin/ipproxy"
# hosts, resolv.conf, .containerenv, dev, proc, sys, run: mount points the runtime adds.
unexpected="$(comm -23 "$work/files.txt" <(printf '%s\n' "$expected_files" | sort))"
[ -z "$unexpected" ] || die "unexpected files in the image: $(echo "$unexpected" | tr '\n' ' ')"
for must in usr/local/bin/ipproxy etc/ssl/certs/ca-certificates.crt etc/ipproxy/ipproxy.toml etc/passwd etc/nsswitch.conf; do
  grep -qx "$must" "$work/files.txt" || die "the image lacks /$must"
done
ok "the image holds only ipproxy, the CA bundle, its config, passwd/group and nsswitch.conf (no shell, no package manager)"

# Can containers run at all? (Loudly not, if not.)
podman run --rm --name "$prefix-version" --label "ipproxy-container-test=$prefix" \
  "$image" --version >"$work/version.txt" 2>>"$podman_log" \
  || { tail "$podman_log"; die "containers cannot run on this machine (podman run failed): the container checks cannot be done here"; }
ok "a container runs: $(cat "$work/version.txt")"
if podman run --rm --name "$prefix-sh" --label "ipproxy-container-test=$prefix" \
  --entrypoint /bin/sh "$image" -c true >/dev/null 2>>"$podman_log"; then
  die "the image runs /bin/sh"
fi
ok "no /bin/sh in the image"

# --- secrets --------------------------------------------------------------------------
password="demo-password"          # the simulator's default
mkdir -p "$work/secrets"
printf '%s\n' "$password" >"$work/secrets/password"
chmod 0755 "$work/secrets"; chmod 0444 "$work/secrets/password"

# --- 2. smoke -------------------------------------------------------------------------
step "smoke: read-only, non-root, secret file, simulator by hostname"
net="$prefix-net"
podman network create "$net" >/dev/null 2>>"$podman_log" || die "podman network create failed"
read -r sim_port proxy_port admin_port <<<"$(free_ports 3)"
sim_name="$prefix-sim"
run_labelled --name "$sim_name" --network "$net" "${hardened[@]}" \
  -p "127.0.0.1:$sim_port:8089" "$image" sim --listen 0.0.0.0:8089 >/dev/null \
  || die "the simulator container did not start"
sim="http://127.0.0.1:$sim_port"
until_ok 30 curl -sf "$sim/__sim/counters" || { podman logs "$sim_name"; die "the simulator does not answer on $sim"; }
ok "simulator container $sim_name answers on $sim"

proxy_name="$prefix-proxy"
grace_s=10
t_run=$(now_ms)
run_labelled --name "$proxy_name" --network "$net" "${hardened[@]}" \
  -p "127.0.0.1:$proxy_port:8080" -p "127.0.0.1:$admin_port:9901" \
  -e IPPROXY_UPSTREAM__URL="http://$sim_name:8089" \
  -e IPPROXY_AUTH__URL="http://$sim_name:8089/_rest/v4/authenticate" \
  -e IPPROXY_AUTH__USERNAME=demo \
  -e IPPROXY_SERVER__SHUTDOWN_GRACE="${grace_s}s" \
  -v "$work/secrets:/run/secrets/ipproxy:ro" \
  "$image" >/dev/null || die "the proxy container did not start"
proxy="http://127.0.0.1:$proxy_port" admin="http://127.0.0.1:$admin_port"

until_ok 30 podman healthcheck run "$proxy_name" \
  || { podman logs "$proxy_name"; die "podman healthcheck run (the image's HEALTHCHECK) never passed"; }
ok "HEALTHCHECK passes (podman healthcheck run $proxy_name)"
until_ok 30 is_200 "$admin/readyz" || { podman logs "$proxy_name"; die "/readyz never answered 200"; }
ready_ms=$(($(now_ms) - t_run))
ok "/readyz 200 (a token held; upstream and login named by hostname $sim_name, resolved by DNS) $ready_ms ms after podman run"

[ "$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$proxy_name")" = true ] || die "the root filesystem is not read-only"
pid="$(podman inspect --format '{{.State.Pid}}' "$proxy_name")"
uids="$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")"
gids="$(awk '/^Gid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")"
[ "$uids" = "65532 65532 65532 65532" ] && [ "$gids" = "65532 65532 65532 65532" ] \
  || die "ipproxy runs as uid $uids gid $gids, not 65532"
ok "read-only root filesystem; ipproxy (host PID $pid) runs as UID/GID 65532"
# The simulator's name came from DNS (Podman's aardvark-dns), not from /etc/hosts.
if grep -qw "$sim_name" "/proc/$pid/root/etc/hosts"; then
  die "$sim_name is in the container's /etc/hosts: name resolution through DNS is not shown"
fi
grep -q '^nameserver' "/proc/$pid/root/etc/resolv.conf" || die "the container has no nameserver in /etc/resolv.conf"
ok "$sim_name is not in the container's /etc/hosts: the static binary resolved it through DNS ($(awk '/^nameserver/ {print $2; exit}' "/proc/$pid/root/etc/resolv.conf"))"

# Requests without credentials: the proxy adds the token, the simulator checks it.
requests=200
api_before="$(counter "$sim" api_calls)"
failed=0
for _ in $(seq "$requests"); do
  code="$(http_code -X POST "$proxy/_rest/v4/app/sms/send" -H 'content-type: application/json' \
    -d '{"from":"15550001111","to":"15550002222","text":"container smoke"}')"
  [ "$code" = 202 ] || failed=$((failed + 1))
done
[ "$failed" = 0 ] || die "$failed of $requests SMS sends through the proxy failed"
api_after="$(counter "$sim" api_calls)"
[ $((api_after - api_before)) = "$requests" ] || die "the simulator saw $((api_after - api_before)) calls, not $requests"
rejections="$(curl -sf "$sim/__sim/counters" | python3 -c "import json,sys; c=json.load(sys.stdin); print(sum(v for k, v in c.items() if k.startswith('rejected')))")"
[ "$rejections" = 0 ] || die "the simulator rejected $rejections calls"
logins="$(counter "$sim" auth_calls)"
[ "$logins" = 1 ] || die "$logins logins for one proxy, not 1"
ok "$requests SMS sends without credentials → 202 from the simulator with the injected token, 0 rejected, $logins login"

# SIGTERM drains: a slow request in flight finishes, the container exits 0 in time.
curl -sf -X PUT "$sim/__sim/latency" -d '{"ms": 3000}' || die "could not slow the simulator"
api_before="$(counter "$sim" api_calls)"
curl -s -o "$work/slow.body" -w '%{http_code}' --max-time 30 "$proxy/_rest/v4/sim/ping" >"$work/slow.code" &
slow_pid=$!
in_flight() { [ "$(counter "$sim" api_calls)" -gt "$api_before" ]; }
until_ok 10 in_flight || die "the slow request never reached the simulator"
t_stop=$(now_ms)
podman stop -t $((grace_s + 20)) "$proxy_name" >/dev/null 2>>"$podman_log" || die "podman stop failed"
stop_ms=$(($(now_ms) - t_stop))
wait "$slow_pid" || true
[ "$(cat "$work/slow.code")" = 200 ] && [ "$(cat "$work/slow.body")" = ok ] \
  || die "the in-flight request did not finish on SIGTERM (status $(cat "$work/slow.code"))"
exit_code="$(podman inspect --format '{{.State.ExitCode}}' "$proxy_name")"
[ "$exit_code" = 0 ] || { podman logs "$proxy_name" | tail; die "the proxy exited $exit_code on SIGTERM, not 0"; }
[ "$stop_ms" -lt $((grace_s * 1000)) ] || die "podman stop took $stop_ms ms, over shutdown_grace ${grace_s}s"
curl -sf -X PUT "$sim/__sim/latency" -d '{"ms": 0}' || die "could not reset the simulator's latency"
ok "podman stop: the in-flight 3 s request answered 200, exit 0 after $stop_ms ms (shutdown_grace ${grace_s}s)"

# No secret in the logs (JSON lines; the token itself is checked on the TLS container
# below, whose upstream sees it).
podman logs "$proxy_name" >"$work/proxy.log" 2>&1
[ -s "$work/proxy.log" ] || die "the proxy logged nothing"
if grep -qF "$password" "$work/proxy.log"; then die "the password is in the proxy's logs"; fi
if grep -qiE 'bearer [A-Za-z0-9]' "$work/proxy.log"; then die "a bearer token is in the proxy's logs"; fi
ok "no password or bearer token in the proxy container's logs ($(wc -l <"$work/proxy.log") lines)"

# --- 2b. HTTPS upstream and upstream.ca_file ------------------------------------------
step "smoke: HTTPS upstream verified with upstream.ca_file, an unknown CA refused"
tls="$work/tls"; mkdir -p "$tls"
(
  cd "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=container-test CA" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 2 -subj "/CN=unknown CA" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf 2>/dev/null
) || die "openssl could not make the test certificates"
chmod 0644 "$tls"/*.pem; chmod 0755 "$tls"
read -r tls_port tls_proxy_port tls_admin_port <<<"$(free_ports 3)"
# The HTTPS upstream: answers 200 and records the Authorization header it was sent.
python3 - "$tls_port" "$tls/server.pem" "$tls/server.key" "$tls/seen-authorization" <<'EOF' &
import http.server, ssl, sys
port, cert, key, seen = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(seen, "a") as f:
            f.write(self.headers.get("Authorization", "") + "\n")
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
EOF
host_pids+=($!)
until_ok 10 curl -sf --cacert "$tls/ca.pem" "https://localhost:$tls_port/ready" || die "the HTTPS upstream does not answer"
rm -f "$tls/seen-authorization"

# tls_proxy NAME CA_FILE [LOG_LEVEL]: a proxy on the host network whose upstream is
# the HTTPS server.
tls_proxy() {
  run_labelled --name "$1" --network host "${hardened[@]}" \
    -e IPPROXY_LOG__LEVEL="${3:-info}" \
    -e IPPROXY_SERVER__LISTEN="127.0.0.1:$tls_proxy_port" \
    -e IPPROXY_SERVER__ADMIN_LISTEN="127.0.0.1:$tls_admin_port" \
    -e IPPROXY_UPSTREAM__URL="https://localhost:$tls_port" \
    -e IPPROXY_UPSTREAM__CA_FILE="/run/secrets/ca/$2" \
    -e IPPROXY_AUTH__URL="$sim/_rest/v4/authenticate" \
    -e IPPROXY_AUTH__USERNAME=demo \
    -v "$work/secrets:/run/secrets/ipproxy:ro" \
    -v "$tls:/run/secrets/ca:ro" \
    "$image" >/dev/null || die "the proxy container $1 did not start"
  until_ok 30 is_200 "http://127.0.0.1:$tls_admin_port/readyz" || { podman logs "$1"; die "$1 never got ready"; }
}
tls_proxy "$prefix-tls" ca.pem
code="$(http_code "http://127.0.0.1:$tls_proxy_port/_rest/v4/numbers")"
[ "$code" = 200 ] || { podman logs "$prefix-tls" | tail; die "through an upstream signed by the ca_file CA: $code, not 200"; }
token="$(sed -n 's/^Bearer //p' "$tls/seen-authorization" | head -1)"
[ -n "$token" ] || die "the HTTPS upstream got no bearer token"
ok "HTTPS upstream (certificate for localhost signed by the upstream.ca_file CA): 200, the token injected"
podman logs "$prefix-tls" >"$work/tls.log" 2>&1
if grep -qF "$token" "$work/tls.log"; then die "the token is in the proxy's logs"; fi
if grep -qF "$password" "$work/tls.log"; then die "the password is in the proxy's logs"; fi
ok "the injected token (seen by the upstream) and the password are not in the container's logs"
podman rm -f -t 0 "$prefix-tls" >/dev/null 2>>"$podman_log"

rm -f "$tls/seen-authorization"
# At debug level, which logs the cause of each failed upstream attempt (at info only
# the request's 502 is logged).
tls_proxy "$prefix-tls-unknown" other-ca.pem debug
curl -s -o "$work/unknown.body" -w '%{http_code}' --max-time 10 "http://127.0.0.1:$tls_proxy_port/_rest/v4/numbers" >"$work/unknown.code" || true
[ "$(cat "$work/unknown.code")" = 502 ] || die "an upstream signed by an unknown CA answered $(cat "$work/unknown.code"), not 502"
grep -q upstream_unreachable "$work/unknown.body" || die "the refusal is not upstream_unreachable: $(cat "$work/unknown.body")"
[ ! -s "$tls/seen-authorization" ] || die "the unverified upstream received a request (and a token)"
podman logs "$prefix-tls-unknown" >"$work/tls-unknown.log" 2>&1
grep -qi "certificate\|UnknownIssuer" "$work/tls-unknown.log" \
  || { tail -5 "$work/tls-unknown.log"; die "the refusal is not logged as a certificate problem"; }
if grep -qF "$password" "$work/tls-unknown.log" || grep -qiE 'bearer [A-Za-z0-9]' "$work/tls-unknown.log"; then
  die "a secret is in the debug-level logs"
fi
ok "HTTPS upstream signed by an unknown CA: 502 upstream_unreachable, nothing sent to it, logged (debug) as a certificate error, no secret in the debug logs"
podman rm -f -t 0 "$prefix-tls-unknown" >/dev/null 2>>"$podman_log"

# --- 3. fleet -------------------------------------------------------------------------
step "fleet: 3 replicas, one token through redis-server, invalidate-on-reauth, 20 s of load"
replicas=3
read -r redis_port fleet_sim_port <<<"$(free_ports 2)"
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
  --daemonize no --loglevel warning >"$work/redis.log" 2>&1 &
host_pids+=($!)
until_ok 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$redis_port" || die "redis-server did not start"
mkdir -p "$work/store"
openssl rand -hex 32 >"$work/store/key"
chmod 0755 "$work/store"; chmod 0444 "$work/store/key"
run_labelled --name "$prefix-fleet-sim" --network host "${hardened[@]}" \
  "$image" sim --listen "127.0.0.1:$fleet_sim_port" --token-ttl 8s --invalidate-on-reauth >/dev/null \
  || die "the fleet's simulator did not start"
fleet_sim="http://127.0.0.1:$fleet_sim_port"
until_ok 30 curl -sf "$fleet_sim/__sim/counters" || die "the fleet's simulator does not answer"
fleet_ports=() fleet_admins=()
for i in $(seq "$replicas"); do
  read -r p a <<<"$(free_ports 2)"
  run_labelled --name "$prefix-replica-$i" --network host "${hardened[@]}" \
    -e IPPROXY_SERVER__LISTEN="127.0.0.1:$p" \
    -e IPPROXY_SERVER__ADMIN_LISTEN="127.0.0.1:$a" \
    -e IPPROXY_UPSTREAM__URL="$fleet_sim" \
    -e IPPROXY_AUTH__URL="$fleet_sim/_rest/v4/authenticate" \
    -e IPPROXY_AUTH__USERNAME=demo \
    -e IPPROXY_AUTH__REFRESH_BEFORE=3s \
    -e IPPROXY_STORE__KIND=redis \
    -e IPPROXY_STORE__URL="redis://127.0.0.1:$redis_port/0" \
    -e IPPROXY_STORE__KEY_FILE=/run/secrets/ipproxy-store/key \
    -v "$work/secrets:/run/secrets/ipproxy:ro" \
    -v "$work/store:/run/secrets/ipproxy-store:ro" \
    "$image" >/dev/null || die "replica $i did not start"
  until_ok 30 is_200 "http://127.0.0.1:$a/readyz" || { podman logs "$prefix-replica-$i"; die "replica $i never got ready"; }
  fleet_ports+=("$p")
  fleet_admins+=("$a")
done
ok "$replicas replicas ready, sharing the store on 127.0.0.1:$redis_port"
cat >"$work/sms.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"from":"15550001111","to":"15550002222","text":"fleet"}'
wrk.headers["Content-Type"] = "application/json"
EOF
curl -sf -X POST "$fleet_sim/__sim/reset" || die "could not reset the fleet simulator's counters"
load_s=20
load_pids=()
for i in $(seq "$replicas"); do
  timeout $((load_s + 30)) wrk -t1 -c4 -d"${load_s}s" --timeout 5s -s "$work/sms.lua" \
    "http://127.0.0.1:${fleet_ports[$((i - 1))]}/_rest/v4/app/sms/send" >"$work/wrk-$i.txt" 2>&1 &
  load_pids+=($!)
done
for pid in "${load_pids[@]}"; do wait "$pid" || die "wrk failed: $(cat "$work"/wrk-*.txt)"; done
total=0
for i in $(seq "$replicas"); do
  out="$work/wrk-$i.txt"
  if grep -q 'Non-2xx\|Socket errors' "$out"; then cat "$out"; die "failed requests through replica $i"; fi
  n="$(awk '/requests in/ {print $1}' "$out")"
  [ -n "$n" ] && [ "$n" -gt 0 ] || { cat "$out"; die "no requests through replica $i"; }
  total=$((total + n))
done
fleet_logins="$(counter "$fleet_sim" auth_calls)"
# One replica alone logs in once per (ttl - refresh_before) = 5 s: load_s / 5 logins,
# plus one for a refresh at the edge. Three replicas without the store would log in
# three times as often (and knock out each other's tokens).
one_replica_logins=$((load_s / 5 + 1))
[ "$fleet_logins" -le "$one_replica_logins" ] \
  || die "the fleet logged in $fleet_logins times in ${load_s}s, more than one replica's $one_replica_logins"
adopted=0
for a in "${fleet_admins[@]}"; do
  n="$(curl -sf "http://127.0.0.1:$a/metrics" | awk '/^ipproxy_token_refreshes_total\{.*source="store"/ {s += $2} END {print s + 0}')"
  adopted=$((adopted + ${n%.*}))
done
[ "$adopted" -gt 0 ] || die "no replica adopted a token from the store"
for i in $(seq "$replicas"); do
  if podman logs "$prefix-replica-$i" 2>&1 | grep -qF "$password"; then die "the password is in replica $i's logs"; fi
done
ok "$total requests in ${load_s}s through $replicas replicas, 0 failed; $fleet_logins logins (one replica alone: up to $one_replica_logins); $adopted tokens adopted from the store"

# --- 4. pod ---------------------------------------------------------------------------
step "pod: app and ipproxy sharing one network namespace, as deploy/kubernetes/sidecar.yaml"
# What the manifest says: the app's base URL and the sidecar's probes.
python3 - deploy/kubernetes/sidecar.yaml >"$work/sidecar.txt" <<'EOF'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc or doc.get("kind") != "Deployment":
        continue
    spec = doc["spec"]["template"]["spec"]
    for c in spec.get("containers", []):
        for env in c.get("env") or []:
            if env["name"] == "INTELEPEER_BASE_URL":
                print("base", env["value"])
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        if c["name"] != "ipproxy":
            continue
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            port = ports.get(get["port"], get["port"])
            print("probe", probe, port, get["path"])
EOF
base="$(awk '$1 == "base" {print $2}' "$work/sidecar.txt")"
[ "$base" = "http://127.0.0.1:8080" ] || die "sidecar.yaml's app base URL is '$base', not http://127.0.0.1:8080"
[ "$(grep -c '^probe ' "$work/sidecar.txt")" = 3 ] || die "sidecar.yaml's ipproxy probes not found: $(cat "$work/sidecar.txt")"
read -r pod_proxy_port pod_admin_port <<<"$(free_ports 2)"
podman pod create --name "$prefix-pod" --network "$net" --label "ipproxy-container-test=$prefix" \
  -p "127.0.0.1:$pod_proxy_port:8080" -p "127.0.0.1:$pod_admin_port:9901" >/dev/null 2>>"$podman_log" \
  || die "podman pod create failed"
run_labelled --pod "$prefix-pod" --name "$prefix-pod-ipproxy" "${hardened[@]}" \
  -e IPPROXY_UPSTREAM__URL="http://$sim_name:8089" \
  -e IPPROXY_AUTH__URL="http://$sim_name:8089/_rest/v4/authenticate" \
  -e IPPROXY_AUTH__USERNAME=demo \
  -v "$work/secrets:/run/secrets/ipproxy:ro" \
  "$image" run >/dev/null || die "ipproxy did not start in the pod"
# app_get URL: one GET from a second container of the pod (the same image as the app's
# HTTP client: `ipproxy healthcheck --url` exits 0 on a 2xx answer).
app_get() {
  podman run --rm --pod "$prefix-pod" --name "$prefix-app-$RANDOM" \
    --label "ipproxy-container-test=$prefix" "${hardened[@]}" "$image" healthcheck --url "$1" 2>>"$podman_log"
}
while read -r _ probe port path; do
  until_ok 30 app_get "http://127.0.0.1:$port$path" || { podman logs "$prefix-pod-ipproxy"; die "$probe (127.0.0.1:$port$path) does not answer 2xx inside the pod"; }
  if [ "$port" = 9901 ] && ! is_200 "http://127.0.0.1:$pod_admin_port$path"; then
    die "$probe $path is not 200 through the pod's published admin port"
  fi
  ok "sidecar.yaml $probe: GET 127.0.0.1:$port$path answers 200 inside the pod"
done < <(grep '^probe ' "$work/sidecar.txt")
api_before="$(counter "$sim" api_calls)"
app_get "$base/_rest/v4/sim/ping" || die "the app in the pod could not reach the simulator through ipproxy at $base"
[ "$(counter "$sim" api_calls)" -gt "$api_before" ] || die "the app's call did not reach the simulator"
is_200 "http://127.0.0.1:$pod_proxy_port/_rest/v4/sim/ping" || die "the pod's published proxy port does not answer"
ok "the app container reached ipproxy at $base (shared network namespace) and the simulator answered with the token accepted"

echo
echo "container-test: summary: image $size_mb MB; ready in $ready_ms ms; $requests smoke requests, 1 login; drain on podman stop $stop_ms ms; fleet $total requests / ${load_s}s, 0 failed, $fleet_logins logins for $replicas replicas"
echo "container-test: all checks passed in $(($(date +%s) - started_at)) s"
echo "container-test: $passed passed, 0 failed"
