#!/usr/bin/env python3
"""Check ipproxy's deployment files: the Kubernetes manifests, the compose file, the
in-image configuration and the Dockerfile's runtime contract.

    python3 deploy/check_manifests.py                      # checks only
    python3 deploy/check_manifests.py --extract-configs DIR

With --extract-configs, every ipproxy configuration that the manifests mount
(ConfigMap data keys ending in .toml) is written to DIR/<configmap>/<key>, and the
environment of each of the compose file's ipproxy replicas to DIR/compose/<service>.env
(KEY=VALUE lines), so that `ipproxy check` can be run on them; each written path is
printed on a line of its own, prefixed "config: " or "env: ".

Run from the repository root. Exits 1 at the first failure with a message naming the
file, the object and the field; prints one "ok:" line per thing checked.
"""

from __future__ import annotations

import argparse
import posixpath
import re
import sys
import tomllib
from pathlib import Path

try:
    import yaml
except ImportError:  # check.sh installs it; say so when run by hand
    sys.exit("check_manifests: PyYAML is missing (pip install pyyaml)")

DEPLOY_DIR = Path("deploy")
IMAGE_CONFIG = Path("config/container.toml")
DOCKERFILE = Path("Dockerfile")

# Where the image looks for its configuration, and the runtime user it runs as.
IMAGE_CONFIG_PATH = "/etc/ipproxy/ipproxy.toml"
RUNTIME_UID = 65532
ADMIN_PORT = 9901
PROXY_PORT = 8080
# ipproxy's default [server] shutdown_grace, when a config does not set it.
DEFAULT_SHUTDOWN_GRACE_S = 30

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
SECRET_ENV = re.compile(r"(PASSWORD|TOKEN|KEY)(_FILE)?$")
# A URL with a password in it (redis://:secret@host, http://user:secret@proxy).
URL_WITH_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]+@", re.I)
# One AES-256 key of a store key file; blank lines and `#` lines are skipped.
STORE_KEY_LINE = re.compile(r"^[0-9a-fA-F]{64}$")


class CheckFailed(Exception):
    pass


def fail(where: str, message: str) -> None:
    raise CheckFailed(f"{where}: {message}")


def ok(message: str) -> None:
    print(f"ok: {message}")


def require(condition: bool, where: str, message: str) -> None:
    if not condition:
        fail(where, message)


