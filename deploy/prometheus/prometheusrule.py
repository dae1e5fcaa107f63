#!/usr/bin/env python3
"""The PrometheusRule (prometheus-operator) made from deploy/prometheus/ipproxy-rules.yaml,
so that the two never drift, plus the checks every alert must pass.

    python3 deploy/prometheus/prometheusrule.py --write   # regenerate the PrometheusRule
    python3 deploy/prometheus/prometheusrule.py --check   # fail if it differs, or if an
                                                          # alert lacks an annotation or
                                                          # its runbook row

Run from the repository root. The plain file is the source: edit it, then --write.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import yaml
except ImportError:
    sys.exit("prometheusrule.py: PyYAML is missing (pip install pyyaml)")

RULES = Path("deploy/prometheus/ipproxy-rules.yaml")
PROMETHEUS_RULE = Path("deploy/kubernetes/ipproxy-prometheusrule.yaml")
OPERATIONS = Path("docs/OPERATIONS.md")
ANNOTATIONS = ("summary", "description", "runbook_url")
RUNBOOK = re.compile(r"^docs/OPERATIONS\.md#(alert-[a-z0-9-]+)$")

HEADER = """\
# Generated from deploy/prometheus/ipproxy-rules.yaml by
# `python3 deploy/prometheus/prometheusrule.py --write`: do not edit here.
# The same alerts as a prometheus-operator PrometheusRule. Its labels must match your
# Prometheus's ruleSelector (kube-prometheus-stack's default: release=<its release>).
"""


def prometheus_rule(groups: list) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "ipproxy",
            "labels": {"app.kubernetes.io/name": "ipproxy", "app.kubernetes.io/component": "alerts"},
        },
        "spec": {"groups": groups},
    }


def render(groups: list) -> str:
    body = yaml.safe_dump(prometheus_rule(groups), sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def check_alerts(groups: list) -> list[str]:
    problems = []
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', OPERATIONS.read_text()))
    names = set()
    for group in groups:
        for rule in group.get("rules", []):
            name = rule.get("alert")
            if name is None:
                continue
            if name in names:
                problems.append(f"{name}: defined twice")
            names.add(name)
            annotations = rule.get("annotations") or {}
            for key in ANNOTATIONS:
                if not str(annotations.get(key, "")).strip():
                    problems.append(f"{name}: no {key} annotation")
            runbook = RUNBOOK.match(str(annotations.get("runbook_url", "")))
            if runbook is None:
                problems.append(f"{name}: runbook_url is not docs/OPERATIONS.md#alert-...")
            elif runbook.group(1) != f"alert-{name.lower()}":
                problems.append(f"{name}: runbook_url should end #alert-{name.lower()}")
            elif runbook.group(1) not in anchors:
                problems.append(f"{name}: {OPERATIONS} has no <a id=\"{runbook.group(1)}\"></a> row")
    if not names:
        problems.append(f"{RULES}: no alert")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    expected = render(groups)
    if args.write:
        PROMETHEUS_RULE.write_text(expected)
        print(f"wrote {PROMETHEUS_RULE}")
        return 0
    problems = check_alerts(groups)
    if not PROMETHEUS_RULE.exists() or PROMETHEUS_RULE.read_text() != expected:
        problems.append(f"{PROMETHEUS_RULE} is not what {RULES} makes: run "
                        "`python3 deploy/prometheus/prometheusrule.py --write`")
    else:
        shipped = yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"]
        if shipped != groups:
            problems.append(f"{PROMETHEUS_RULE}: spec.groups differ from {RULES}")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if problems:
        return 1
    alerts = sum(1 for g in groups for r in g.get("rules", []) if "alert" in r)
    print(f"ok: {PROMETHEUS_RULE} holds the {alerts} alerts of {RULES}, each with "
          f"{', '.join(ANNOTATIONS)} and its row in {OPERATIONS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
