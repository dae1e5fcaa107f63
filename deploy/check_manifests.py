#!/usr/bin/env python3
"""Check ipproxy's deployment files: the Kubernetes manifests, the compose file, the
in-image configuration and the Dockerfile's runtime contract.

    python3 deploy/check_manifests.py                      # checks only
    python3 deploy/check_manifests.py --extract-configs DIR

With --extract-configs, every ipproxy configuration that the manifests mount
(ConfigMap data keys ending in .toml) is written to DIR/<configmap>/<key>, and the
compose file's ipproxy environment to DIR/compose/ipproxy.env (KEY=VALUE lines), so
that `ipproxy check` can be run on them; each written path is printed on a line of
its own, prefixed "config: " or "env: ".

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
        "distroless nonroot base": r"\A(\$\{RUNTIME_IMAGE\}|gcr\.io/distroless/cc-debian12:nonroot)\s",
        "binary at /usr/local/bin/ipproxy": r"^COPY --from=builder \S+ /usr/local/bin/ipproxy$",
        "image config": rf"^COPY config/container\.toml {re.escape(IMAGE_CONFIG_PATH)}$",
        "IPPROXY_CONFIG": rf"^ENV IPPROXY_CONFIG={re.escape(IMAGE_CONFIG_PATH)}$",
        "numeric non-root user": rf"^USER {RUNTIME_UID}:{RUNTIME_UID}$",
        "exposed ports": rf"^EXPOSE {PROXY_PORT} {ADMIN_PORT}$",
        "exec-form healthcheck": r'CMD \["ipproxy", "healthcheck"\]',
        "exec-form entrypoint": r'^ENTRYPOINT \["ipproxy"\]$',
        "default command": r'^CMD \["run"\]$',
    }
    for what, pattern in expect.items():
        require(re.search(pattern, final, re.M) is not None, where, f"final stage lacks {what} ({pattern})")
    require(re.search(r"^ARG RUNTIME_IMAGE=gcr\.io/distroless/cc-debian12:nonroot$", text, re.M) is not None,
            where, "RUNTIME_IMAGE must default to gcr.io/distroless/cc-debian12:nonroot")
    require(re.search(r"cargo build --release --locked", text) is not None, where, "no locked release build")
    ok(f"{where}: final stage is distroless, UID {RUNTIME_UID}, healthcheck/entrypoint in exec form")


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

        prestop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
        grace_needed = max(grace_needed, prestop + shutdown_grace_s(cfg, f"{source} {cfg_source}"))
        ok(f"{where}: probes /readyz+/healthz on :{ADMIN_PORT}, hardened securityContext, resources, "
           f"password from Secret file {password_file}, config from {cfg_source}")

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


def check_compose(source: str, doc: dict, extract: Path | None) -> None:
    services = doc.get("services") or {}
    require("ipproxy" in services, source, "no `ipproxy` service")
    proxy = services["ipproxy"]
    where = f"{source} service ipproxy"
    require(proxy.get("read_only") is True, where, "read_only must be true")
    require(str(proxy.get("user")) == f"{RUNTIME_UID}:{RUNTIME_UID}", where, f"user must be {RUNTIME_UID}:{RUNTIME_UID}")
    test = (proxy.get("healthcheck") or {}).get("test")
    require(test == ["CMD", "ipproxy", "healthcheck"], where, f"healthcheck.test must be [CMD, ipproxy, healthcheck], got {test!r}")
    for port in proxy.get("ports") or []:
        require(str(port).startswith("127.0.0.1:"), where, f"port {port!r} must be published on 127.0.0.1 only")
    env = proxy.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    require("IPPROXY_AUTH__PASSWORD" not in env, where, "the password must come from a secret file")
    pw_file = env.get("IPPROXY_AUTH__PASSWORD_FILE", "")
    secret_names = [s if isinstance(s, str) else s.get("source") for s in proxy.get("secrets") or []]
    require(any(pw_file == f"/run/secrets/{n}" for n in secret_names), where,
            f"IPPROXY_AUTH__PASSWORD_FILE ({pw_file!r}) is not one of the service's secrets")
    for n in secret_names:
        spec = (doc.get("secrets") or {}).get(n) or {}
        if "file" in spec:
            secret_path = (Path(source).parent / spec["file"])
            require(secret_path.is_file(), source, f"secret {n!r} file {secret_path} does not exist")
    depends = proxy.get("depends_on") or {}
    require("sim" in depends, where, "must depend on the simulator")
    for name, svc in services.items():
        image_is_ours = svc.get("image") == proxy.get("image") or "build" in svc
        if image_is_ours:
            require(svc.get("read_only") is True and str(svc.get("user")) == f"{RUNTIME_UID}:{RUNTIME_UID}",
                    f"{source} service {name}", "ipproxy-image services must be read_only and run as 65532")
    app_deps = (services.get("app") or {}).get("depends_on") or {}
    require((app_deps.get("ipproxy") or {}).get("condition") == "service_healthy", f"{source} service app",
            "the app must wait for ipproxy to be healthy")
    ok(f"{where}: read-only, UID {RUNTIME_UID}, loopback ports, password from a compose secret, healthcheck")
    if extract is not None:
        out = extract / "compose" / "ipproxy.env"
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