def parse_duration_s(value: str, where: str) -> float:
    """The subset of ipproxy's durations used in shutdown_grace: 500ms, 30s, 5m, 1h."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", value.strip())
    if not m:
        fail(where, f"cannot read duration {value!r}")
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def load_toml(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        fail(where, f"not valid TOML: {err}")
    raise AssertionError  # unreachable


def check_config_common(cfg: dict, where: str) -> None:
    """What every in-container ipproxy config must say."""
    server = cfg.get("server", {})
    require(server.get("listen") == f"0.0.0.0:{PROXY_PORT}", where,
            f"[server] listen must be 0.0.0.0:{PROXY_PORT} in a container, got {server.get('listen')!r}")
    require(server.get("admin_listen") == f"0.0.0.0:{ADMIN_PORT}", where,
            f"[server] admin_listen must be 0.0.0.0:{ADMIN_PORT} (probes, `ipproxy healthcheck`), "
            f"got {server.get('admin_listen')!r}")
    auth = cfg.get("auth", {})
    require("password" not in auth, where, "[auth] password must come from password_file, not the file")
    require("username" not in auth, where, "[auth] username belongs in IPPROXY_AUTH__USERNAME, not the file")
    require(str(auth.get("password_file", "")).startswith("/run/secrets/"), where,
            "[auth] password_file must point at a mounted secret under /run/secrets/")
    for name, cred in cfg.get("credentials", {}).items():
        require("password" not in cred and "token" not in cred, where,
                f"[credentials.{name}] secrets must come from *_file keys")
    require(cfg.get("log", {}).get("format") == "json", where, "[log] format must be \"json\"")


def shutdown_grace_s(cfg: dict, where: str) -> float:
    value = cfg.get("server", {}).get("shutdown_grace")
    return DEFAULT_SHUTDOWN_GRACE_S if value is None else parse_duration_s(value, where)


def check_image_config() -> dict:
    where = str(IMAGE_CONFIG)
    cfg = load_toml(IMAGE_CONFIG.read_text(), where)
    check_config_common(cfg, where)
    require(cfg["auth"]["password_file"] == "/run/secrets/ipproxy/password", where,
            "[auth] password_file must be /run/secrets/ipproxy/password (the manifests mount it there)")
    ok(f"{where}: listens on 0.0.0.0:{PROXY_PORT}/:{ADMIN_PORT}, password from a file, JSON logs")
    return cfg


def check_dockerfile() -> None:
    where = str(DOCKERFILE)
    text = DOCKERFILE.read_text()
    final = text.split("\nFROM ")[-1]  # instructions of the last stage
    expect = {
        "no pulled base (FROM scratch)": r"\Ascratch\s",
        "binary at /usr/local/bin/ipproxy": r"^COPY --from=dist /dist/ipproxy /usr/local/bin/ipproxy$",
        "CA certificates": r"^COPY --from=dist /dist/ca-certificates\.crt /etc/ssl/certs/ca-certificates\.crt$",
        "passwd, group and nsswitch.conf": r"^COPY deploy/image/etc/passwd deploy/image/etc/group deploy/image/etc/nsswitch\.conf /etc/$",
        "image config": rf"^COPY config/container\.toml {re.escape(IMAGE_CONFIG_PATH)}$",
        "IPPROXY_CONFIG": rf"^ENV IPPROXY_CONFIG={re.escape(IMAGE_CONFIG_PATH)}",
        "numeric non-root user": rf"^USER {RUNTIME_UID}:{RUNTIME_UID}$",
        "exposed ports": rf"^EXPOSE {PROXY_PORT} {ADMIN_PORT}$",
        "exec-form healthcheck": r'CMD \["ipproxy", "healthcheck"\]',
        "exec-form entrypoint": r'^ENTRYPOINT \["ipproxy"\]$',
        "default command": r'^CMD \["run"\]$',
    }
    for what, pattern in expect.items():
        require(re.search(pattern, final, re.M) is not None, where, f"final stage lacks {what} ({pattern})")
    require(re.search(r"^ARG IPPROXY_BINARY=builder$", text, re.M) is not None,
            where, "IPPROXY_BINARY must default to builder (the binary compiled in the Rust image)")
    require(re.search(r"^FROM scratch AS prebuilt$", text, re.M) is not None,
            where, "no prebuilt stage (a host-built binary, for builds without registry access)")
    require(re.search(r"^FROM \$\{IPPROXY_BINARY\} AS dist$", text, re.M) is not None,
            where, "the dist stage must be chosen by IPPROXY_BINARY")
    require(re.search(r'RUSTFLAGS="-C target-feature=\+crt-static"', text) is not None,
            where, "the builder must link statically (crt-static): the final stage has no libc")
    require(re.search(r"cargo build --release --locked", text) is not None, where, "no locked release build")
    for name in ("passwd", "group", "nsswitch.conf"):
        require((Path("deploy/image/etc") / name).is_file(), where, f"deploy/image/etc/{name} is missing")
    passwd = (Path("deploy/image/etc") / "passwd").read_text()
    require(re.search(rf"^[a-z]+:x:{RUNTIME_UID}:{RUNTIME_UID}:", passwd, re.M) is not None,
            where, f"deploy/image/etc/passwd has no entry for {RUNTIME_UID}")
    ok(f"{where}: final stage FROM scratch (static binary, CA bundle), UID {RUNTIME_UID}, healthcheck/entrypoint in exec form")


# --- Kubernetes -------------------------------------------------------------------


def pod_spec_of(doc: dict) -> dict | None:
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind in POD_TEMPLATE_KINDS:
        return (spec.get("template") or {}).get("spec")
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")
    return None


def is_ipproxy(container: dict) -> bool:
    return container.get("name") == "ipproxy" or "ipproxy" in str(container.get("image", "")).split("/")[-1]


def under(path: str, directory: str) -> str | None:
    """The part of `path` below `directory`, or None if it is not below it."""
    path, directory = posixpath.normpath(path), posixpath.normpath(directory)
    if path.startswith(directory.rstrip("/") + "/"):
        return path[len(directory.rstrip("/")) + 1:]
    return None


def find_mount(container: dict, volumes: dict, path: str):
    """The (volumeMount, volume) that provides the file `path`, if any."""
    for mount in container.get("volumeMounts") or []:
        rel = under(path, mount["mountPath"])
        if rel is None and posixpath.normpath(path) == posixpath.normpath(mount["mountPath"]):
            rel = posixpath.basename(path) if mount.get("subPath") else ""
        if rel is not None:
            return mount, volumes.get(mount["name"]), rel
    return None, None, None


def check_probe(container: dict, probe_name: str, path: str, where: str) -> None:
    probe = container.get(probe_name)
    require(isinstance(probe, dict), where, f"{probe_name} is missing")
    http_get = probe.get("httpGet") or {}
    require(http_get.get("path") == path, where, f"{probe_name}.httpGet.path must be {path}, got {http_get.get('path')!r}")
    port = http_get.get("port")
    if isinstance(port, str):
        named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
        require(port in named, where, f"{probe_name} uses port name {port!r}, which the container does not declare")
        port = named[port]
    require(port == ADMIN_PORT, where, f"{probe_name} must target the admin port {ADMIN_PORT}, got {port!r}")


def effective_security(pod_spec: dict, container: dict) -> dict:
    merged = dict(pod_spec.get("securityContext") or {})
    merged.update(container.get("securityContext") or {})
    return merged


def check_security(pod_spec: dict, container: dict, where: str) -> None:
    own = container.get("securityContext") or {}
    sec = effective_security(pod_spec, container)
    require(sec.get("runAsNonRoot") is True, where, "securityContext.runAsNonRoot must be true")
    require(sec.get("runAsUser") == RUNTIME_UID, where, f"securityContext.runAsUser must be {RUNTIME_UID}")
    require(own.get("readOnlyRootFilesystem") is True, where, "securityContext.readOnlyRootFilesystem must be true")
    require(own.get("allowPrivilegeEscalation") is False, where, "securityContext.allowPrivilegeEscalation must be false")
    drop = (own.get("capabilities") or {}).get("drop") or []
    require("ALL" in drop, where, "securityContext.capabilities.drop must contain ALL")
    require((sec.get("seccompProfile") or {}).get("type") == "RuntimeDefault", where,
            "securityContext.seccompProfile.type must be RuntimeDefault")


def check_resources(container: dict, where: str) -> None:
    res = container.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    require("cpu" in requests and "memory" in requests, where, "resources.requests needs cpu and memory")
    require("memory" in limits, where, "resources.limits needs memory")


def allow_hosts(variable: str | None, cfg: dict) -> list[str]:
    """[access] allow_hosts as the proxy reads it: IPPROXY_ACCESS__ALLOW_HOSTS (a TOML
    array) over the config file's."""
    if variable is None:
        return list(cfg.get("access", {}).get("allow_hosts", []))
    try:
        return list(tomllib.loads(f"list = {variable}")["list"])
    except tomllib.TOMLDecodeError:
        fail("IPPROXY_ACCESS__ALLOW_HOSTS", f"not a TOML array: {variable!r}")
        return []


