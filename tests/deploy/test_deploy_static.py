"""Static checks of the Docker images, compose file and Kubernetes manifests (no Docker engine here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmrerank.launch import launcher

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.rocm"]
K8S = DOCKER / "k8s"
KUBERNETES_VERSION = "1.31.0"
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)


def manifests() -> dict[str, dict]:
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted(K8S.glob("*.yaml"))}


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
    fake_server = tmp_path / "tritonserver"
    fake_server.write_text("#!/bin/sh\n")
    fake_server.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    args = launcher.parse_args(entrypoint[1:] + cmd)
    command = launcher.server_command(args, Path("/models/checkpoint"), backend_dir=None)
    assert command.argv[0] == str(fake_server)
    assert command.env == {"MMRERANK_CHECKPOINT": "/models/checkpoint", "OMP_WAIT_POLICY": "PASSIVE"}
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
    for name in ("deployment-nvidia.yaml", "deployment-amd.yaml"):
        container = manifests()[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == cmd, name
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


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "podmonitor.yaml"))
def test_manifest_passes_kubernetes_schema(name):
    result = run(str(BIN / "kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(K8S / name))
    assert result.returncode == 0 and "passed" in result.stdout, result.stdout + result.stderr


def test_yaml_lint():
    result = run(str(BIN / "yamllint"), "-c", ".yamllint.yaml", "docker")
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifests_fit_together():
    found = manifests()
    deployment = found["deployment-nvidia.yaml"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert found["service.yaml"]["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in found["service.yaml"]["spec"]["ports"]} <= ports
    monitor = found["podmonitor.yaml"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
    hpa = found["hpa.yaml"]["spec"]
    assert (
        hpa["scaleTargetRef"]["name"]
        == deployment["metadata"]["name"]
        == found["deployment-amd.yaml"]["metadata"]["name"]
    )
    rules = yaml.safe_load(found["prometheus-adapter-rules.yaml"]["data"]["config.yaml"])["rules"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == rules[0]["name"]["as"]
    assert "nv_inference_queue_duration_us" in rules[0]["metricsQuery"]
    assert "nv_inference_request_success" in rules[0]["metricsQuery"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > launcher.EXIT_TIMEOUT_SECONDS + 10
    container = pod["spec"]["containers"][0]
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # Ready only while both Triton's model and the rerank API front answer.
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "rerank-api"}
    assert found["deployment-amd.yaml"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "amd.com/gpu"
    ]
