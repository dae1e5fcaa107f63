#!/usr/bin/env python3
"""Summarise one bench/run.sh result directory (runs.jsonl + meta.json) as markdown.

Every cell is the median over the repetitions, with the min-max spread in brackets.
"Added" latency is the target's median percentile minus the direct target's median
percentile in the same scenario. CPU is utime+stime of the proxy's processes (nginx:
master + workers) over the run, per request, also split into user and system time;
upstream CPU likewise for the simulator
(and, in TLS mode, the nginx terminating TLS in front of it); peak RSS is VmHWM at the
end of the scenario (nginx: sum over the workers). The last table checks issue 23's
targets against these medians.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

TARGETS = ["direct", "nginx", "floor", "ipproxy", "before", "ipproxy-info"]


def load(directory):
    meta = json.loads((directory / "meta.json").read_text())
    runs = [json.loads(line) for line in (directory / "runs.jsonl").read_text().splitlines() if line]
    return meta, runs


def per_request(run, key, requests):
    """A count divided by the requests; None when it was not counted (-1 or absent:
    perf unavailable, or the direct target, which has no process of its own)."""
    count = run.get(key, -1)
    return count / requests if count >= 0 else None


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
            "cpu_us": run["cpu_ticks"] / clk_tck / requests * 1e6,
            "up_cpu_us": run["sim_cpu_ticks"] / clk_tck / requests * 1e6,
            "user_us": run.get("user_ticks", 0) / clk_tck / requests * 1e6,
            "sys_us": run.get("sys_ticks", 0) / clk_tck / requests * 1e6,
            "hwm_mib": run["hwm_kib"] / 1024,
            "rss_mib": run["rss_kib"] / 1024,
            "errors": errors,
            "load1": run.get("load1", 0.0),
            "builds": run.get("builds", 0),
            "syscalls": per_request(run, "syscalls", requests),
            "switches": per_request(run, "ctx_switches", requests),
            "segments": per_request(run, "segments", requests),
        })
    return out


def med(values):
    return statistics.median(values)


def spread(values, fmt):
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def mib(kib):
    return f"{kib / 1024:.1f}"


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
          f"nginx worker_processes {meta['nginx_workers']}, modes: {meta.get('modes', 'plain')}.")
    if meta.get("pinned"):
        print(f"Pinned (the sidecar shape): proxies and upstream on CPU {meta['proxy_cpu']}, "
              f"wrk on CPU {meta['load_cpu']}.")
    print(f"Machine: {meta['nproc']} cores, {meta['cpu']}, kernel {meta['kernel']}, "
          f"{meta['mem_kib'] / 1024 / 1024:.0f} GiB; {meta['nginx']}; {meta.get('openssl', '')}; "
          f"{meta['rustc']}.")
    if not meta.get("pinned"):
        print("wrk, the upstream and the proxy under test share these cores.")
    loads = [v["load1"] for values in grouped.values() for v in cell_values(values, clk)]
    contended = sum(1 for values in grouped.values() for v in cell_values(values, clk) if v["builds"])
    quiet = "waited for a quiet machine" if meta.get("quiet_wait") else "did not wait for a quiet machine"
    if meta.get("not_quiet"):
        quiet = "NOT QUIET: gave up waiting for a quiet machine"
    print(f"Load average at start: {meta.get('load_at_start', '?').strip()} ({quiet}); "
          f"1-minute load before each run: median {med(loads) if loads else 0:.2f} "
          f"(max {max(loads) if loads else 0:.2f}, includes the benchmark's own load); "
          f"runs with someone else's build running: {contended} of {len(loads)}.\n")
    print("Medians over repetitions, (min–max) in brackets. Latency in ms; "
          "CPU = proxy CPU µs per request (nginx: master + workers); "
          "upstream CPU likewise for the simulator (TLS: + the nginx terminating TLS); "
          "peak RSS = VmHWM (nginx: sum of workers).\n")
    print("| scenario | target | req/s | p50 | p99 | p99.9 | added p50 | added p99 | CPU µs/req | user | system | upstream CPU µs/req | peak RSS MiB | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
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
            m = {name: med(col(name)) if None not in col(name) else None for name in values[0]}
            m["hwm_mib"] = max(col("hwm_mib"))
            medians[(scenario, target)] = m
            add50 = add99 = cpu = hwm = user = system = "–"
            if target != "direct" and d50 is not None:
                add50 = f"{m['p50'] - d50:+.3f}"
                add99 = f"{m['p99'] - d99:+.3f}"
                m["add50"], m["add99"] = m["p50"] - d50, m["p99"] - d99
                cpu = spread(col("cpu_us"), "{:.1f}")
                user = f"{m['user_us']:.1f}"
                system = f"{m['sys_us']:.1f}"
                hwm = f"{m['hwm_mib']:.1f}"
            rps = spread(col("rps"), "{:.0f}")
            if "get" in scenario:
                rps += f" ({m['mbps']:.0f} MB/s)"
            print(f"| {scenario} | {target} | {rps} | {spread(col('p50'), '{:.3f}')} | "
                  f"{spread(col('p99'), '{:.3f}')} | {spread(col('p999'), '{:.3f}')} | {add50} | "
                  f"{add99} | {cpu} | {user} | {system} | {m['up_cpu_us']:.1f} | {hwm} | {sum(col('errors'))} |")

    counted = [(key, m) for key, m in medians.items() if m.get("segments") is not None]
    if counted:
        print("\nPer request (medians): the target's syscalls and context switches (perf stat "
              "attached to its processes), and the TCP segments the whole machine sent "
              "(client, proxy and upstream: a proxied request crosses two connections).\n")
        print("| scenario | target | syscalls | context switches | TCP segments |")
        print("|---|---|---|---|---|")
        for (scenario, target), m in counted:
            per = lambda name: "–" if m.get(name) is None else f"{m[name]:.2f}"
            print(f"| {scenario} | {target} | {per('syscalls')} | {per('switches')} | {per('segments')} |")

    print("\nipproxy ÷ nginx and ipproxy ÷ floor (medians; req/s above 1 is better, the rest "
          "below 1 is better):\n")
    print("| scenario | req/s | added p50 | added p99 | CPU/req | user/req | peak RSS | CPU/req ÷ floor | req/s ÷ floor |")
    print("|---|---|---|---|---|---|---|---|---|")

    def ratio(a, b):
        if b == 0:
            return "–"
        return f"{a / b:.2f}"

    for scenario in scenarios:
        ip, ng = medians.get((scenario, "ipproxy")), medians.get((scenario, "nginx"))
        if not ip or not ng or "add50" not in ip:
            continue
        # A ratio of added latencies only means something when nginx adds some; the
        # ms difference is always shown.
        add = lambda k: (f"{ratio(ip[k], ng[k]) if ng[k] > 0 and ip[k] >= 0 else 'n/a'} "
                         f"({ip[k]:+.3f} vs {ng[k]:+.3f} ms)")
        fl = medians.get((scenario, "floor"))
        print(f"| {scenario} | {ratio(ip['rps'], ng['rps'])} | {add('add50')} | {add('add99')} | "
              f"{ratio(ip['cpu_us'], ng['cpu_us'])} | {ratio(ip['user_us'], ng['user_us'])} | "
              f"{ratio(ip['hwm_mib'], ng['hwm_mib'])} | "
              f"{ratio(ip['cpu_us'], fl['cpu_us']) if fl else '–'} | "
              f"{ratio(ip['rps'], fl['rps']) if fl else '–'} |")

    idle = meta.get("idle_rss_kib", {})
    after = meta.get("rss_after_kib", {})
    print()
    for mode in ("plain", "tls"):
        if f"{mode}/ipproxy" not in idle:
            continue
        print(f"{mode}: ipproxy idle RSS {mib(idle[f'{mode}/ipproxy'])} MiB at start, "
              f"{mib(after.get(f'{mode}/ipproxy', 0))} MiB idle after the run; nginx idle "
              f"{mib(idle.get(f'{mode}/nginx', 0))} MiB (workers) + "
              f"{mib(idle.get(f'{mode}/nginx-master', 0))} MiB (master).")
    info, warn = medians.get(("ping-c64", "ipproxy-info")), medians.get(("ping-c64", "ipproxy"))
    if info and warn:
        lines = meta.get("info_log_lines", 0)
        per_line = meta.get("info_log_bytes", 0) / lines if lines else 0
        print(f"Logging at info (one JSON line per request, ~{per_line:.0f} bytes, to a file) "
              f"at 64 connections: {info['rps']:.0f} req/s vs {warn['rps']:.0f} at warn "
              f"({(info['rps'] / warn['rps'] - 1) * 100:+.1f} %), CPU {info['cpu_us']:.1f} vs "
              f"{warn['cpu_us']:.1f} µs/req ({(info['cpu_us'] / warn['cpu_us'] - 1) * 100:+.1f} %).")

    # Issue 23's targets, checked against the medians above.
    rows = []

    def check(name, scenario, ok, shown):
        rows.append((name, scenario, "met" if ok else "**not met**", shown))

    for mode, prefix in (("plain", ""), ("tls", "tls-")):
        for conns in (64, 256):
            scenario = f"{prefix}ping-c{conns}"
            ip, ng = medians.get((scenario, "ipproxy")), medians.get((scenario, "nginx"))
            if not ip or not ng:
                continue
            check("throughput ≥ 1.0× nginx", scenario, ip["rps"] >= ng["rps"],
                  f"{ip['rps'] / ng['rps']:.2f}× ({ip['rps']:.0f} vs {ng['rps']:.0f} req/s)")
            check("CPU per request ≤ nginx", scenario, ip["cpu_us"] <= ng["cpu_us"],
                  f"{ip['cpu_us']:.1f} vs {ng['cpu_us']:.1f} µs ({ip['cpu_us'] / ng['cpu_us']:.2f}×)")
            fl = medians.get((scenario, "floor"))
            if fl:
                check("CPU per request ≤ 1.25× floor", scenario, ip["cpu_us"] <= 1.25 * fl["cpu_us"],
                      f"{ip['cpu_us']:.1f} vs floor {fl['cpu_us']:.1f} µs ({ip['cpu_us'] / fl['cpu_us']:.2f}×)")
        for conns in (1, 64):
            scenario = f"{prefix}ping-c{conns}"
            ip, ng = medians.get((scenario, "ipproxy")), medians.get((scenario, "nginx"))
            if not ip or not ng or "add50" not in ip:
                continue
            check("added p50 ≤ nginx", scenario, ip["add50"] <= ng["add50"],
                  f"{ip['add50'] * 1000:+.0f} vs {ng['add50'] * 1000:+.0f} µs")
        scenario = f"{prefix}ping-c256"
        ip, ng = medians.get((scenario, "ipproxy")), medians.get((scenario, "nginx"))
        if ip and ng:
            check("peak RSS ≤ nginx (workers)", scenario, ip["hwm_mib"] <= ng["hwm_mib"],
                  f"{ip['hwm_mib']:.1f} vs {ng['hwm_mib']:.1f} MiB")
        if f"{mode}/ipproxy" in idle:
            start = idle[f"{mode}/ipproxy"] / 1024
            check("idle RSS ≤ 10 MiB (at start)", mode, start <= 10,
                  f"{start:.1f} MiB (after the run: {after.get(f'{mode}/ipproxy', 0) / 1024:.1f} MiB)")
    if rows:
        print("\nIssue 23's targets against these medians:\n")
        print("| target | cell | status | measured (ipproxy vs nginx) |")
        print("|---|---|---|---|")
        for name, scenario, status, shown in rows:
            print(f"| {name} | {scenario} | {status} | {shown} |")


if __name__ == "__main__":
    main()
