"""The servers the tests start: the real launcher on free loopback ports, always with the CPU configs.

The tests describe the CPU configs (two reranker instances, small micro-batches, the CPU default
deadline) and time requests against each other on them; on a GPU host the launcher would pick the
GPU configs instead. The GPU path is checked by scripts/gpu-check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmrerank.dev.background import BackgroundServer
from mmrerank.dev.background import start_server as start_launcher


def start_server(checkpoint: Path, log_path: Path, *extra: str, **options: Any) -> BackgroundServer:
    """`mmrerank.dev.background.start_server` with `--device cpu`."""
    return start_launcher(checkpoint, log_path, *extra, device="cpu", **options)
