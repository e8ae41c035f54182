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
    assert {"environment", "auto_kernel", "kernels", "fastest", "served", "library_long_pair", "seconds"} <= set(report)
    assert report["auto_kernel"] == "padded" and list(report["kernels"]) == ["padded", "packed-sdpa"]
    for name, kernel in report["kernels"].items():
        parity = kernel["parity"]
        assert parity["kernel"] == name and parity["exits"] == 20 and parity["longest"] == 1000
        assert parity["max_abs_score_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
        workloads = kernel["served"]["workloads"]
        assert [row["workload"].split(" ")[1] for row in workloads] == ["short", "mixed", "documents"]
        for row, documents in zip(workloads, (10, 10, 4), strict=True):
            assert 0 < row["p50_ms"] and row["requests_per_s"] > 0 and row["tokens_per_request"] > documents
            assert row["pairs_per_s"] == pytest.approx(documents * row["requests_per_s"], abs=0.1)
        assert kernel["served"]["beside_long_ms"] > 0
        in_process = kernel["beside_long_in_process"]
        assert in_process["documents"] == 200 and in_process["peak_device_memory_gb"] is None
    assert set(report["fastest"]) == {row["workload"] for row in workloads} | {"beside_long"}
    assert set(report["fastest"].values()) <= set(report["kernels"])
    served = report["served"]
    assert [row["concurrency"] for row in served["throughput"]] == [1, 4]
    grid = {row["layer"]: row["requests_per_s"] for row in served["exit_grid"]}
    assert list(grid) == [1, 2, 4, 6] and grid[1] > grid[6] > 0
    assert served["long_pair"]["tokens"] == 2048
    assert served["mfu"]["achieved_tflops"] > 0 and served["mfu"]["fraction_of_peak"] is None
    markdown = (tmp_path / "gpu-check.md").read_text()
    assert markdown.startswith("# gpu-check:") and "`auto` picks **padded** here" in markdown


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU; the CPU dry run above covers the code"
)
def test_bf16_on_the_gpu_ranks_like_the_fp32_reference(tiny_checkpoint):
    from benchmarks.gpu_check import parity, parity_pairs
    from mmrerank.layout import CheckpointLayout
    from mmrerank.model import MatryoshkaReranker

    layout = CheckpointLayout.open(tiny_checkpoint)
    result = parity(parity_pairs(layout, 32, 5000), MatryoshkaReranker.from_pretrained(layout, device="cuda"))
    assert result["dtype"] == "bfloat16"
    assert result["max_abs_score_diff"] < 0.05 and result["top1_agreement"] >= 0.9
