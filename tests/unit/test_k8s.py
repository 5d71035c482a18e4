"""Kubernetes manifests: both overlays render with kustomize and validate against the schemas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tviz import edge

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = str(Path(sys.executable).parent / "kubectl")


def render(overlay: str) -> list[dict]:  # type: ignore[type-arg]
    out = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs: list[dict], kind: str, name: str) -> dict:  # type: ignore[type-arg]
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"].startswith(name):
            return d
    raise AssertionError(f"no {kind} {name}")


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlay_validates_against_kubernetes_schemas(overlay: str) -> None:
    docs = render(overlay)
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
    } <= kinds
    assert all(d["metadata"].get("namespace") == "tviz" for d in docs if d["kind"] != "Namespace")


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_replicas_scale_four_to_eight_with_grpc_probes(overlay: str) -> None:
    docs = render(overlay)
    replica = find(docs, "Deployment", "tviz-replica")
    assert replica["spec"]["replicas"] == 4
    hpa = find(docs, "HorizontalPodAutoscaler", "tviz-replica")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (4, 8)
    headless = find(docs, "Service", "tviz-replica-headless")
    assert headless["spec"]["clusterIP"] == "None"
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, d["metadata"]["name"]
            assert "requests" in c.get("resources", {}), d["metadata"]["name"]
    main = replica["spec"]["template"]["spec"]["containers"][0]
    assert main["readinessProbe"]["grpc"]["port"] == 50051
    gpus = main["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") if overlay == "gpu" else gpus is None
    secret_refs = [
        e["valueFrom"]["secretKeyRef"]["name"]
        for d in docs if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", []) if "valueFrom" in e
    ]  # fmt: skip
    assert "tviz-api-keys" in secret_refs


def test_dashboards_prometheus_and_edge_config_are_shipped() -> None:
    docs = render("cpu")
    dashboards = find(docs, "ConfigMap", "tviz-grafana-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    for name in ("tviz-serving.json", "tviz-inspector.json"):
        shipped = json.loads(dashboards["data"][name])
        assert shipped == json.loads((ROOT / "k8s" / "base" / "dashboards" / name).read_text())
    prom = yaml.safe_load(find(docs, "ConfigMap", "tviz-prometheus")["data"]["prometheus.yml"])
    assert prom["scrape_configs"][0]["kubernetes_sd_configs"][0]["role"] == "pod"
    nginx = find(docs, "ConfigMap", "tviz-nginx")["data"]["tviz-edge.conf"]
    assert nginx == edge.render_site(edge.K8S_GATEWAYS, edge.K8S_LISTEN), "run python -m tviz.edge"
    assert "grpc_pass grpc://tviz_gateways;" in nginx
