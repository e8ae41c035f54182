"""The launcher's command line and checks, and the supervisor's view of backend processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mmrerank.launch import launcher
from mmrerank.launch.supervisor import LaunchError, child_states


def command(tmp_path, monkeypatch, *argv, env=None):
    fake = tmp_path / "tritonserver"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    return launcher.server_command(launcher.parse_args(list(argv)), Path("/ckpt"), backend_dir=None)


def test_defaults_bind_loopback_and_pick_the_cpu_config_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "gpu_available", lambda: False)
    built = command(tmp_path, monkeypatch)
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"} <= set(built.argv)
    assert "--model-config-name=cpu" in built.argv
    assert built.env == {"MMRERANK_CHECKPOINT": "/ckpt"}
    assert not any("restricted" in arg or "model-control" in arg for arg in built.argv)


def test_gpu_and_named_configs(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "gpu_available", lambda: True)
    assert not any("model-config-name" in a for a in command(tmp_path, monkeypatch).argv)
    named = command(tmp_path, monkeypatch, "--device", "gpu", "--model-config-name", "gpu-2x")
    assert "--model-config-name=gpu-2x" in named.argv
    assert "--http-port=9000" in command(tmp_path, monkeypatch, "--http-port", "9000", "--", "--log-info=false").argv


def test_an_api_key_restricts_apis_and_never_prints(tmp_path, monkeypatch):
    built = command(tmp_path, monkeypatch, "--device", "cpu", env={"MMRERANK_API_KEY": "s3cret value"})
    restricted = [arg for arg in built.argv if "restricted" in arg]
    assert len(restricted) == 2 and all(arg.endswith(":x-api-key=s3cret value") for arg in restricted)
    assert all("inference" in arg and "health" not in arg for arg in restricted)
    printed = built.shell(secret="s3cret value")
    assert "s3cret" not in printed and "${MMRERANK_API_KEY}" in printed


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "nowhere", "does not exist"),
        (lambda d: d, "not a checkpoint in the published layout: it lacks config.json"),
    ],
)
def test_an_unusable_checkpoint_fails_before_starting_triton(tmp_path, make, message):
    with pytest.raises(LaunchError, match=message):
        launcher.resolve_checkpoint(str(make(tmp_path)))


def test_a_checkpoint_directory_resolves(tiny_checkpoint):
    assert launcher.resolve_checkpoint(str(tiny_checkpoint)) == tiny_checkpoint.resolve()


def test_a_killed_child_shows_as_a_zombie_until_reaped():
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child_states(os.getpid())[child.pid] != "Z"
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while child_states(os.getpid()).get(child.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child_states(os.getpid())[child.pid] == "Z"  # not reaped yet: the supervisor counts it dead
    finally:
        child.kill()
        child.wait()
