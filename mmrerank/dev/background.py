"""Run `scripts/serve` in the background on free loopback ports, for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmrerank.launch.launcher import REPO_ROOT
from mmrerank.launch.supervisor import LaunchError, wait_until_ready


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class BackgroundServer:
    """A server started by `start_server`: its ports, log file and launcher process."""

    http_port: int
    grpc_port: int
    metrics_port: int
    api_port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def http_url(self) -> str:
        """host:port of the HTTP endpoint."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def api_url(self) -> str:
        """Base URL of the rerank API front."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def grpc_url(self) -> str:
        """host:port of the gRPC endpoint."""
        return f"127.0.0.1:{self.grpc_port}"

    def log_tail(self, lines: int = 80) -> str:
        """The last lines of the server's log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM the launcher (it forwards to tritonserver) and wait; kill the group if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def start_server(
    checkpoint: Path,
    log_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 240,
    launcher: Sequence[str] = (str(REPO_ROOT / "scripts" / "serve"),),
    api_front: bool = True,
    device: str = "auto",
) -> BackgroundServer:
    """Launch scripts/serve on free ports and wait until Triton is ready; raise LaunchError with the log if not.

    `extra` goes to scripts/serve; `env` adds environment variables (e.g. MMRERANK_API_KEY);
    `launcher` replaces scripts/serve, e.g. `python -m mmrerank.launch.launcher` where no
    virtual environment may be created (a machine without internet). Without `api_front` the
    rerank API front stays off (its packages need not be installed). `device` is the launcher's
    `--device`: auto, cpu or gpu.
    """
    http, grpc, metrics, api = free_ports(4)
    api = api if api_front else 0
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*launcher, "--checkpoint", str(checkpoint), "--device", device, "--http-port", str(http),
             "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--api-port", str(api), *extra],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})},
        )  # fmt: skip
    server = BackgroundServer(http, grpc, metrics, api, log_path, process)
    try:
        wait_until_ready(process, f"http://{server.http_url}/v2/health/ready", ready_timeout)
        if api_front:
            wait_until_ready(process, f"{server.api_url}/openapi.json", ready_timeout, "rerank API front")
    except LaunchError as error:
        server.stop()
        raise LaunchError(f"{error}:\n{server.log_tail()}") from error
    return server


def edited_repository(target: Path, config: str, edit: Callable[[str], str]) -> Path:
    """A copy of the model repository at `target` whose `config` (a path inside it) went through `edit`."""
    shutil.copytree(REPO_ROOT / "model_repository", target)
    path = target / config
    path.write_text(edit(path.read_text()))
    return target
