#!/usr/bin/env bash
# The README's test command: every test of the package (unit, integration over real
# sockets, property tests), then one summary line added up from cargo's own results.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests start real servers: redis-server (the token store, tests/fleet.rs),
# tinyproxy (the egress proxy, tests/egress.rs) and prometheus (the alert rules,
# tests/prometheus.rs). Without them those tests fail with a message saying so, so a
# failed install does not stop the run here.
install_packages() {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v tinyproxy >/dev/null 2>&1 || missing+=(tinyproxy)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
    echo "missing for the tests: ${missing[*]}; installing"
    if [ "$(id -u)" -eq 0 ]; then
        install_packages "${missing[@]}" || echo "could not install ${missing[*]}" >&2
    elif command -v sudo >/dev/null 2>&1; then
        sudo bash -c "$(declare -f install_packages); install_packages ${missing[*]}" \
            || echo "could not install ${missing[*]}" >&2
    else
        echo "cannot install ${missing[*]} (not root, no sudo): their tests will fail" >&2
    fi
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# --no-fail-fast: every test binary runs even when an earlier one fails, so one red
# test never hides the others; the exit status is still non-zero (set -o pipefail).
status=0
cargo test --locked --all-targets --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
exit "$status"
