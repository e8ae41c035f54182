"""The servers the tests start: the real launcher on free loopback ports, always with the CPU configs.

The tests describe the CPU configs (two reranker instances, small micro-batches, the CPU default
deadline) and time requests against each other on them; on a GPU host the launcher would pick the
GPU configs instead. The GPU path is checked by scripts/gpu-check. Tests that only build the
launcher's command put an empty `tritonserver` first on PATH instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mmrerank.dev.background import BackgroundServer
from mmrerank.dev.background import start_server as start_launcher
from mmrerank.launch.launcher import OPENMP_DEFAULTS


def start_server(checkpoint: Path, log_path: Path, *extra: str, **options: Any) -> BackgroundServer:
    """`mmrerank.dev.background.start_server` with `--device cpu`."""
    return start_launcher(checkpoint, log_path, *extra, device="cpu", **options)


def fake_tritonserver(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty `tritonserver` in `directory`, first on PATH, and no inherited OpenMP settings."""
    fake = directory / "tritonserver"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}:/usr/bin:/bin")
    for name in OPENMP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    return fake