def env_value(container: dict, name: str) -> str | None:
    for env in container.get("env") or []:
        if env.get("name") == name and "value" in env:
            return str(env["value"])
    return None


def check_secret_file(container: dict, volumes: dict, path: str, what: str, where: str) -> None:
    mount, volume, rel = find_mount(container, volumes, path)
    require(mount is not None, where, f"{what} {path} is not provided by any volumeMount")
    require(mount.get("readOnly") is True, where, f"the mount of {what} at {mount['mountPath']} must be readOnly")
    require(volume is not None and "secret" in volume, where,
            f"{what} must come from a volume of type secret (volume {mount['name']!r})")
    items = volume["secret"].get("items")
    if items and not mount.get("subPath"):
        require(rel in {i.get("path") for i in items}, where,
                f"secret volume {mount['name']!r} does not project {rel!r} ({what})")


# The [store] keys, by their IPPROXY_STORE__* variable.
STORE_KEYS = ("kind", "url", "url_file", "key_file", "ca_file", "prefix", "timeout", "lock_ttl")


def effective_store(container: dict, cfg: dict) -> dict:
    """The container's [store]: the config file's, with IPPROXY_STORE__* variables over it."""
    store = dict(cfg.get("store") or {})
    for key in STORE_KEYS:
        value = env_value(container, f"IPPROXY_STORE__{key.upper()}")
        if value is not None:
            store[key] = value
    return store


