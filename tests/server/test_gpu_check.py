"""scripts/gpu-check end to end in its CPU dry-run mode (the GPU run is the same code on another device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mmrerank.dev.background import REPO_ROOT


@pytest.mark.slow
def test_the_cpu_dry_run_writes_every_measurement(tmp_path):
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "gpu-check"), "--device", "cpu", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert {"environment", "parity", "library_long_pair", "served", "seconds"} <= set(report)
    assert set(report["served"]) == {"latency", "throughput", "exit_grid", "long_pair", "mfu"}
    parity = report["parity"]
    assert parity["exits"] == 20 and parity["max_abs_score_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
    latency = report["served"]["latency"]
    assert 0 < latency["short_10_docs"]["p50_ms"] <= latency["short_10_docs"]["p95_ms"]
    assert [row["concurrency"] for row in report["served"]["throughput"]] == [1, 4]
    assert all(row["requests_per_s"] > 0 and row["pairs_per_s"] == pytest.approx(10 * row["requests_per_s"], abs=0.1)
               for row in report["served"]["throughput"])  # fmt: skip
    grid = {row["layer"]: row["requests_per_s"] for row in report["served"]["exit_grid"]}
    assert list(grid) == [1, 2, 4, 6] and grid[1] > grid[6] > 0
    assert report["served"]["long_pair"]["tokens"] == 2048
    assert report["served"]["mfu"]["achieved_tflops"] > 0 and report["served"]["mfu"]["fraction_of_peak"] is None
    assert (tmp_path / "gpu-check.md").read_text().startswith("# gpu-check:")


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU; the CPU dry run above covers the code"
)
def test_bf16_on_the_gpu_ranks_like_the_fp32_reference(tiny_checkpoint):
    from benchmarks.gpu_check import parity
    from mmrerank.layout import CheckpointLayout
    from mmrerank.model import MatryoshkaReranker

    layout = CheckpointLayout.open(tiny_checkpoint)
    result = parity(layout, MatryoshkaReranker.from_pretrained(layout, device="cuda"), pairs=32)
    assert result["dtype"] == "bfloat16"
    assert result["max_abs_score_diff"] < 0.05 and result["top1_agreement"] >= 0.9
