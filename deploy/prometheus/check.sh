#!/usr/bin/env bash
# Checks ipproxy's alert rules without a running Prometheus:
#   1. `promtool check rules`: the rules parse and their expressions are valid PromQL;
#   2. `promtool test rules`: every alert fires on synthetic series that break what it
#      watches and stays quiet on series that do not (tests/ipproxy-rules.test.yaml);
#   3. prometheusrule.py --check: the PrometheusRule under deploy/kubernetes holds the
#      same rules, and every alert has summary, description and a runbook_url naming
#      its row in docs/OPERATIONS.md.
# promtool comes with Debian's `prometheus` package (.ci/run installs it). The real
# scrape (a Prometheus loading these rules, scraping the real binary) is
# tests/prometheus.rs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

command -v promtool >/dev/null 2>&1 \
  || { echo "deploy/prometheus/check.sh: promtool is missing (apt-get install prometheus)" >&2; exit 1; }
promtool --version | head -1
promtool check rules deploy/prometheus/ipproxy-rules.yaml
promtool test rules deploy/prometheus/tests/ipproxy-rules.test.yaml
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore pyyaml
fi
python3 deploy/prometheus/prometheusrule.py --check
