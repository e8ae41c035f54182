"""A real tritonserver, started once per session through scripts/serve on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SECONDS = 240


@dataclass(frozen=True)
class Server:
    """Addresses of the running server and the file its log goes to."""

    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    process: subprocess.Popen

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_server(checkpoint: Path, log_path: Path, *extra: str) -> Server:
    """Launch scripts/serve and wait until Triton reports ready; fail with the log if it does not."""
    http, grpc, metrics = free_ports(3)
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            str(REPO_ROOT / "scripts" / "serve"),
            "--checkpoint",
            str(checkpoint),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(http, grpc, metrics, log_path, process)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"scripts/serve exited with {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(server)
    pytest.fail(f"tritonserver not ready within {READY_TIMEOUT_SECONDS} s:\n{server.log_tail()}")


def stop_server(server: Server, timeout: float = 60) -> int:
    """SIGTERM the launcher (it forwards to tritonserver) and wait; kill the group if it hangs."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
    return server.process.returncode


@pytest.fixture(scope="session")
def server(tiny_checkpoint, tmp_path_factory):
    """The tiny demo checkpoint served by a real tritonserver (CPU config)."""
    running = start_server(tiny_checkpoint, tmp_path_factory.mktemp("server") / "tritonserver.log")
    yield running
    stop_server(running)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server log's tail to every failing server test."""
    outcome = yield
    report = outcome.get_result()
    running = item.funcargs.get("server") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(running, Server):
        report.sections.append(("tritonserver log (tail)", running.log_tail()))
