"""The Kubernetes extras: the sharded StatefulSet overlay, the /probe Probe, the NetworkPolicy.

Validated like the base manifests (tests/test_deploy.py): Kubernetes' OpenAPI schemas, strict, and the
Prometheus Operator models; plus what ties them together: each pod's --shard comes from its pod index
and covers 0..N-1 exactly once with N = replicas, the StatefulSet's pod is the base Deployment's pod
(no drift), the overlay's result has one workload, and the NetworkPolicy lets through what mailcanary
needs. If kubectl is installed, ``kubectl kustomize`` renders the overlay and the result is checked too.
"""

from __future__ import annotations

import copy
import shutil
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate.utils import all_versions

from exporter.config import DEFAULT_MODULES, parse_shard
from exporter.config.model import _DEFAULT_PORTS
from tests.support.deploy import DEPLOY, K8S, PORT, by_kind, cli_args, load_all
from tests.support.procs import run_bounded

SHARDED = DEPLOY / "kubernetes-sharded"
POD_INDEX = "metadata.labels['apps.kubernetes.io/pod-index']"


def overlay_docs() -> list[dict[str, Any]]:
    kust = yaml.safe_load((SHARDED / "kustomization.yaml").read_text())
    return [d for r in kust["resources"] if r.endswith(".yaml") for d in load_all(SHARDED / r)]


def statefulset() -> dict[str, Any]:
    (sts,) = [d for d in overlay_docs() if d["kind"] == "StatefulSet"]
    return sts


def test_overlay_manifests_validate_against_the_api_schemas() -> None:
    versions = sorted({all_versions()[0], kubernetes_validate.latest_version()})
    docs = overlay_docs()
    assert {d["kind"] for d in docs} == {"StatefulSet", "Service"}
    for doc in docs:
        for version in versions:
            kubernetes_validate.validate(doc, version, strict=True)


def test_every_pod_takes_its_shard_from_its_index() -> None:
    sts = statefulset()
    replicas = sts["spec"]["replicas"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SHARD"]["valueFrom"]["fieldRef"]["fieldPath"] == POD_INDEX
    shards = []
    for index in range(replicas):
        args = cli_args([a.replace("$(SHARD)", str(index)) for a in container["args"]])
        assert args.command == "run" and args.listen == f":{PORT}"
        shards.append(parse_shard(args.shard))
    assert shards == [(i, replicas) for i in range(replicas)], "N of --shard must equal replicas"


def test_statefulset_pod_is_the_base_deployments_pod() -> None:
    sts_pod = copy.deepcopy(statefulset()["spec"]["template"])
    (container,) = sts_pod["spec"]["containers"]
    i = container["args"].index("--shard")
    del container["args"][i : i + 2]
    container["env"] = [e for e in container["env"] if e["name"] != "SHARD"]
    assert sts_pod == by_kind("Deployment")["spec"]["template"]
    sts = statefulset()
    assert sts["metadata"]["name"] == "mailcanary"
    headless = next(d for d in overlay_docs() if d["kind"] == "Service")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    # Not picked up by the ServiceMonitor: each pod is scraped once, through the base Service.
    monitor = by_kind("ServiceMonitor")
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items()


def test_overlay_replaces_the_deployment() -> None:
    kust = yaml.safe_load((SHARDED / "kustomization.yaml").read_text())
    assert "../kubernetes" in kust["resources"]
    (patch,) = kust["patches"]
    assert patch["target"] == {"kind": "Deployment", "name": "mailcanary"}
    assert "$patch: delete" in patch["patch"]
    kubectl = shutil.which("kubectl")
    if kubectl is not None:  # the real render where kubectl is at hand (CI's Debian has none)
        out = run_bounded([kubectl, "kustomize", str(SHARDED)], 120)
        assert out.returncode == 0, out.stderr
        kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
        assert "Deployment" not in kinds and kinds.count("StatefulSet") == 1
        assert {"NetworkPolicy", "ServiceMonitor", "PrometheusRule", "Service"} <= set(kinds)


def test_probe_scrapes_probe_under_its_own_job() -> None:
    (probe,) = load_all(K8S / "probe.example.yaml")
    spec = probe["spec"]
    assert spec["jobName"] != "mailcanary"  # so the exporter alerts never select these series
    assert spec["prober"]["path"] == "/probe" and spec["prober"]["url"].endswith(f":{PORT}")
    assert spec["module"] in DEFAULT_MODULES


def test_networkpolicy_lets_prometheus_in_and_mail_out() -> None:
    policy = by_kind("NetworkPolicy")
    pod = by_kind("Deployment")["spec"]["template"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} <= port_names
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert set(_DEFAULT_PORTS.values()) <= egress_ports and 53 in egress_ports
