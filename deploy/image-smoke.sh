#!/usr/bin/env bash
# Runs the ipproxy binary the way the container image runs it, without a Docker engine:
#
#   - as the image's non-root user (UID/GID 65532, via setpriv) when run as root;
#   - with the image's config (config/container.toml, IPPROXY_CONFIG) in a read-only
#     directory, the password from a read-only secret file, the username from the env;
#   - `ENTRYPOINT ["ipproxy"] CMD ["run"]`, then the image's HEALTHCHECK command
#     (`ipproxy healthcheck`), readiness, one request through the proxy, SIGTERM → exit 0.
#
# The upstream is the simulator (`ipproxy sim`) on loopback; the container config's
# 0.0.0.0 listeners are narrowed to 127.0.0.1 by IPPROXY_SERVER__* variables (the
# ports stay the image's 8080/9901 unless SMOKE_PORT_BASE says otherwise).
#
#   deploy/image-smoke.sh path/to/ipproxy
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin="${1:?usage: deploy/image-smoke.sh path/to/ipproxy}"
base="${SMOKE_PORT_BASE:-18000}"
proxy_port=$((base + 80)) admin_port=$((base + 91)) sim_port=$((base + 89))

die() { echo "image-smoke: FAIL: $*" >&2; exit 1; }

root="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$root"
}
trap cleanup EXIT

# The image's file system, as far as ipproxy sees it.
mkdir -p "$root/bin" "$root/etc/ipproxy" "$root/run/secrets/ipproxy"
install -m 0755 "$bin" "$root/bin/ipproxy"
install -m 0444 config/container.toml "$root/etc/ipproxy/ipproxy.toml"
printf 'demo-password\n' >"$root/run/secrets/ipproxy/password"
chmod 0444 "$root/run/secrets/ipproxy/password"
chmod 0555 "$root/etc/ipproxy" "$root/run/secrets/ipproxy"
chmod 0755 "$root" "$root/bin" "$root/run" "$root/run/secrets" "$root/etc"

as_image_user=()
if [ "$(id -u)" = 0 ]; then
  as_image_user=(setpriv --reuid 65532 --regid 65532 --clear-groups --)
fi

"$root/bin/ipproxy" sim --listen "127.0.0.1:$sim_port" >"$root/sim.log" 2>&1 &
pids+=($!)

env -i PATH=/usr/bin:/bin \
  IPPROXY_CONFIG="$root/etc/ipproxy/ipproxy.toml" \
  IPPROXY_SERVER__LISTEN="127.0.0.1:$proxy_port" \
  IPPROXY_SERVER__ADMIN_LISTEN="127.0.0.1:$admin_port" \
  IPPROXY_UPSTREAM__URL="http://127.0.0.1:$sim_port" \
  IPPROXY_AUTH__URL="http://127.0.0.1:$sim_port/_rest/v4/authenticate" \
  IPPROXY_AUTH__USERNAME=demo \
  IPPROXY_AUTH__PASSWORD_FILE="$root/run/secrets/ipproxy/password" \
  "${as_image_user[@]}" "$root/bin/ipproxy" run >"$root/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")

health="http://127.0.0.1:$admin_port/healthz"
for _ in $(seq 50); do
  "${as_image_user[@]}" "$root/bin/ipproxy" healthcheck --url "$health" 2>/dev/null && break
  sleep 0.1
done
"${as_image_user[@]}" "$root/bin/ipproxy" healthcheck --url "$health" \
  || { cat "$root/proxy.log"; die "healthcheck failed"; }
echo "ok: ipproxy healthcheck (HEALTHCHECK) passes"

if [ "$(id -u)" = 0 ]; then
  uid="$(awk '/^Uid:/ {print $2}' "/proc/$proxy_pid/status")"
  [ "$uid" = 65532 ] || die "the proxy runs as UID $uid, not 65532"
  echo "ok: the proxy runs as UID 65532"
fi

ready=""
for _ in $(seq 50); do
  ready="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/readyz" || true)"
  [ "$ready" = 200 ] && break
  sleep 0.1
done
[ "$ready" = 200 ] || die "/readyz answered $ready"
echo "ok: /readyz 200 (token held)"

status="$(curl -s -o "$root/sms.json" -w '%{http_code}' \
  "http://127.0.0.1:$proxy_port/_rest/v4/app/sms/send" \
  -H 'content-type: application/json' \
  -d '{"from":"+15550001111","to":"+15550002222","text":"smoke"}')"
[ "$status" = 202 ] || die "SMS through the proxy answered $status: $(cat "$root/sms.json")"
echo "ok: SMS through the proxy: $(cat "$root/sms.json")"

kill -TERM "$proxy_pid"
code=0
wait "$proxy_pid" || code=$?
[ "$code" = 0 ] || { cat "$root/proxy.log"; die "exit status $code after SIGTERM"; }
echo "ok: SIGTERM → exit 0"

grep -q demo-password "$root/proxy.log" && die "the password appears in the logs"
echo "ok: no password in the logs"
echo "image-smoke: all checks passed"
