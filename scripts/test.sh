#!/usr/bin/env bash
# The README's test command: every test of the package (unit, integration over real
# sockets, property tests), then one summary line added up from cargo's own results.
set -euo pipefail
cd "$(dirname "$0")/.."
# tests/egress.rs starts a real forward proxy, tinyproxy; without it those tests fail
# (with a message saying so), so a failed install does not stop the run here.
install_tinyproxy() {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tinyproxy
}
if ! command -v tinyproxy >/dev/null 2>&1; then
    echo "tinyproxy is missing: installing it for the egress tests"
    if [ "$(id -u)" -eq 0 ]; then
        install_tinyproxy || echo "tinyproxy could not be installed" >&2
    elif command -v sudo >/dev/null 2>&1; then
        sudo bash -c "$(declare -f install_tinyproxy); install_tinyproxy" \
            || echo "tinyproxy could not be installed" >&2
    else
        echo "cannot install tinyproxy (not root, no sudo): the egress tests will fail" >&2
    fi
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --locked --all-targets "$@" 2>&1 | tee "$log"
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
