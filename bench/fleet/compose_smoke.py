#!/usr/bin/env python3
"""Runs deploy/compose.yaml's fleet on loopback, without a Docker engine, and checks
that it shares one token.

    python3 bench/fleet/compose_smoke.py target/release/ipproxy

From the compose file itself: the simulator with the `sim` service's arguments, the
Valkey service's arguments given to Debian's redis-server, each ipproxy replica with
its service's environment over the image's config (config/container.toml), the
compose secrets as read-only files (the demo password and the demo store key), as
UID 65532 when run as root, and HAProxy with deploy/haproxy.cfg (only its addresses
rewritten to loopback ports). Then, like the `app` service, SMS sends through the load
balancer, and:

  1. every send answers 202, the fleet makes about one login per refresh period, and
     every replica sends the same token (the simulator's echo names it);
  2. Redis killed: sends still answer 202, /readyz stays 200 with
     "store": {"up": false, ...}, ipproxy_store_up is 0, one "token store
     unreachable" line per replica;
  3. Redis back (empty, as after a restart without persistence): the replicas say
     "token store reachable again", show the store up, and converge on one token;
  4. no log line holds the password or the store key.

Every process is started here and stopped by PID; every wait is bounded. Needs
redis-server, haproxy, python3 with PyYAML. Exits 1 at the first failed check.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
RUNTIME_UID = 65532
SMS = json.dumps({"from": "15550001111", "to": "15550002222", "text": "smoke"}).encode()
# How long each phase sends (one request every SEND_INTERVAL seconds).
SEND_INTERVAL = 0.2
PHASE_SECONDS = 12


# The replicas' logs, shown (their last lines) when a check fails.
LOGS: dict[str, Path] = {}


def fail(message: str) -> None:
    for name, log in LOGS.items():
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        print(f"--- {name}: last lines of its log", file=sys.stderr)
        for line in lines[-12:]:
            print(f"    {line}", file=sys.stderr)
    print(f"compose-smoke: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def ok(message: str) -> None:
    print(f"ok: {message}", flush=True)


def free_ports(count: int) -> list[int]:
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def http(method: str, url: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def eventually(what: str, check, seconds: float = 15.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    fail(f"{what} (waited {seconds:g} s)")


class Processes:
    """Every process this script starts, stopped by PID."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        out = open(log, "ab")
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in list(reversed(self.running)):
            self.stop(process)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    binary = Path(sys.argv[1]).resolve()
    if not os.access(binary, os.X_OK):
        fail(f"{binary} is not an executable")
    for tool in ("redis-server", "haproxy"):
        if shutil.which(tool) is None:
            fail(f"{tool} not found (apt-get install redis-server haproxy)")

    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    replicas = sorted(n for n, s in services.items() if "build" in s and s.get("command", ["run"])[0] == "run")
    sim_name = next(n for n, s in services.items() if "build" in s and s["command"][0] == "sim")
    store_name = next(n for n, s in services.items() if "valkey" in str(s.get("image", "")) or
                      str(s.get("image", "")).startswith("redis"))
    lb_name = next(n for n, s in services.items() if set(replicas) <= set(s.get("depends_on") or {}) and n != "app")
    ports = free_ports(3 + 2 * len(replicas))
    sim_port, redis_port, lb_port = ports[:3]
    proxy_ports = {n: (ports[3 + 2 * i], ports[4 + 2 * i]) for i, n in enumerate(replicas)}

    work = Path(tempfile.mkdtemp(prefix="ipproxy-compose-smoke."))
    os.chmod(work, 0o755)
    processes = Processes()
    try:
        run(binary, services, compose.get("secrets") or {}, replicas, sim_name, store_name, lb_name,
            sim_port, redis_port, lb_port, proxy_ports, work, processes)
    finally:
        processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def run(binary, services, secrets, replicas, sim_name, store_name, lb_name, sim_port, redis_port, lb_port,
        proxy_ports, work: Path, processes: Processes) -> None:
    # The image's file system, as far as ipproxy sees it: binary, config, secrets.
    (work / "bin").mkdir()
    shutil.copy(binary, work / "bin" / "ipproxy")
    (work / "etc").mkdir()
    shutil.copy(ROOT / "config" / "container.toml", work / "etc" / "ipproxy.toml")
    secrets_dir = work / "run" / "secrets"
    secrets_dir.mkdir(parents=True)
    for name, spec in secrets.items():
        shutil.copy(COMPOSE.parent / spec["file"], secrets_dir / name)
        os.chmod(secrets_dir / name, 0o444)
    for path in (work / "etc" / "ipproxy.toml", work / "etc", secrets_dir):
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    for path in (work / "run", work / "bin"):
        os.chmod(path, 0o755)
    as_image_user = (["setpriv", "--reuid", str(RUNTIME_UID), "--regid", str(RUNTIME_UID), "--clear-groups", "--"]
                     if os.getuid() == 0 else [])
    ipproxy = str(work / "bin" / "ipproxy")

    # The simulator, with the compose service's arguments.
    sim_args = list(services[sim_name]["command"])
    sim_args[sim_args.index("--listen") + 1] = f"127.0.0.1:{sim_port}"
    processes.start(as_image_user + [ipproxy, *sim_args], work / "sim.log", env={"PATH": "/usr/bin:/bin"})
    sim = f"http://127.0.0.1:{sim_port}"
    eventually("the simulator answers", lambda: http("GET", f"{sim}/__sim/counters")[0] == 200)

    # Valkey's arguments, given to redis-server (the same protocol and options).
    store_args = list(services[store_name]["command"])[1:]
    redis_dir = work / "redis"
    redis_dir.mkdir()

    def start_redis() -> subprocess.Popen:
        process = processes.start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                   "--dir", str(redis_dir), *store_args], work / "redis.log")
        eventually("redis-server answers", lambda: redis_ping(redis_port))
        return process

    redis = start_redis()
    ok(f"{sim_name} ({' '.join(sim_args)}) and {store_name} (redis-server {' '.join(store_args) or '(defaults)'}) up")

    # The replicas: each service's environment, host names and secret paths mapped.
    logs = {}
    for name in replicas:
        proxy_port, admin_port = proxy_ports[name]
        env = {"PATH": "/usr/bin:/bin", "IPPROXY_CONFIG": str(work / "etc" / "ipproxy.toml"),
               "IPPROXY_SERVER__LISTEN": f"127.0.0.1:{proxy_port}",
               "IPPROXY_SERVER__ADMIN_LISTEN": f"127.0.0.1:{admin_port}"}
        for key, value in (services[name].get("environment") or {}).items():
            value = str(value).replace("sim:8089", f"127.0.0.1:{sim_port}")
            value = value.replace(f"{store_name}:6379", f"127.0.0.1:{redis_port}")
            value = value.replace("/run/secrets/", f"{secrets_dir}/")
            env[key] = value
        logs[name] = work / f"{name}.log"
        LOGS[name] = logs[name]
        processes.start(as_image_user + [ipproxy, *services[name]["command"]], logs[name], env=env)
    admin = {n: f"http://127.0.0.1:{proxy_ports[n][1]}" for n in replicas}
    direct = {n: f"http://127.0.0.1:{proxy_ports[n][0]}" for n in replicas}
    for name in replicas:
        eventually(f"{name} ready", lambda name=name: http("GET", f"{admin[name]}/readyz")[0] == 200)
    ok(f"{', '.join(replicas)} ready, configured by their compose environment over the image config"
       + (f", as UID {RUNTIME_UID}" if as_image_user else ""))

    # HAProxy with the compose file's config, addresses rewritten to loopback ports.
    volume = next(v for v in services[lb_name]["volumes"] if str(v).startswith("./"))
    cfg = (COMPOSE.parent / str(volume).split(":")[0]).read_text()
    cfg = re.sub(r"^(\s*bind\s+)\S+", rf"\g<1>127.0.0.1:{lb_port}", cfg, flags=re.M)
    for name in replicas:
        proxy_port, admin_port = proxy_ports[name]
        # `port` on a server line: where its health checks go (over default-server's).
        cfg = re.sub(rf"^(\s*server\s+\S+\s+){re.escape(name)}:8080\b.*$",
                     rf"\g<1>127.0.0.1:{proxy_port} port {admin_port}", cfg, flags=re.M)
    (work / "haproxy.cfg").write_text(cfg)
    check = subprocess.run(["haproxy", "-c", "-f", str(work / "haproxy.cfg")], capture_output=True, text=True)
    if check.returncode != 0:
        fail(f"haproxy rejects the rewritten {volume}: {check.stdout}{check.stderr}")
    processes.start(["haproxy", "-W", "-db", "-f", str(work / "haproxy.cfg")], work / "haproxy.log")
    lb = f"http://127.0.0.1:{lb_port}"
    eventually("the load balancer forwards", lambda: http("GET", f"{lb}/_rest/v4/sim/ping")[0] == 200)
    ok(f"{lb_name}: HAProxy with {str(volume).split(':')[0]} (round robin, /readyz checks) in front of the replicas")

    def send_for(seconds: float, until=None) -> tuple[dict[int, int], list[float]]:
        """Sends for `seconds` (or until `until()` holds); the statuses, and when
        (seconds from the start) each failure came."""
        statuses: dict[int, int] = {}
        failures: list[float] = []
        start = time.monotonic()
        while time.monotonic() < start + seconds and not (until and until()):
            status, _ = http("POST", f"{lb}/_rest/v4/app/sms/send", SMS)
            statuses[status] = statuses.get(status, 0) + 1
            if status != 202:
                failures.append(round(time.monotonic() - start, 1))
            time.sleep(SEND_INTERVAL)
        return statuses, failures

    def token_ids() -> set[int | None]:
        """The simulator's id of the token each replica sends (None: it answered 401)."""
        ids = set()
        for name in replicas:
            status, body = http("GET", f"{direct[name]}/_rest/v4/my/did")
            ids.add(json.loads(body)["auth"]["token_id"] if status == 200 else None)
        return ids

    def one_token() -> bool:
        ids = token_ids()
        return len(ids) == 1 and None not in ids

    def readyz(name: str) -> tuple[int, dict]:
        status, body = http("GET", f"{admin[name]}/readyz")
        return status, json.loads(body or b"{}")

    # 1. Normal operation: one token for the fleet.
    http("POST", f"{sim}/__sim/reset")
    started = time.monotonic()
    statuses, _ = send_for(PHASE_SECONDS)
    elapsed = time.monotonic() - started
    logins = json.loads(http("GET", f"{sim}/__sim/counters")[1])["auth_calls"]
    if set(statuses) != {202}:
        fail(f"SMS through the load balancer: {statuses} (every one must be 202)")
    # Refresh every ~5 s with 8 s tokens and refresh_before 3s: one login each, for
    # the whole fleet; allow one more for a period boundary.
    if logins > elapsed / 4 + 1:
        fail(f"{logins} logins in {elapsed:.0f} s for {len(replicas)} replicas: they do not share the token")
    eventually("every replica sends the same token", one_token, 6)
    ok(f"{sum(statuses.values())} SMS through {lb_name}, all 202; {logins} logins in {elapsed:.0f} s for "
       f"{len(replicas)} replicas; every replica sends the same token")

    # 2. Redis killed: the fleet carries on, each replica alone. Nothing fails because
    # of the store (no 5xx); but with a simulator that invalidates older tokens, each
    # replica's own refresh now knocks out the others' tokens, so 401s from the
    # upstream reach the apps until Redis is back (the memory store's behaviour).
    processes.stop(redis, signal.SIGKILL)
    statuses, failures = send_for(PHASE_SECONDS)
    if set(statuses) - {202, 401}:
        fail(f"with Redis down: {statuses} (only 202, or the upstream's 401 after a knock-out, may come back)")
    for name in replicas:
        status, body = eventually(f"{name} shows the store down",
                                  lambda name=name: (lambda r: r if r[1].get("store", {}).get("up") is False else None)(
                                      readyz(name)))
        if status != 200:
            fail(f"{name}: /readyz answered {status} with the store down (it must stay 200 while the token is valid)")
        if not body["store"].get("last_error"):
            fail(f"{name}: /readyz shows no last_error for the store")
        metrics = http("GET", f"{admin[name]}/metrics")[1].decode()
        if not re.search(r"^ipproxy_store_up 0$", metrics, re.M):
            fail(f"{name}: ipproxy_store_up is not 0 with Redis down")
        outage_lines = logs[name].read_text().count("token store unreachable")
        if outage_lines != 1:
            fail(f"{name}: {outage_lines} 'token store unreachable' lines for one outage (expected 1)")
    last_error = readyz(replicas[0])[1]["store"]["last_error"]
    outage = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
    ok(f"Redis killed: {sum(statuses.values())} SMS: {outage} (401s: the replicas, each alone, knock out each "
       f"other's tokens at refresh time; at {failures} s); /readyz 200 with store up=false "
       f"(last_error: {last_error!r}); ipproxy_store_up 0; one 'token store unreachable' line per replica")

    # 3. Redis back, empty (a restart without persistence): the replicas see it at
    # once; the next refresh writes an entry, the others adopt it on their next read
    # (their refresh, or a 401), and the fleet is on one token again.
    start_redis()
    back = time.monotonic()
    for name in replicas:
        eventually(f"{name} shows the store up again",
                   lambda name=name: readyz(name)[1].get("store", {}).get("up") is True)
        if "token store reachable again" not in logs[name].read_text():
            fail(f"{name}: no 'token store reachable again' line")
    seen_up = time.monotonic() - back
    statuses, failures = send_for(20, one_token)
    converged = time.monotonic() - back
    if not one_token():
        fail(f"the replicas did not converge on one token within {converged:.0f} s of Redis coming back")
    transition = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
    ok(f"Redis back: every replica showed the store up within {seen_up:.1f} s and logged 'token store "
       f"reachable again'; one token again after {converged:.1f} s (meanwhile {transition}"
       f"{f', failures at {failures} s' if failures else ''})")
    statuses, _ = send_for(PHASE_SECONDS)
    if set(statuses) != {202}:
        fail(f"after the fleet converged: {statuses} (every one must be 202)")
    ok(f"then {sum(statuses.values())} SMS, all 202, on one token")

    # 4. No secret in any log.
    password = (secrets_dir / "ipproxy_password").read_text().strip()
    keys = [line.strip() for line in (secrets_dir / "ipproxy_store_key").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    for log in work.glob("*.log"):
        text = log.read_text(errors="replace")
        for secret in [password, *keys]:
            if secret in text:
                fail(f"{log.name} holds a secret")
    ok("no log holds the password or the store key")
    print("compose-smoke: all checks passed")


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


if __name__ == "__main__":
    main()
