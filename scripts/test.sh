#!/usr/bin/env bash
# The README's test command: every test of the package (unit, integration, doc).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --all-targets "$@"
cargo test --locked --doc