def check_store(store: dict, where: str, secret_file) -> None:
    """A redis store: the key and a URL with a password come from secret files
    (`secret_file(path, what)` checks how a path is provided)."""
    key_file = store.get("key_file")
    require(bool(key_file), where, "[store] kind = \"redis\" needs key_file (a bearer token is never stored in the clear)")
    secret_file(key_file, "the store key file")
    if store.get("url_file"):
        require("url" not in store, where, "[store] has both url and url_file")
        secret_file(store["url_file"], "the store URL file")
    else:
        url = str(store.get("url", ""))
        require(bool(url), where, "[store] kind = \"redis\" needs url or url_file")
        require(not URL_WITH_PASSWORD.search(url), where,
                "[store] url carries a password: put the URL in a secret file and use url_file")


def check_store_key_file(path: Path, where: str) -> None:
    """A store key file as ipproxy reads it: at least one 64-hex-character key."""
    keys = [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]
    require(bool(keys), where, f"{path} holds no key")
    for key in keys:
        require(STORE_KEY_LINE.match(key) is not None, where,
                f"{path}: every line that is not blank or a # comment must be 64 hex characters")


def check_workload(doc: dict, source: str, configmaps: dict, image_cfg: dict) -> bool:
    """Checks one Pod-bearing object; returns True when it holds an ipproxy container."""
    pod_spec = pod_spec_of(doc)
    if not pod_spec:
        return False
    kind, name = doc["kind"], doc.get("metadata", {}).get("name", "?")
    containers = [c for c in pod_spec.get("containers") or [] if is_ipproxy(c)]
    sidecars = [c for c in pod_spec.get("initContainers") or [] if is_ipproxy(c)]
    for c in sidecars:
        require(c.get("restartPolicy") == "Always", f"{source} {kind}/{name}",
                "an ipproxy init container must be a native sidecar (restartPolicy: Always)")
    proxies = containers + sidecars
    if not proxies:
        return False
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    others = [c for c in pod_spec.get("containers") or [] if not is_ipproxy(c)]
    shared = not others  # a Pod of proxies only: the shared service
    grace_needed = 0.0
    keys_file = None

    for c in proxies:
        where = f"{source} {kind}/{name} container {c.get('name')}"
        check_probe(c, "readinessProbe", "/readyz", where)
        check_probe(c, "livenessProbe", "/healthz", where)
        if "startupProbe" in c:
            check_probe(c, "startupProbe", "/healthz", where)
        check_security(pod_spec, c, where)
        check_resources(c, where)

        for env in c.get("env") or []:
            env_name = env.get("name", "")
            require(not (SECRET_ENV.search(env_name) and not env_name.endswith("_FILE") and "value" in env),
                    where, f"env {env_name} carries a secret as a plain value; mount it as a file")
        require(not any(e.get("name") == "IPPROXY_AUTH__PASSWORD" for e in c.get("env") or []), where,
                "IPPROXY_AUTH__PASSWORD is set; the password must come from a mounted Secret file")
        require(any(e.get("name") == "IPPROXY_AUTH__USERNAME" and "secretKeyRef" in (e.get("valueFrom") or {})
                    for e in c.get("env") or []),
                where, "IPPROXY_AUTH__USERNAME must come from a Secret (valueFrom.secretKeyRef)")

        # The configuration this container runs with: a mounted ConfigMap, or the image's.
        config_path = env_value(c, "IPPROXY_CONFIG") or IMAGE_CONFIG_PATH
        cfg, cfg_source = image_cfg, str(IMAGE_CONFIG)
        mount, volume, rel = find_mount(c, volumes, config_path)
        if mount is not None:
            require(mount.get("readOnly") is True, where, f"config mount {mount['mountPath']} must be readOnly")
            require(volume is not None and "configMap" in volume, where,
                    f"{config_path} is mounted but not from a ConfigMap")
            cm_name = volume["configMap"]["name"]
            require(cm_name in configmaps, where, f"ConfigMap {cm_name!r} is not defined in deploy/")
            key = rel or posixpath.basename(config_path)
            require(key in configmaps[cm_name], where, f"ConfigMap {cm_name!r} has no key {key!r}")
            cfg, cfg_source = configmaps[cm_name][key], f"ConfigMap {cm_name} key {key}"
            check_config_common(cfg, f"{source} {cfg_source}")

        password_file = env_value(c, "IPPROXY_AUTH__PASSWORD_FILE") or cfg.get("auth", {}).get("password_file")
        require(bool(password_file), where, f"no password_file (from {cfg_source}) and no IPPROXY_AUTH__PASSWORD_FILE")
        check_secret_file(c, volumes, password_file, "the password file", where)

        keys_file = env_value(c, "IPPROXY_ACCESS__KEYS_FILE") or cfg.get("access", {}).get("keys_file")
        if keys_file:
            check_secret_file(c, volumes, keys_file, "the access keys file", where)
        hosts = allow_hosts(env_value(c, "IPPROXY_ACCESS__ALLOW_HOSTS"), cfg)

        for env in c.get("env") or []:
            require(not URL_WITH_PASSWORD.search(str(env.get("value", ""))), where,
                    f"env {env.get('name')} holds a URL with a password; read it from a mounted Secret (*_FILE)")
        store = effective_store(c, cfg)
        store_kind = store.get("kind", "memory")
        if store_kind == "redis":
            check_store(store, where, lambda path, what: check_secret_file(c, volumes, path, what, where))
        if shared:
            require(store_kind == "redis", where,
                    "the shared service runs several replicas: [store] kind = \"redis\" (one token for the "
                    "fleet; independent replicas knock each other's tokens out where IntelePeer invalidates "
                    "older ones)")

        prestop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
        grace_needed = max(grace_needed, prestop + shutdown_grace_s(cfg, f"{source} {cfg_source}"))
        ok(f"{where}: probes /readyz+/healthz on :{ADMIN_PORT}, hardened securityContext, resources, "
           f"password from Secret file {password_file}, config from {cfg_source}, store {store_kind}")

    where = f"{source} {kind}/{name}"
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        grace = pod_spec.get("terminationGracePeriodSeconds")
        required = max(grace_needed, DEFAULT_SHUTDOWN_GRACE_S)
        require(isinstance(grace, int) and grace > required, where,
                f"terminationGracePeriodSeconds must exceed preStop sleep + shutdown_grace ({required:g}s), got {grace!r}")
        ok(f"{where}: terminationGracePeriodSeconds {grace} > {required:g}")
    if shared:
        replicas = (doc.get("spec") or {}).get("replicas", 1)
        require(replicas >= 2, where, f"the shared proxy needs replicas >= 2, got {replicas}")
        require(bool(keys_file), where, "the shared proxy must turn on inbound keys ([access] keys_file)")
        # Clients reach it by the Service's DNS name; any Host not listed is refused 421.
        require(name in hosts and any(h.startswith(f"{name}.") and ".svc" in h for h in hosts), where,
                f"the shared proxy must list its Service names in [access] allow_hosts "
                f"({name!r}, {name}.<namespace>.svc, ...), or every client gets 421; got {hosts}")
        ok(f"{where}: shared service with {replicas} replicas and inbound keys from {keys_file}")
    return True


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_selectors(docs: list[tuple[str, dict]]) -> None:
    """Services, PDBs and NetworkPolicies must select an ipproxy workload's Pods."""
    templates = []
    for _, d in docs:
        if d.get("kind") in POD_TEMPLATE_KINDS:
            tmpl = d["spec"]["template"]
            templates.append((tmpl.get("metadata", {}).get("labels") or {}, tmpl["spec"]))
    for source, d in docs:
        kind, name = d.get("kind"), d.get("metadata", {}).get("name", "?")
        where = f"{source} {kind}/{name}"
        if kind == "Service":
            matched = [s for labels, s in templates if selects(d["spec"].get("selector") or {}, labels)]
            require(bool(matched), where, "selects no Pod template in deploy/")
            ports = {p.get("name") for s in matched for c in s.get("containers", []) for p in c.get("ports") or []}
            for p in d["spec"].get("ports") or []:
                require(p.get("port") != ADMIN_PORT and p.get("targetPort") not in ("admin", ADMIN_PORT), where,
                        "the admin port (POST /refresh) must not be exposed through the Service")
                if isinstance(p.get("targetPort"), str):
                    require(p["targetPort"] in ports, where, f"targetPort {p['targetPort']!r} is not a container port name")
            ok(f"{where}: selects the proxy Pods, admin port not exposed")
        elif kind in ("PodDisruptionBudget", "NetworkPolicy"):
            key = "selector" if kind == "PodDisruptionBudget" else "podSelector"
            sel = (d["spec"].get(key) or {}).get("matchLabels") or {}
            require(any(selects(sel, labels) for labels, _ in templates), where, "selects no Pod template in deploy/")
            ok(f"{where}: selects the proxy Pods")


