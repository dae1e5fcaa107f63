#!/usr/bin/env python3
"""Summarise one bench/run.sh result directory (runs.jsonl + meta.json) as markdown.

Every cell is the median over the repetitions, with the min-max spread in brackets.
"Added" latency is the target's median percentile minus the direct target's median
percentile in the same scenario. CPU is utime+stime of the proxy's processes (nginx:
master + workers) over the run, per 10k requests; peak RSS is VmHWM at the end of the
scenario (nginx: sum over the workers).
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

TARGETS = ["direct", "nginx", "ipproxy", "ipproxy-info"]


def load(directory):
    meta = json.loads((directory / "meta.json").read_text())
    runs = [json.loads(line) for line in (directory / "runs.jsonl").read_text().splitlines() if line]
    return meta, runs


def cell_values(runs, clk_tck):
    """Per-run derived numbers."""
    out = []
    for run in runs:
        wrk = run["wrk"]
        seconds = wrk["duration_us"] / 1e6
        requests = max(wrk["requests"], 1)
        errors = sum(wrk[key] for key in wrk if key.startswith("err_"))
        out.append({
            "rps": wrk["requests"] / seconds,
            "mbps": wrk["bytes"] / seconds / 1e6,
            "p50": wrk["p50_us"] / 1e3,
            "p99": wrk["p99_us"] / 1e3,
            "p999": wrk["p999_us"] / 1e3,
            "cpu10k": run["cpu_ticks"] / clk_tck / requests * 1e4,
            "sim_cpu10k": run["sim_cpu_ticks"] / clk_tck / requests * 1e4,
            "cpu_cores": run["cpu_ticks"] / clk_tck / seconds,
            "hwm_mib": run["hwm_kib"] / 1024,
            "rss_mib": run["rss_kib"] / 1024,
            "errors": errors,
        })
    return out


def med(values):
    return statistics.median(values)


def spread(values, fmt):
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def main():
    directory = Path(sys.argv[1])
    meta, runs = load(directory)
    clk = meta["clk_tck"]
    grouped = defaultdict(list)
    scenarios = []
    for run in runs:
        key = (run["scenario"], run["target"])
        if run["scenario"] not in scenarios:
            scenarios.append(run["scenario"])
        grouped[key].append(run)

    print(f"Run {meta['stamp']} (commit {meta['commit']}): {meta['reps']} repetitions × "
          f"{meta['duration_s']} s per cell, wrk {meta['wrk_threads']} thread(s), "
          f"nginx worker_processes {meta['nginx_workers']}.")
    print(f"Machine: {meta['nproc']} cores, {meta['cpu']}, kernel {meta['kernel']}, "
          f"{meta['mem_kib'] / 1024 / 1024:.0f} GiB; {meta['nginx']}; {meta['rustc']}.")
    print("wrk, the simulator and the proxy under test share these cores.\n")
    print("Medians over repetitions, (min–max) in brackets. Latency in ms; "
          "CPU = proxy CPU seconds per 10k requests (nginx: master + workers); "
          "sim CPU likewise for the upstream; peak RSS = VmHWM (nginx: sum of workers).\n")
    print("| scenario | target | req/s | p50 | p99 | p99.9 | added p50 | added p99 | CPU s/10k | sim CPU s/10k | peak RSS MiB | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    medians = {}
    for scenario in scenarios:
        direct = cell_values(grouped.get((scenario, "direct"), []), clk)
        d50 = med([v["p50"] for v in direct]) if direct else None
        d99 = med([v["p99"] for v in direct]) if direct else None
        for target in TARGETS:
            values = cell_values(grouped.get((scenario, target), []), clk)
            if not values:
                continue
            col = lambda name: [v[name] for v in values]
            m = {name: med(col(name)) for name in values[0]}
            m["hwm_mib"] = max(col("hwm_mib"))
            medians[(scenario, target)] = m
            add50 = add99 = cpu = hwm = "–"
            if target != "direct":
                add50 = f"{m['p50'] - d50:+.3f}"
                add99 = f"{m['p99'] - d99:+.3f}"
                m["add50"], m["add99"] = m["p50"] - d50, m["p99"] - d99
                cpu = spread(col("cpu10k"), "{:.3f}")
                hwm = f"{m['hwm_mib']:.1f}"
            rps = spread(col("rps"), "{:.0f}")
            if scenario.startswith("get"):
                rps += f" ({m['mbps']:.0f} MB/s)"
            print(f"| {scenario} | {target} | {rps} | {spread(col('p50'), '{:.3f}')} | "
                  f"{spread(col('p99'), '{:.3f}')} | {spread(col('p999'), '{:.3f}')} | {add50} | "
                  f"{add99} | {cpu} | {m['sim_cpu10k']:.3f} | {hwm} | {sum(col('errors'))} |")

    print("\nipproxy ÷ nginx (medians; req/s above 1 is better, the rest below 1 is better):\n")
    print("| scenario | req/s | added p50 | added p99 | CPU/10k | peak RSS |")
    print("|---|---|---|---|---|---|")

    def ratio(a, b):
        if b == 0:
            return "–"
        return f"{a / b:.2f}"

    for scenario in scenarios:
        ip, ng = medians.get((scenario, "ipproxy")), medians.get((scenario, "nginx"))
        if not ip or not ng:
            continue
        # A ratio of added latencies only means something when nginx adds some; the
        # ms difference is always shown.
        add = lambda k: (f"{ratio(ip[k], ng[k]) if ng[k] > 0 and ip[k] >= 0 else 'n/a'} "
                         f"({ip[k]:+.3f} vs {ng[k]:+.3f} ms)")
        print(f"| {scenario} | {ratio(ip['rps'], ng['rps'])} | {add('add50')} | {add('add99')} | "
              f"{ratio(ip['cpu10k'], ng['cpu10k'])} | {ratio(ip['hwm_mib'], ng['hwm_mib'])} |")

    info, warn = medians.get(("ping-c64", "ipproxy-info")), medians.get(("ping-c64", "ipproxy"))
    print(f"\nipproxy idle RSS: {meta['ipproxy_idle_rss_kib'] / 1024:.1f} MiB at start, "
          f"{meta.get('ipproxy_rss_after_kib', 0) / 1024:.1f} MiB idle after the run; "
          f"nginx idle: {meta['nginx_idle_rss_kib'] / 1024:.1f} MiB (workers) + "
          f"{meta['nginx_master_rss_kib'] / 1024:.1f} MiB (master).")
    if info and warn:
        lines = meta.get("info_log_lines", 0)
        per_line = meta.get("info_log_bytes", 0) / lines if lines else 0
        print(f"Logging at info (one JSON line per request, ~{per_line:.0f} bytes, to a file) "
              f"at 64 connections: {info['rps']:.0f} req/s vs {warn['rps']:.0f} at warn "
              f"({(info['rps'] / warn['rps'] - 1) * 100:+.1f} %), CPU {info['cpu10k']:.3f} vs "
              f"{warn['cpu10k']:.3f} s/10k ({(info['cpu10k'] / warn['cpu10k'] - 1) * 100:+.1f} %).")


if __name__ == "__main__":
    main()
