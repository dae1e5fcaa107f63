#!/usr/bin/env python3
"""Numbers for bench/fleet.sh: one JSON record per run, and the markdown summary.

    report.py fleet  --out RUNS --cell DIR --store S --replicas N --rep R --load "..." --foreign "..."
    report.py latency --out RUNS --wrk FILE --store S --conns C --rep R --cpu-ticks T --load "..."
    report.py summary OUTDIR

A fleet record reads, from the cell's work directory: `wrk.txt` (the BENCH_JSON line
of bench/fleet/report.lua), `sim.json` (the simulator's counters after the run; they
were reset after the warm-up), `before-*.prom` / `after-*.prom` (each replica's
/metrics just before and just after the run: the record holds the differences,
summed over the fleet) and `redis.txt` (`INFO commandstats` after the run, reset
after the warm-up; absent without Redis).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict, float]]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if m:
            samples.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return samples


def summed(samples, name: str, by: tuple[str, ...]) -> dict[str, float]:
    """Sum of the series of `name`, grouped by the labels `by` (joined with '/')."""
    out: dict[str, float] = defaultdict(float)
    for metric, labels, value in samples:
        if metric == name:
            out["/".join(labels.get(k, "") for k in by) or "all"] += value
    return out


# The counters a fleet record keeps, and the labels they are grouped by.
COUNTERS = {
    "refreshes": ("ipproxy_token_refreshes_total", ("reason", "result", "source")),
    "reauth_suppressed": ("ipproxy_reauth_suppressed_total", ()),
    "retries": ("ipproxy_upstream_retries_total", ()),
    "requests": ("ipproxy_requests_total", ("status",)),
    "store_ops": ("ipproxy_store_operations_total", ("op", "result")),
}


def fleet_counters(cell: Path) -> dict[str, dict[str, float]]:
    totals = {key: defaultdict(float) for key in COUNTERS}
    for after in sorted(cell.glob("after-*.prom")):
        before = cell / after.name.replace("after-", "before-")
        a = parse_prometheus(after.read_text())
        b = parse_prometheus(before.read_text()) if before.exists() else []
        for key, (name, by) in COUNTERS.items():
            sa, sb = summed(a, name, by), summed(b, name, by)
            for group in set(sa) | set(sb):
                totals[key][group] += sa.get(group, 0.0) - sb.get(group, 0.0)
    return {k: {g: round(v) for g, v in sorted(d.items()) if round(v)} for k, d in totals.items()}


def redis_commands(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    calls = {}
    for line in path.read_text().splitlines():
        m = re.match(r"cmdstat_(\S+):calls=(\d+)", line.strip())
        if m:
            calls[m.group(1)] = int(m.group(2))
    return calls


def wrk_result(path: Path) -> dict:
    for line in path.read_text().splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    sys.exit(f"report.py: no BENCH_JSON line in {path}")


def record_fleet(args) -> None:
    cell = Path(args.cell)
    wrk = wrk_result(cell / "wrk.txt")
    statuses = {int(k): v for k, v in wrk.pop("statuses").items()}
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    unauthorized = statuses.get(401, 0)
    socket_errors = wrk["err_connect"] + wrk["err_read"] + wrk["err_write"] + wrk["err_timeout"]
    other = sum(v for k, v in statuses.items() if not (200 <= k < 300) and k != 401) + socket_errors
    sim = json.loads((cell / "sim.json").read_text())
    record = {
        "phase": "fleet", "store": args.store, "replicas": args.replicas, "rep": args.rep,
        "ok": ok, "unauthorized": unauthorized, "other_failures": other,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "req_per_s": wrk["requests"] / wrk["duration_us"] * 1e6,
        "p50_us": wrk["p50_us"], "p99_us": wrk["p99_us"], "wrk": wrk,
        "logins": sim["auth_calls"], "sim": sim,
        "fleet": fleet_counters(cell), "redis_commands": redis_commands(cell / "redis.txt"),
        "load": args.load, "foreign": args.foreign,
    }
    with open(args.out, "a") as out:
        out.write(json.dumps(record) + "\n")
    print(f"fleet: {args.store:8} x{args.replicas:<3} rep {args.rep}: {ok:7} x 2xx {unauthorized:7} x 401 "
          f"{other:5} other, {sim['auth_calls']:5} logins, {record['req_per_s']:7.0f} req/s  (load {args.load})")


def record_latency(args) -> None:
    wrk = wrk_result(Path(args.wrk))
    record = {
        "phase": "latency", "store": args.store, "conns": args.conns, "rep": args.rep,
        "req_per_s": wrk["requests"] / wrk["duration_us"] * 1e6,
        "p50_us": wrk["p50_us"], "p99_us": wrk["p99_us"], "p999_us": wrk["p999_us"],
        "errors": wrk["err_status"] + wrk["err_connect"] + wrk["err_read"] + wrk["err_write"] + wrk["err_timeout"],
        "requests": wrk["requests"], "cpu_ticks": args.cpu_ticks, "wrk": wrk, "load": args.load,
    }
    with open(args.out, "a") as out:
        out.write(json.dumps(record) + "\n")
    print(f"latency: c{args.conns:<3} {args.store:7} rep {args.rep}: {record['req_per_s']:8.0f} req/s  "
          f"p50 {wrk['p50_us'] / 1e3:6.3f} ms  p99 {wrk['p99_us'] / 1e3:6.3f} ms  (load {args.load})")


# --- summary -----------------------------------------------------------------------


def med(values, fmt="{:.0f}") -> str:
    values = list(values)
    if not values:
        return "–"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def summary(outdir: Path) -> None:
    meta = json.loads((outdir / "meta.json").read_text())
    runs = [json.loads(line) for line in (outdir / "runs.jsonl").read_text().splitlines() if line]
    print(f"Run {meta['stamp']} (commit {meta['commit']}), {meta['nproc']} cores ({meta['cpu']}), "
          f"kernel {meta['kernel']}; wrk {meta['wrk_threads']} thread(s); every process on the same cores.")
    for gate in meta.get("quiet_gates", []):
        print(f"Quiet gate before the {gate['phase']} phase: {gate['verdict']} after {gate['waited_s']} s "
              f"(load average at start {gate['load']}).")
    print()

    fleet = [r for r in runs if r["phase"] == "fleet"]
    if fleet:
        f = meta["fleet"]
        print(f"**Fleet**: {f['conns']} connections in all through nginx round robin (1 worker) to N replicas, "
              f"{f['duration_s']} s per run after a {f['warmup_s']} s warm-up, simulator `--invalidate-on-reauth "
              f"--token-ttl {f['token_ttl']}`, `refresh_before={f['refresh_before']}`; logins = the simulator's "
              f"`auth_calls` during the run (reset after the warm-up). Medians over {f['reps']} runs, (min–max).")
        print()
        print("| replicas | store | answered 2xx | answered 401 | other failures | logins | req/s "
              "| retried after a 401 | adopted from the store | 401s passed through (suppressed) | load avg 1-min |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        groups = defaultdict(list)
        for r in fleet:
            groups[(r["replicas"], r["store"])].append(r)
        order = {s: i for i, s in enumerate(meta["fleet"]["stores"])}
        for (n, store), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
            adopted = [sum(v for k, v in r["fleet"]["refreshes"].items() if k.endswith("/store")) for r in rs]
            suppressed = [r["fleet"]["reauth_suppressed"].get("all", 0) for r in rs]
            retried = [r["fleet"]["retries"].get("all", 0) for r in rs]
            loads = [float(r["load"].split()[0]) for r in rs]
            print(f"| {n} | {store} | {med(r['ok'] for r in rs)} | {med(r['unauthorized'] for r in rs)} "
                  f"| {med(r['other_failures'] for r in rs)} | {med(r['logins'] for r in rs)} "
                  f"| {med(r['req_per_s'] for r in rs)} | {med(retried)} | {med(adopted)} | {med(suppressed)} "
                  f"| {med(loads, '{:.2f}')} |")
        print()
        print("Fleet-wide token refreshes by reason/result/source (sum over runs):")
        print()
        for (n, store), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
            total = defaultdict(int)
            for r in rs:
                for k, v in r["fleet"]["refreshes"].items():
                    total[k] += v
            text = ", ".join(f"{k} {v}" for k, v in sorted(total.items())) or "none"
            print(f"- {n} × {store}: {text}")
        print()

    lat = [r for r in runs if r["phase"] == "latency"]
    if lat:
        l = meta["latency"]
        print(f"**Hot path**: one replica per store side by side in the same run, `GET /_rest/v4/sim/ping` "
              f"straight to the replica (no load balancer), simulator token TTL {l['token_ttl']} (no refresh "
              f"during the run), {l['reps']} × {l['duration_s']} s per cell, targets alternating. "
              f"Medians (min–max); latency in ms; CPU = the replica's CPU seconds per 10k requests.")
        print()
        print("| connections | store | req/s | p50 | p99 | p99.9 | CPU s/10k | errors | load avg 1-min |")
        print("|---|---|---|---|---|---|---|---|---|")
        groups = defaultdict(list)
        for r in lat:
            groups[(r["conns"], r["store"])].append(r)
        clk = meta["clk_tck"]
        for (conns, store), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "memory")):
            cpu = [r["cpu_ticks"] / clk / r["requests"] * 1e4 for r in rs if r["requests"]]
            loads = [float(r["load"].split()[0]) for r in rs]
            print(f"| {conns} | {store} | {med(r['req_per_s'] for r in rs)} "
                  f"| {med((r['p50_us'] / 1e3 for r in rs), '{:.3f}')} | {med((r['p99_us'] / 1e3 for r in rs), '{:.3f}')} "
                  f"| {med((r['p999_us'] / 1e3 for r in rs), '{:.3f}')} | {med(cpu, '{:.3f}')} "
                  f"| {sum(r['errors'] for r in rs)} | {med(loads, '{:.2f}')} |")
        print()
        print("redis ÷ memory (medians): ", end="")
        parts = []
        for conns in sorted({c for c, _ in groups}):
            m, r = groups.get((conns, "memory")), groups.get((conns, "redis"))
            if not m or not r:
                continue
            ratio = lambda key: statistics.median(x[key] for x in r) / statistics.median(x[key] for x in m)
            parts.append(f"{conns} connection(s): req/s {ratio('req_per_s'):.2f}, p50 {ratio('p50_us'):.2f}, "
                         f"p99 {ratio('p99_us'):.2f}")
        print("; ".join(parts) + ".")
        hot = meta.get("hot_path", {})
        if hot:
            print()
            print(f"During the hot-path runs ({hot['requests']} requests through the redis replica): Redis "
                  f"served {json.dumps(hot['redis_commands'])} (commands: calls), the replica counted store "
                  f"operations {json.dumps(hot['store_ops'])}, the simulator {hot['auth_calls']} logins.")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fleet")
    f.add_argument("--out", required=True)
    f.add_argument("--cell", required=True)
    f.add_argument("--store", required=True)
    f.add_argument("--replicas", type=int, required=True)
    f.add_argument("--rep", type=int, required=True)
    f.add_argument("--load", required=True)
    f.add_argument("--foreign", default="")
    l = sub.add_parser("latency")
    l.add_argument("--out", required=True)
    l.add_argument("--wrk", required=True)
    l.add_argument("--store", required=True)
    l.add_argument("--conns", type=int, required=True)
    l.add_argument("--rep", type=int, required=True)
    l.add_argument("--cpu-ticks", type=int, required=True)
    l.add_argument("--load", required=True)
    c = sub.add_parser("counters")
    c.add_argument("before")
    c.add_argument("after")
    s = sub.add_parser("summary")
    s.add_argument("outdir", type=Path)
    args = parser.parse_args()
    if args.command == "fleet":
        record_fleet(args)
    elif args.command == "latency":
        record_latency(args)
    elif args.command == "counters":
        a, b = parse_prometheus(Path(args.after).read_text()), parse_prometheus(Path(args.before).read_text())
        name, by = COUNTERS["store_ops"]
        sa, sb = summed(a, name, by), summed(b, name, by)
        print(json.dumps({g: round(sa.get(g, 0) - sb.get(g, 0)) for g in sorted(set(sa) | set(sb))
                          if round(sa.get(g, 0) - sb.get(g, 0))}))
    else:
        summary(args.outdir)


if __name__ == "__main__":
    main()
