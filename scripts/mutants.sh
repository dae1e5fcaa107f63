#!/usr/bin/env bash
# Mutation testing (cargo-mutants) of every module with behaviour: the token, proxy,
# access, idempotency, config, server (worker included) and telemetry
# folders, and inbound (the connection watch), pipeline, reload, admin, shutdown, route and error. Not src/sim (a test
# double) nor main.rs (the CLI: tests/security.rs and tests/operations.rs run it as a
# process). Not in CI: hours on 2 cores. docs/TESTING.md records the last counts and explains every miss.
#
#   bash scripts/mutants.sh            # both passes, results in target/mutants/
#   PASS=1 bash scripts/mutants.sh     # the unit-test pass only
#   FILES="src/error.rs src/access/**" bash scripts/mutants.sh   # some files only
#
# Pass 1 runs the unit tests only (`cargo test --lib`, about 5 s a mutant). Pass 2
# re-tests what pass 1 missed (`--iterate`), one group of modules at a time, with the
# integration tests that exercise that group (they start redis-server and tinyproxy:
# scripts/test.sh installs them). Running the whole suite for every survivor would
# take minutes a mutant.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null 2>&1 || cargo install cargo-mutants --locked
# Debug info is most of an incremental build's time and no test reads it.
export CARGO_PROFILE_DEV_DEBUG=0
# The path property test asks for 2,000 cases, three quarters of the unit tests' time;
# proptest's default is enough to catch a mutant (the CI runs the 2,000).
export PROPTEST_CASES=${PROPTEST_CASES:-256}
# Patterns for cargo-mutants' --file (globs it expands itself: read keeps bash from it).
read -r -a patterns <<<"${FILES:-src/token/** src/proxy/** src/access/** src/idempotency/** src/config/** src/server/** src/inbound.rs src/telemetry/** src/telemetry.rs src/pipeline.rs src/reload.rs src/admin.rs src/shutdown.rs src/route.rs src/error.rs}"
files=()
for pattern in "${patterns[@]}"; do
    files+=(-f "$pattern")
done
out=target/mutants
# cargo-mutants exits non-zero when a mutant survives: the counts are the result.
cargo mutants "${files[@]}" --timeout 20 --output "$out" --cargo-arg=--lib || true

count() {
    wc -l <"$1/mutants.out/$2.txt" 2>/dev/null || echo 0
}

# One group: the pass-1 survivors among `modules` (a space-separated list of
# --file patterns), tested against the integration test binaries `tests`.
pass2() {
    local name=$1 modules=$2 tests=$3 dir="$out/pass2-$1" args=()
    read -r -a modules <<<"$modules"
    for pattern in "${modules[@]}"; do
        args+=(-f "$pattern")
    done
    for test in $tests; do
        args+=(--cargo-arg="--test=$test")
    done
    rm -rf "$dir" && mkdir -p "$dir" && cp -r "$out/mutants.out" "$dir/"
    cargo mutants --iterate "${args[@]}" --timeout 300 --output "$dir" || true
    printf 'pass 2 %s: caught %s, missed %s, timeout %s\n' "$name" \
        "$(count "$dir" caught)" "$(count "$dir" missed)" "$(count "$dir" timeout)"
}

if [ "${PASS:-2}" != 1 ]; then
    pass2 request "src/proxy/forward.rs src/proxy/body.rs src/proxy/headers.rs src/proxy/outbound.rs src/error.rs src/access/**" \
        "proxy hostile security tls"
    pass2 pipeline "src/pipeline.rs" "operations rotation proxy hostile"
    pass2 pool "src/proxy/pool/**" "pool tls proxy egress"
    pass2 egress "src/proxy/egress.rs" "egress"
    pass2 store "src/token/store/**" "fleet"
    pass2 token "src/token/credential.rs src/token/credential/** src/token/schedule.rs src/token/slot.rs src/token/source.rs src/token/registry.rs src/token/readiness.rs src/token/clock.rs" \
        "proxy operations rotation fleet"
    pass2 idempotency "src/idempotency/**" "idempotency"
    pass2 config "src/config/**" "operations security"
    pass2 server "src/server/** src/inbound.rs src/shutdown.rs" "operations hostile pool"
    pass2 reload "src/reload.rs" "rotation secrets"
    pass2 admin "src/admin.rs src/route.rs" "operations prometheus proxy"
    pass2 telemetry "src/telemetry/** src/telemetry.rs" "logs tracing prometheus secrets"
fi
for outcome in caught missed timeout unviable; do
    printf 'pass 1 %s: %s\n' "$outcome" "$(count "$out" "$outcome")"
done
