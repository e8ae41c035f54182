"""The launcher's command line and checks, and the supervisor's view of backend processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import fake_tritonserver

from mmrerank.dev.background import free_ports
from mmrerank.launch import configs, launcher
from mmrerank.launch.configs import config_parameters
from mmrerank.launch.repository import RepositoryError, materialize
from mmrerank.launch.supervisor import Companion, LaunchError, Supervisor, child_states
from mmrerank.serving.deadlines import ShutdownNotice
from mmrerank_client.schema import PARAMETER_NAMES


def command(tmp_path, monkeypatch, *argv, env=None):
    fake_tritonserver(tmp_path, monkeypatch)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    return launcher.server_command(launcher.parse_args(list(argv)), Path("/ckpt"), backend_dir=None)


def test_defaults_bind_loopback_and_pick_the_cpu_config_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "gpu_available", lambda: False)
    built = command(tmp_path, monkeypatch)
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"} <= set(built.argv)
    assert "--model-config-name=cpu" in built.argv
    assert "--grpc-infer-allocation-pool-size=0" in built.argv  # no gRPC request object keeps a large request's memory
    assert built.env == {"MMRERANK_CHECKPOINT": "/ckpt", **launcher.OPENMP_DEFAULTS}
    assert not any("restricted" in arg or "model-control" in arg for arg in built.argv)


def test_idle_openmp_threads_sleep_after_a_short_spin_unless_told_otherwise(tmp_path, monkeypatch):
    assert command(tmp_path, monkeypatch).env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert command(tmp_path, monkeypatch).env["GOMP_SPINCOUNT"] == "30000"
    told = command(tmp_path, monkeypatch, env={"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "0"}).env
    assert (told["OMP_WAIT_POLICY"], told["GOMP_SPINCOUNT"]) == ("ACTIVE", "0")


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
    assert launcher.resolve_checkpoint(str(tiny_checkpoint)).directory == tiny_checkpoint.resolve()


def test_the_served_repository_carries_the_checkpoints_facts(tiny_checkpoint, tmp_path):
    layout = launcher.resolve_checkpoint(str(tiny_checkpoint))
    served = materialize(launcher.DEFAULT_MODEL_REPOSITORY, layout, tmp_path / "repo", "cpu")
    facts = config_parameters((served / "rerank" / "config.pbtxt").read_text())
    assert facts == {
        "checkpoint": "demo-tiny",
        "layer_indices": "1,2,4,6",
        "dim_indices": "8,16,32,64,128",
        "default_layer": "6",
        "default_dim": "128",
        "max_tokens_per_pair": "32768",
        "max_documents": "1000",
        "max_request_tokens": "262144",
        "request_parameters": ",".join(PARAMETER_NAMES),
    }
    assert (served / "reranker" / "configs" / "cpu.pbtxt").is_file()
    assert (served / "tokenizer" / "1" / "model.py").read_text() == (
        launcher.DEFAULT_MODEL_REPOSITORY / "tokenizer" / "1" / "model.py"
    ).read_text()


def test_launcher_overrides_reach_every_reranker_config_of_the_served_copy(tiny_checkpoint, tmp_path):
    args = launcher.parse_args(["--attention", "varlen", "--max-batch-tokens", "16384"])
    assert (args.attention, args.max_batch_tokens) == ("varlen", 16384)
    overrides = {"attention": "varlen", "max_batch_tokens": "16384"}
    layout = launcher.resolve_checkpoint(str(tiny_checkpoint))
    served = materialize(launcher.DEFAULT_MODEL_REPOSITORY, layout, tmp_path / "repo", None, overrides)
    configs = [served / "reranker" / "config.pbtxt", *(served / "reranker" / "configs").glob("*.pbtxt")]
    assert len(configs) >= 3
    for config in configs:
        settings = config_parameters(config.read_text())
        assert (settings["attention"], settings["max_batch_tokens"]) == ("varlen", "16384"), config
    cpu = materialize(launcher.DEFAULT_MODEL_REPOSITORY, layout, tmp_path / "cpu", "cpu")
    tokenizer_cpu = config_parameters((cpu / "tokenizer" / "configs" / "cpu.pbtxt").read_text())
    reranker_cpu = config_parameters((cpu / "reranker" / "configs" / "cpu.pbtxt").read_text())
    assert reranker_cpu["default_deadline_ms"] == tokenizer_cpu["default_deadline_ms"] == "120000"
    source_settings = config_parameters((launcher.DEFAULT_MODEL_REPOSITORY / "reranker" / "config.pbtxt").read_text())
    assert source_settings["attention"] == "auto"
    with pytest.raises(RepositoryError, match="has no parameter 'no_such_key'"):
        materialize(launcher.DEFAULT_MODEL_REPOSITORY, layout, tmp_path / "other", None, {"no_such_key": "1"})


def test_caps_that_differ_between_the_steps_stop_the_launch_and_the_schema_puts_them_right(tiny_checkpoint, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(launcher.DEFAULT_MODEL_REPOSITORY, source)
    tokenizer_cpu = source / "tokenizer" / "configs" / "cpu.pbtxt"
    configs.set_parameters(tokenizer_cpu, {"max_documents": "500"})
    layout = launcher.resolve_checkpoint(str(tiny_checkpoint))
    with pytest.raises(RepositoryError, match="max_documents is 500 in .*tokenizer.* but 1000 in .*reranker"):
        materialize(source, layout, tmp_path / "served", "cpu")
    materialize(source, layout, tmp_path / "gpu", None)  # the default variant's configs still agree
    assert configs.main(["--model-repository", str(source), "--check"]) == 1
    assert configs.caps_drift(source) == [f"{tokenizer_cpu}: max_documents is '500', the schema says '1000'"]
    assert configs.main(["--model-repository", str(source)]) == 0
    assert configs.caps_drift(source) == []
    assert config_parameters(tokenizer_cpu.read_text())["max_documents"] == "1000"


def test_a_repository_that_sets_a_fact_itself_is_refused(tiny_checkpoint, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(launcher.DEFAULT_MODEL_REPOSITORY, source)
    config = source / "rerank" / "config.pbtxt"
    config.write_text(config.read_text() + 'parameters [ { key: "layer_indices" value: { string_value: "3" } } ]\n')
    with pytest.raises(RepositoryError, match="already sets layer_indices"):
        materialize(source, launcher.resolve_checkpoint(str(tiny_checkpoint)), tmp_path / "served", None)


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


def test_sigterm_announces_the_shutdown_grace_before_forwarding_the_signal(tmp_path):
    notice = ShutdownNotice(tmp_path / "shutting-down")
    supervisor = Supervisor(["sleep", "30"], dict(os.environ), "http://127.0.0.1:1/", 1, 5, shutdown=(notice, 25))
    supervisor.process = subprocess.Popen(["sleep", "30"])
    try:
        before = time.monotonic()
        supervisor.stop(signal.SIGTERM)
        assert supervisor.process.wait(timeout=5) == -signal.SIGTERM
        assert before + 25 <= ShutdownNotice(notice.path).ends_at() <= time.monotonic() + 25
    finally:
        supervisor.kill_if_running()


# Stands in for tritonserver: answers readiness with 200, and on SIGTERM takes a moment to drain, then exits 0.
FAKE_SERVER = """
import http.server, signal, sys, threading, time
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Ready)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=lambda: (time.sleep(0.5), server.shutdown())).start())
server.serve_forever()
"""


def test_a_sigterm_while_starting_drains_tritonserver_instead_of_killing_it(tmp_path):
    port = free_ports(1)[0]
    api_front = Companion("rerank API front", [sys.executable, "-c", "pass"], dict(os.environ), "http://127.0.0.1:1/")
    supervisor = Supervisor(
        [sys.executable, "-c", FAKE_SERVER, str(port)], dict(os.environ), f"http://127.0.0.1:{port}/", 30, 5,
        companions=[api_front],
    )  # fmt: skip
    supervisor.stopping = True  # as if SIGTERM came while the launcher waited for its companion
    try:
        supervisor.start()  # the companion has exited: no error while stopping, and tritonserver lives on
        assert supervisor.process.poll() is None
        supervisor.process.send_signal(signal.SIGTERM)
        assert supervisor.supervise(poll_seconds=0.1) == 0  # it drained and exited by itself
    finally:
        supervisor.kill_if_running()


def test_a_cpu_host_serves_the_reranker_the_cpu_configs_caps(tiny_checkpoint, tmp_path, monkeypatch):
    """The config is picked automatically (no --model-config-name): the copy must take the cpu variant's values."""
    monkeypatch.setattr(launcher, "gpu_available", lambda: False)
    args = launcher.parse_args([])
    layout = launcher.resolve_checkpoint(str(tiny_checkpoint))
    served = materialize(
        launcher.DEFAULT_MODEL_REPOSITORY, layout, tmp_path / "repo", launcher.served_config_name(args)
    )
    tokenizer = config_parameters((served / "tokenizer" / "configs" / "cpu.pbtxt").read_text())
    reranker = config_parameters((served / "reranker" / "configs" / "cpu.pbtxt").read_text())
    assert reranker["default_deadline_ms"] == tokenizer["default_deadline_ms"] == "120000"
    assert "--model-config-name=cpu" in launcher.server_command(args, tiny_checkpoint, None, served).argv


def test_the_api_fronts_connection_limit_reaches_its_command_line():
    args = launcher.parse_args(["--api-max-connections", "77"])
    assert launcher.api_front(args, "127.0.0.1").argv[-2:] == ["--max-connections", "77"]
    assert launcher.api_front(launcher.parse_args([]), "127.0.0.1").argv[-2:] == ["--max-connections", "1000"]