# --- compose ------------------------------------------------------------------------


def service_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def secret_names(svc: dict) -> list[str]:
    return [s if isinstance(s, str) else s.get("source") for s in svc.get("secrets") or []]


def check_compose_hardening(source: str, name: str, svc: dict) -> None:
    where = f"{source} service {name}"
    require(svc.get("read_only") is True, where, "read_only must be true")
    require("ALL" in (svc.get("cap_drop") or []), where, "cap_drop must contain ALL")
    require(any(str(o).replace("=", ":") == "no-new-privileges:true" for o in svc.get("security_opt") or []),
            where, "security_opt must contain no-new-privileges:true")
    user = str(svc.get("user", ""))
    require(bool(user) and user.split(":")[0] not in ("0", "root"), where,
            f"must run as a non-root user (user: UID:GID), got {user!r}")
    for port in svc.get("ports") or []:
        require(str(port).startswith("127.0.0.1:"), where, f"port {port!r} must be published on 127.0.0.1 only")
    for key, value in service_env(svc).items():
        require(not (SECRET_ENV.search(key) and not key.endswith("_FILE")), where,
                f"environment {key} carries a secret as a plain value; use a compose secret (a file)")
        require(not URL_WITH_PASSWORD.search(value), where,
                f"environment {key} holds a URL with a password; use a compose secret (a file)")


