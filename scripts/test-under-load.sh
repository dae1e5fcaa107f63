#!/usr/bin/env bash
# The whole suite (scripts/test.sh) RUNS times in a row, each beside a CPU hog on every
# core (`stress-ng --cpu N`), each bounded in time; stops at the first failure. This is
# how we check that no test depends on seeing a state inside a short wall-clock window
# (docs/TESTING.md, "Under load"). Not in CI: it takes RUNS times the suite.
#
# Usage: bash scripts/test-under-load.sh      (RUNS=3, LIMIT=1500 s per run)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
LIMIT=${LIMIT:-1500}
if ! command -v stress-ng >/dev/null 2>&1; then
    echo "stress-ng missing; installing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng
fi
# Built first, so that the hog loads the tests, not the compiler.
cargo test --locked --all-targets --no-run -q
hog=""
trap '[ -n "$hog" ] && kill "$hog" 2>/dev/null; true' EXIT
for run in $(seq "$RUNS"); do
    stress-ng --cpu "$(nproc)" --timeout "${LIMIT}s" >/dev/null 2>&1 &
    hog=$!
    start=$(date +%s)
    status=0
    log=$(mktemp)
    timeout "$LIMIT" bash scripts/test.sh >"$log" 2>&1 || status=$?
    kill "$hog" 2>/dev/null || true
    wait "$hog" 2>/dev/null || true
    hog=""
    echo "run $run: exit $status in $(($(date +%s) - start)) s, $(tail -1 "$log")"
    if [ "$status" -ne 0 ]; then
        grep -E '^test .* FAILED$|panicked at' "$log" >&2 || true
        echo "full output: $log" >&2
        exit "$status"
    fi
    rm -f "$log"
done
