"""Keep one tritonserver process running: readiness, clean stops, and recovery from dead backend stubs.

Triton 2.51 neither restarts a Python backend stub that died (OOM kill, segfault) nor marks
the model unready: requests fail with "Stub process ... is not healthy" while readiness stays
green. The supervisor watches the stub processes; when one disappears it stops the server
(readiness turns false at once), starts it again and waits until it is ready.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from mmrerank.launch.connections import close_idle_connections, server_is_idle
from mmrerank.serving.deadlines import ShutdownNotice

LOGGER = logging.getLogger("mmrerank.serve")


class LaunchError(RuntimeError):
    """The server could not be found, started or made ready."""


def child_states(parent: int) -> dict[int, str]:
    """Tritonserver's children (its Python backend stubs): pid -> process state ("Z" for a zombie)."""
    children: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            children[int(entry.name)] = fields[0]
    return children


def describe(pid: int) -> str:
    """The model file a stub runs, for log lines."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return argv[1].decode(errors="replace") if len(argv) > 1 and argv[1] else argv[0].decode(errors="replace")


def wait_until_ready(process: subprocess.Popen[bytes], url: str, timeout: float, name: str = "tritonserver") -> None:
    """Poll a readiness endpoint until it answers 200, the process dies, or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"{name} exited with status {process.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise LaunchError(f"{name} was not ready within {timeout:.0f} s")