def check_compose(source: str, doc: dict, extract: Path | None) -> None:
    """The compose fleet: a simulator in invalidate-on-reauth mode, Redis or Valkey,
    several ipproxy replicas sharing one token through it, a load balancer in front,
    an app that waits for the replicas; every service hardened, secrets as files."""
    services = doc.get("services") or {}
    secrets = doc.get("secrets") or {}
    base = Path(source).parent
    for name, svc in services.items():
        check_compose_hardening(source, name, svc)

    ours = {n: s for n, s in services.items() if s.get("image") == "ipproxy:local" or "build" in s}
    replicas = {n: s for n, s in ours.items() if (s.get("command") or ["run"])[0] == "run"}
    require(len(replicas) >= 2, source, f"expected several ipproxy replicas (services running `run`), found {sorted(replicas)}")
    sims = [n for n, s in ours.items() if (s.get("command") or [""])[0] == "sim"]
    require(len(sims) == 1, source, f"expected one simulator service (`sim`), found {sims}")
    sim = sims[0]
    require("--invalidate-on-reauth" in services[sim]["command"], f"{source} service {sim}",
            "the simulator must run with --invalidate-on-reauth: the demo shows the fleet sharing one token")
    stores = [n for n, s in services.items() if re.match(r"^(docker\.io/)?(library/)?(redis|valkey/valkey|valkey)(:|$)",
                                                        str(s.get("image", "")))]
    require(len(stores) == 1, source, f"expected one Redis or Valkey service, found {stores}")
    store_service = stores[0]

    for name, svc in ours.items():
        require(str(svc.get("user")) == f"{RUNTIME_UID}:{RUNTIME_UID}", f"{source} service {name}",
                f"ipproxy-image services must run as {RUNTIME_UID}:{RUNTIME_UID}")

    envs = {}
    for name, proxy in sorted(replicas.items()):
        where = f"{source} service {name}"
        test = (proxy.get("healthcheck") or {}).get("test")
        require(test == ["CMD", "ipproxy", "healthcheck"], where, f"healthcheck.test must be [CMD, ipproxy, healthcheck], got {test!r}")
        env = service_env(proxy)
        names = secret_names(proxy)
        for n in names:
            spec = secrets.get(n) or {}
            require(bool(spec), source, f"service {name} uses secret {n!r}, which `secrets:` does not define")
            if "file" in spec:
                require((base / spec["file"]).is_file(), source, f"secret {n!r} file {base / spec['file']} does not exist")

        def mounted_secret(path: str, what: str, where=where, names=names) -> None:
            require(any(path == f"/run/secrets/{n}" for n in names), where,
                    f"{what} ({path!r}) must be one of the service's compose secrets (/run/secrets/<name>)")

        require("IPPROXY_AUTH__PASSWORD" not in env, where, "the password must come from a secret file")
        mounted_secret(env.get("IPPROXY_AUTH__PASSWORD_FILE", ""), "IPPROXY_AUTH__PASSWORD_FILE")
        store = {k: env[f"IPPROXY_STORE__{k.upper()}"] for k in STORE_KEYS if f"IPPROXY_STORE__{k.upper()}" in env}
        require(store.get("kind") == "redis", where,
                "the replicas must share one token: IPPROXY_STORE__KIND=redis")
        check_store(store, where, mounted_secret)
        key_secret = secrets[store["key_file"].removeprefix("/run/secrets/")]
        if "file" in key_secret:
            check_store_key_file(base / key_secret["file"], f"{source} secret for {store['key_file']}")
        url = store.get("url", "")
        require(re.match(rf"^(redis|valkey)s?://([^@/]*@)?{re.escape(store_service)}:\d+", url) is not None or "url_file" in store,
                where, f"IPPROXY_STORE__URL must point at the {store_service!r} service, got {url!r}")
        depends = proxy.get("depends_on") or {}
        require(sim in depends, where, "must depend on the simulator")
        require(store_service in depends, where, f"must start after {store_service!r}")
        require(proxy.get("ports") is None or all(str(p).endswith(f":{ADMIN_PORT}") for p in proxy["ports"]), where,
                "only the admin port may be published per replica (clients go through the load balancer)")
        envs[name] = env
        ok(f"{where}: read-only, UID {RUNTIME_UID}, password and store key from compose secrets, "
           f"store redis at {url or store.get('url_file')}, healthcheck")
    first = next(iter(envs.values()))
    require(all(e == first for e in envs.values()), source,
            "every replica must have the same environment (one store, one key, one credential)")

    # The load balancer: depends on every replica, publishes the proxy port, and its
    # configuration sends to every replica with a readiness check.
    lbs = [n for n, s in services.items() if set(replicas) <= set(s.get("depends_on") or {}) and n not in ("app",)]
    require(len(lbs) == 1, source, f"expected one load balancer service depending on every replica, found {lbs}")
    lb = services[lbs[0]]
    hosts = allow_hosts(first.get("IPPROXY_ACCESS__ALLOW_HOSTS"), {})
    require(lbs[0] in hosts, source,
            f"the replicas must list the load balancer's name {lbs[0]!r} in IPPROXY_ACCESS__ALLOW_HOSTS "
            f"(HAProxy passes the app's Host on; any Host not listed is refused 421); got {hosts}")
    lb_where = f"{source} service {lbs[0]}"
    require(any(str(p).endswith(f":{PROXY_PORT}") for p in lb.get("ports") or []), lb_where,
            f"the load balancer must publish the proxy port {PROXY_PORT}")
    mounts = [str(v).split(":") for v in lb.get("volumes") or []]
    configs = [base / m[0] for m in mounts if len(m) >= 2 and m[0].startswith("./")]
    require(bool(configs) and all(m[-1] == "ro" for m in mounts), lb_where,
            "the load balancer's configuration must be a file from deploy/, mounted read-only")
    for config in configs:
        require(config.is_file(), lb_where, f"{config} does not exist")
        text = config.read_text()
        for name in replicas:
            require(re.search(rf"^\s*server\s+\S+\s+{re.escape(name)}:{PROXY_PORT}\b", text, re.M) is not None,
                    str(config), f"no `server ... {name}:{PROXY_PORT}` line")
        require(re.search(r"^\s*balance\s+roundrobin\b", text, re.M) is not None, str(config), "balance roundrobin expected")
        require(re.search(r"uri\s+/readyz\b", text) is not None and re.search(rf"check\s+port\s+{ADMIN_PORT}\b", text),
                str(config), f"the replicas must be health-checked on /readyz, port {ADMIN_PORT}")
        ok(f"{config}: round robin over {', '.join(sorted(replicas))}, readiness-checked on /readyz")

    app_deps = (services.get("app") or {}).get("depends_on") or {}
    for name in replicas:
        require((app_deps.get(name) or {}).get("condition") == "service_healthy", f"{source} service app",
                f"the app must wait for {name} to be healthy")
    ok(f"{source}: {len(replicas)} replicas sharing one token through {store_service!r} behind {lbs[0]!r}, "
       f"simulator {sim!r} invalidating on re-auth, every service hardened")
    if extract is not None:
        for name, env in envs.items():
            out = extract / "compose" / f"{name}.env"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
            print(f"env: {out}")


