#!/usr/bin/env bash
# The README's test command: every test of the package (unit, integration over real
# sockets, property tests), then one summary line added up from cargo's own results.
set -euo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --locked --all-targets "$@" 2>&1 | tee "$log"
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