class Companion:
    """A process that serves beside tritonserver (the rerank API front), started once Triton is ready."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], ready_url: str) -> None:
        self.name, self.argv, self.env, self.ready_url = name, list(argv), dict(env), ready_url
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> None:
        """Start it and wait until its readiness URL answers 200."""
        self.process = subprocess.Popen(self.argv, env=self.env)
        wait_until_ready(self.process, self.ready_url, timeout, self.name)

    def died(self) -> bool:
        """Whether it was started and has exited since."""
        return self.process is not None and self.process.poll() is not None

    def signal_stop(self) -> None:
        """Ask it to finish in-flight requests and exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_or_kill(self, grace: float) -> None:
        """Wait for it to exit; kill it after `grace` seconds."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Supervisor:
    """Runs tritonserver until told to stop, restarting it when a backend stub dies."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        ready_url: str,
        ready_timeout: float,
        exit_timeout: float,
        max_restarts: int = 3,
        restart_window: float = 600.0,
        companions: Sequence[Companion] = (),
        shutdown: tuple[ShutdownNotice, float] | None = None,
        http_port: int | None = None,
        metrics_url: str | None = None,
    ) -> None:
        """`shutdown`: the notice the models watch, and the seconds of grace it announces on SIGTERM.

        `http_port`, `metrics_url`: Triton's HTTP port, whose idle keep-alive connections are closed
        while it stops, and its metrics page, which says when nothing is in progress any more.
        """
        self.argv, self.env = list(argv), dict(env)
        self.shutdown = shutdown
        self.http_port, self.metrics_url = http_port, metrics_url
        self._idle_polls = 0
        self.companions = list(companions)
        self.ready_url, self.ready_timeout, self.exit_timeout = ready_url, ready_timeout, exit_timeout
        self.max_restarts, self.restart_window = max_restarts, restart_window
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.restarts: list[float] = []

    def start(self) -> None:
        """Start tritonserver and wait until it reports ready, then any companion not yet running.

        A SIGTERM meanwhile ends the wait without an error: tritonserver is then draining, not killed.
        """
        if self.shutdown is not None and not self.stopping:
            self.shutdown[0].withdraw()
        self.process = subprocess.Popen(self.argv, env=self.env)
        try:
            wait_until_ready(self.process, self.ready_url, self.ready_timeout)
            for companion in self.companions:
                if companion.process is None or companion.died():
                    companion.start(self.ready_timeout)
        except LaunchError:
            if self.stopping:
                return  # told to stop while starting (a companion exits on SIGTERM): supervise() drains
            self._terminate(self.exit_timeout)
            raise

    def stop(self, signum: int, _frame: object = None) -> None:
        """Signal handler: ask tritonserver to finish in-flight requests and exit."""
        self.stopping = True
        LOGGER.info("stopping tritonserver (%s); in-flight requests finish first", signal.Signals(signum).name)
        for companion in self.companions:
            companion.signal_stop()
        if self.shutdown is not None:
            notice, grace = self.shutdown
            notice.announce(grace)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def _terminate(self, grace: float) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < self.restart_window] + [now]
        return len(self.restarts) <= self.max_restarts

    def supervise(self, poll_seconds: float = 1.0) -> int:
        """Wait for the server to exit (returning its status), restarting it after a stub dies."""
        assert self.process is not None
        stubs = self._live_stubs()
        while True:
            try:
                return self.process.wait(timeout=poll_seconds)
            except subprocess.TimeoutExpired:
                pass
            if self.stopping:
                self._close_idle_http_connections()
                continue
            if not self._companions_alive():
                return 1
            children = child_states(self.process.pid)
            # A stub that vanished since the last look, or one that died before the first look
            # (tritonserver leaves it a zombie): either way its model can no longer answer.
            dead = {pid: model for pid, model in stubs.items() if children.get(pid, "Z") == "Z"}
            dead.update({pid: stubs.get(pid, "unknown model") for pid, state in children.items() if state == "Z"})
            if not dead:
                stubs = {pid: stubs.get(pid) or describe(pid) for pid in children}
                continue
            for pid, model in dead.items():
                LOGGER.error("Python backend stub %d (%s) died; restarting tritonserver", pid, model)
            # The dead model cannot unload, so a graceful stop would only wait out the exit timeout.
            self._terminate(grace=5.0)
            if self.stopping:
                return self.process.returncode
            if not self._may_restart():
                LOGGER.error("giving up after %d restarts within %.0f s", self.max_restarts, self.restart_window)
                return 1
            self.start()
            LOGGER.info("tritonserver ready again after restart %d", len(self.restarts))
            stubs = self._live_stubs()

    def _close_idle_http_connections(self) -> None:
        """While stopping, close the idle HTTP connections tritonserver would otherwise wait out.

        Only once nothing has been in progress for two polls in a row (a second apart).
        """
        if self.http_port is None or self.metrics_url is None or self.process is None:
            return
        self._idle_polls = self._idle_polls + 1 if server_is_idle(self.metrics_url) else 0
        if self._idle_polls < 2:
            return
        try:
            closed = close_idle_connections(self.process.pid, self.http_port)
        except OSError as error:
            LOGGER.warning(
                "cannot close idle HTTP connections (%s); tritonserver waits for their clients, up to its exit timeout",
                error,
            )
            self.http_port = None
            return
        if closed:
            LOGGER.info("closed %d idle HTTP connection(s) so tritonserver can stop", closed)

    def _companions_alive(self) -> bool:
        """Restart a companion that died; False once the restart budget is spent."""
        for companion in self.companions:
            if not companion.died():
                continue
            LOGGER.error("%s exited with status %s; restarting it", companion.name, companion.process.returncode)
            if not self._may_restart():
                LOGGER.error("giving up after %d restarts within %.0f s", self.max_restarts, self.restart_window)
                return False
            companion.start(self.ready_timeout)
        return True

    def finish(self, grace: float) -> None:
        """After tritonserver has exited: let the companions finish their in-flight requests."""
        for companion in self.companions:
            companion.signal_stop()
            companion.wait_or_kill(grace)

    def _live_stubs(self) -> dict[int, str]:
        assert self.process is not None
        return {pid: describe(pid) for pid, state in child_states(self.process.pid).items() if state != "Z"}

    def kill_if_running(self) -> None:
        """Last resort on the way out."""
        for process in [self.process, *(companion.process for companion in self.companions)]:
            if process is not None and process.poll() is None:
                process.kill()