# --- driver -------------------------------------------------------------------------


def load_yaml_docs() -> list[tuple[str, dict]]:
    files = sorted(p for p in DEPLOY_DIR.rglob("*") if p.suffix in (".yaml", ".yml"))
    require(bool(files), str(DEPLOY_DIR), "no YAML files found")
    docs = []
    for path in files:
        try:
            loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as err:
            fail(str(path), f"not valid YAML: {err}")
        require(all(isinstance(d, dict) for d in loaded), str(path), "every document must be a mapping")
        ok(f"{path}: parsed {len(loaded)} YAML document(s)")
        docs.extend((str(path), d) for d in loaded)
    return docs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extract-configs", metavar="DIR", type=Path,
                        help="write the ipproxy configs the manifests mount into DIR and print their paths")
    args = parser.parse_args()
    try:
        check_dockerfile()
        image_cfg = check_image_config()
        docs = load_yaml_docs()

        configmaps: dict[str, dict[str, dict]] = {}
        extracted = []
        for source, d in docs:
            if d.get("kind") == "ConfigMap":
                name = d["metadata"]["name"]
                configmaps[name] = {}
                for key, text in (d.get("data") or {}).items():
                    if key.endswith(".toml"):
                        configmaps[name][key] = load_toml(text, f"{source} ConfigMap/{name} key {key}")
                        extracted.append((name, key, text))

        kube = [(s, d) for s, d in docs if "apiVersion" in d and "kind" in d]
        workloads = sum(check_workload(d, s, configmaps, image_cfg) for s, d in kube)
        require(workloads >= 2, str(DEPLOY_DIR), f"expected a sidecar and a shared workload, found {workloads}")
        check_selectors(kube)

        compose = [(s, d) for s, d in docs if "services" in d]
        require(bool(compose), str(DEPLOY_DIR), "no compose file (a YAML with `services`)")
        for source, d in compose:
            check_compose(source, d, args.extract_configs)

        if args.extract_configs is not None:
            for name, key, text in extracted:
                out = args.extract_configs / name / key
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(text)
                print(f"config: {out}")
    except CheckFailed as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return 1
    print(f"ok: {workloads} ipproxy workload(s), {len(extracted)} mounted config(s), {len(compose)} compose file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
