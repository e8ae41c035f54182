"""Static checks of the Docker images, compose file and Kubernetes manifests (no Docker engine here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from manifests import K8S, envoy_binary, envoy_config, k8s_objects
from servers import fake_tritonserver

from mmrerank.launch import launcher

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.rocm"]
# Objects of custom resources: kubernetes-validate has no schema for them, and the KEDA and Prometheus
# Operator CRDs are not obtainable without network here; the tests below check the fields their
# controllers read, and test_autoscaling_rules.py runs their PromQL through promtool.
CUSTOM_RESOURCE_FILES = {"monitoring.yaml", "keda-scaledobject.yaml"}
KUBERNETES_VERSION = "1.31.0"
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)


def instruction(dockerfile: Path, name: str) -> list[str]:
    """The JSON-array form of an ENTRYPOINT or CMD instruction."""
    match = re.search(rf"^{name}\s+(\[.*\])\s*$", dockerfile.read_text(), re.MULTILINE)
    assert match, f"{dockerfile.name} has no exec-form {name}"
    return json.loads(match.group(1))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = run(str(BIN / "hadolint"), str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_exists(dockerfile):
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (REPO_ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_container_runs_the_launchers_command_line(dockerfile, tmp_path, monkeypatch):
    entrypoint, cmd = instruction(dockerfile, "ENTRYPOINT"), instruction(dockerfile, "CMD")
    assert entrypoint[0] == "mmrerank-serve"
    fake_server = fake_tritonserver(tmp_path, monkeypatch)
    args = launcher.parse_args(entrypoint[1:] + cmd)
    command = launcher.server_command(args, Path("/models/checkpoint"), backend_dir=None)
    assert command.argv[0] == str(fake_server)
    assert command.env == {"MMRERANK_CHECKPOINT": "/models/checkpoint", **launcher.OPENMP_DEFAULTS}
    expected = {
        "--model-repository=/opt/mmrerank/model_repository",
        "--http-address=0.0.0.0",
        "--grpc-address=0.0.0.0",
        "--http-port=8000",
        "--grpc-port=8001",
        "--metrics-port=8002",
        f"--exit-timeout-secs={launcher.EXIT_TIMEOUT_SECONDS}",
    }
    assert expected <= set(command.argv)
    assert not any(arg.startswith(("--backend-directory", "--model-config-name")) for arg in command.argv)
    copied_repository = {line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("COPY")}
    assert "model_repository" in copied_repository


def test_kubernetes_and_compose_pass_the_same_launcher_options():
    cmd = instruction(DOCKER / "Dockerfile", "CMD")
    for deployment in deployments():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == cmd
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert compose["services"]["reranker-2x"]["command"] == [*cmd, "--model-config-name", "gpu-2x"]
    assert (REPO_ROOT / "model_repository" / "reranker" / "configs" / "gpu-2x.pbtxt").is_file()


def test_server_requirements_match_the_lock():
    lock = dict(line.split("==") for line in (REPO_ROOT / "requirements.lock").read_text().splitlines() if "==" in line)
    pins = [line for line in (DOCKER / "requirements-server.txt").read_text().splitlines() if "==" in line]
    assert pins
    for pin in pins:
        name, version = pin.split("==")
        assert lock.get(name) == version, pin
    assert lock["torch"] == "2.13.0"
    for dockerfile in DOCKERFILES:
        assert "torch==2.13.0" in dockerfile.read_text()


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml") if p.name not in CUSTOM_RESOURCE_FILES))
def test_manifest_passes_kubernetes_schema(name):
    result = run(str(BIN / "kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(K8S / name))
    assert result.returncode == 0 and "passed" in result.stdout, result.stdout + result.stderr


def test_yaml_lint():
    result = run(str(BIN / "yamllint"), "-c", ".yamllint.yaml", "docker")
    assert result.returncode == 0, result.stdout + result.stderr


def deployments() -> list[dict]:
    """The reranker Deployments: NVIDIA's and AMD's (one name, one or the other is applied)."""
    return [yaml.safe_load((K8S / name).read_text()) for name in ("deployment-nvidia.yaml", "deployment-amd.yaml")]


def test_manifests_fit_together():
    found = k8s_objects()
    deployment, amd = deployments()
    assert deployment["metadata"]["name"] == amd["metadata"]["name"] == "mmrerank"
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    for service in ("Service/mmrerank", "Service/mmrerank-pods"):
        assert found[service]["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in found[service]["spec"]["ports"]} <= ports
    assert found["Service/mmrerank-pods"]["spec"]["clusterIP"] == "None", "Envoy resolves every pod through DNS"
    monitor = found["PodMonitor/mmrerank"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
    # kube-prometheus-stack's Prometheus selects monitors and rules by its Helm release label.
    assert monitor["metadata"]["labels"]["release"] == found["PrometheusRule/mmrerank"]["metadata"]["labels"]["release"]
    assert found["PodDisruptionBudget/mmrerank"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "checkpoint")
    claim = found[f"PersistentVolumeClaim/{volume['persistentVolumeClaim']['claimName']}"]
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"], "replicas on several nodes mount the checkpoint"


def test_the_scaler_keeps_two_replicas_and_targets_the_deployment():
    found = k8s_objects()
    scaled = found["ScaledObject/mmrerank"]["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mmrerank"}
    assert scaled["minReplicaCount"] >= 2 and scaled["maxReplicaCount"] > scaled["minReplicaCount"]
    for trigger in scaled["triggers"]:
        assert trigger["type"] == "prometheus" and trigger["metricType"] in ("Value", "AverageValue")
        assert {"serverAddress", "query", "threshold"} <= trigger["metadata"].keys()
    for deployment in deployments():
        spec = deployment["spec"]
        assert spec["replicas"] == scaled["minReplicaCount"]
        assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}, "no spare GPU needed"
        spread = spec["template"]["spec"]["topologySpreadConstraints"][0]
        assert spread["topologyKey"] == "kubernetes.io/hostname"


def test_a_draining_pod_outlasts_envoys_view_of_it():
    """preStop lasts longer than Envoy needs to stop sending there: a DNS refresh plus two failed health checks."""
    clusters = envoy_config()["static_resources"]["clusters"]
    for deployment in deployments():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        pause = float(re.search(r"sleep\((\d+)\)", container["lifecycle"]["preStop"]["exec"]["command"][-1])[1])
        for cluster in clusters:
            refresh = float(cluster.get("dns_refresh_rate", "0s").rstrip("s"))
            check = cluster["health_checks"][0]
            noticed = refresh + float(check["interval"].rstrip("s")) * check["unhealthy_threshold"]
            assert pause > noticed, (cluster["name"], pause, noticed)
        assert pod["terminationGracePeriodSeconds"] > pause + launcher.EXIT_TIMEOUT_SECONDS


def test_envoy_balances_each_request_retries_and_checks_health():
    config = envoy_config()["static_resources"]
    for cluster in config["clusters"]:
        assert cluster["lb_policy"] == "LEAST_REQUEST"
        assert cluster["health_checks"][0]["http_health_check"]["path"] == "/health"
        assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"]["address"] == "mmrerank-pods"  # fmt: skip
    grpc = next(cluster for cluster in config["clusters"] if cluster["name"] == "triton_grpc")
    assert "http2_protocol_options" in str(grpc["typed_extension_protocol_options"])
    for listener in config["listeners"]:
        route = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0][
            "routes"][0]["route"]  # fmt: skip
        retry = route["retry_policy"]
        assert retry["num_retries"] == 2 and retry["per_try_timeout"]
        assert set(retry["retry_on"].split(",")) >= {
            "connect-failure",
            "reset",
            "unavailable",
            "retriable-status-codes",
        }
        assert retry["retriable_status_codes"] == [503]


def test_envoy_accepts_its_configuration(tmp_path):
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(envoy_config()))
    result = run(envoy_binary(), "--mode", "validate", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
