"""Check and measure the served reranker on a GPU machine without internet: `scripts/gpu-check`.

Parity (the device's dtype against the fp32 CPU reference, every exit), then a real tritonserver
started through the launcher on that device, measured through it: latency, throughput by
concurrency, requests/s by exit layer, one long pair, and the achieved FLOP/s on ~1,500-token
documents. Writes reports/gpu-check.json and reports/gpu-check.md. `--device cpu --quick` runs
the same steps end to end on the tiny preset, which the test suite does.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    REPO_ROOT,
    demo_checkpoint,
    documents_of_tokens,
    markdown_table,
    progress,
    requests_per_second,
)
from mmrerank.dev.background import BackgroundServer, start_server
from mmrerank.layout import CheckpointLayout, EncoderConfig
from mmrerank.model import MatryoshkaReranker
from mmrerank_client import RerankClient

# Dense bf16 tensor-core peaks (TFLOP/s) by a fragment of the device name; the fraction is left
# out for a device not listed.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "MI300X": 1307.0, "MI325X": 1307.0}


@dataclass(frozen=True)
class Plan:
    """How much of each measurement to run: full on a GPU, small in quick mode."""

    preset: str
    parity_pairs: int
    latency_requests: int
    seconds_per_point: float
    concurrencies: tuple[int, ...]
    long_pair_tokens: int
    long_document_tokens: int


FULL = Plan("base", 32, 200, 8.0, (1, 8, 32), 32768, 1500)
QUICK = Plan("tiny", 8, 10, 1.0, (1, 4), 2048, 300)


def encoder_flops_per_pair(config: EncoderConfig, tokens: int, layers: int) -> float:
    """Forward FLOPs of `layers` encoder layers over one pair of `tokens` tokens (matmuls and attention)."""
    h, i = config.hidden_size, config.intermediate_size
    weights = 2 * tokens * (4 * h * h + 3 * h * i)  # Wqkv, Wo, Wi (gated, 2i), Wo (i)
    total = 0.0
    for index in range(layers):
        reach = tokens if config.is_global_layer(index) else min(tokens, config.local_window + 1)
        total += weights + 4 * tokens * reach * h  # scores and weighted sum
    return total


def peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak, when it is one this script knows."""
    return next((peak for fragment, peak in PEAK_BF16_TFLOPS.items() if fragment in device_name), None)


def parity(layout: CheckpointLayout, served: MatryoshkaReranker, pairs: int) -> dict[str, Any]:
    """Scores of `served` (its device and default dtype) against fp32 on the CPU, every exit, mixed lengths."""
    reference = MatryoshkaReranker.from_pretrained(layout, device="cpu", dtype=torch.float32)
    rng = np.random.default_rng(0)
    vocab = min(layout.encoder_config.vocab_size, 8000)
    lengths = [int(n) for n in rng.integers(16, 400, size=pairs)]
    rows = [np.concatenate([[layout.encoder_config.bos_token_id], rng.integers(5, vocab, size=n - 1)]) for n in lengths]
    ids = np.concatenate(rows)
    largest, agree, groups = 0.0, 0, 0
    for layer in layout.spec.layer_indices:
        for dim in layout.spec.dim_indices:
            expected = reference.logits(ids, lengths, layer, [dim] * pairs)
            actual = served.logits(ids, lengths, layer, [dim] * pairs)
            largest = max(largest, float(np.abs(sigmoid(actual) - sigmoid(expected)).max()))
            for start in range(0, pairs, 8):  # groups of 8 documents, as if 8 per query
                groups += 1
                agree += int(np.argmax(actual[start : start + 8]) == np.argmax(expected[start : start + 8]))
    return {
        "device": served.device.type,
        "dtype": str(served.dtype).removeprefix("torch."),
        "kernel": served.kernel.name,
        "pairs": pairs,
        "exits": len(layout.spec.layer_indices) * len(layout.spec.dim_indices),
        "max_abs_score_diff": round(largest, 6),
        "top1_agreement": round(agree / groups, 4),
    }


def sigmoid(values: np.ndarray) -> np.ndarray:
    """The served score of a logit."""
    return 1.0 / (1.0 + np.exp(-values.astype(np.float64)))


def timed_calls(call: Callable[[], object], count: int) -> list[float]:
    """Wall time in ms of `count` sequential calls, after one warm-up call."""
    call()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def percentiles(times: list[float]) -> dict[str, float]:
    """p50 and p95 in ms."""
    ordered = sorted(times)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "requests": len(ordered),
    }


def rate(url: str, request: tuple[str, list[str], dict[str, int]], concurrency: int, seconds: float) -> float:
    """Requests per second with `concurrency` clients sending back to back for `seconds`."""
    query, documents, options = request

    def client_call() -> Callable[[], None]:
        client = RerankClient(url, timeout=600)
        return lambda: client.score(query, documents, **options) and None

    return requests_per_second(client_call, concurrency, seconds)


def served_measurements(server: BackgroundServer, layout: CheckpointLayout, plan: Plan) -> dict[str, Any]:
    """Everything measured through the running server, over gRPC."""
    url = f"grpc://{server.grpc_url}"
    rng = random.Random(0)
    spec, config = layout.spec, layout.encoder_config
    short = ("where does the river meet the sea?", [documents_of_tokens(rng, 15) for _ in range(10)], {})
    long_document = ("river delta", [documents_of_tokens(rng, plan.long_document_tokens)], {})
    results: dict[str, Any] = {}
    with RerankClient(url, timeout=600) as client:
        progress("latency: 10 short documents, then one long document, concurrency 1")
        results["latency"] = {
            "short_10_docs": percentiles(timed_calls(lambda: client.score(short[0], short[1]), plan.latency_requests)),
            "one_long_doc": percentiles(
                timed_calls(lambda: client.score(*long_document[:2]), max(5, plan.latency_requests // 4))
            ),
            "long_doc_tokens": int(client.rerank(*long_document[:2]).results[0].num_tokens),
        }
    results["throughput"] = []
    for concurrency in plan.concurrencies:
        progress(f"throughput: 10 short documents, concurrency {concurrency}")
        requests_per_second = rate(url, short, concurrency, plan.seconds_per_point)
        results["throughput"].append(
            {
                "concurrency": concurrency,
                "requests_per_s": round(requests_per_second, 2),
                "pairs_per_s": round(10 * requests_per_second, 1),
            }
        )
    grid_documents = [documents_of_tokens(rng, 256) for _ in range(10)]
    results["exit_grid"] = []
    for layer in spec.layer_indices:
        progress(f"exit grid: layer {layer}, 10 documents of ~256 tokens, concurrency 8")
        request = ("river", grid_documents, {"layer": layer})
        results["exit_grid"].append(
            {"layer": layer, "requests_per_s": round(rate(url, request, 8, plan.seconds_per_point), 2)}
        )
    progress(f"one {plan.long_pair_tokens}-token pair")
    results["long_pair"] = long_pair(url, rng, plan.long_pair_tokens)
    progress("achieved FLOP/s on ~1,500-token documents, concurrency 8")
    requests_per_second = rate(url, long_document, 8, plan.seconds_per_point)
    tokens = results["latency"]["long_doc_tokens"]
    flops = encoder_flops_per_pair(config, tokens, spec.default_layer) * requests_per_second
    results["mfu"] = {"tokens_per_pair": tokens, "requests_per_s": round(requests_per_second, 2)}
    results["mfu"]["achieved_tflops"] = round(flops / 1e12, 3)
    return results


def long_pair(url: str, rng: random.Random, tokens: int) -> dict[str, Any]:
    """Served time of one pair cut to `tokens` tokens (best of two)."""
    document = documents_of_tokens(rng, int(tokens * 1.2))
    with RerankClient(url, timeout=600) as client:
        times = timed_calls(lambda: client.score("river", [document], max_length=tokens), 2)
        scored = client.rerank("river", [document], max_length=tokens).results[0].num_tokens
    return {"tokens": int(scored), "best_ms": round(min(times), 1)}


def library_long_pair(reranker: MatryoshkaReranker, tokens: int) -> dict[str, Any]:
    """One `tokens`-token pair through the library on its device: time and peak device memory (GPU only)."""
    ids = np.random.default_rng(1).integers(5, min(reranker.config.vocab_size, 8000), size=tokens)
    ids[0] = reranker.config.bos_token_id
    layer, dim = reranker.spec.default_layer, reranker.spec.default_dim
    cuda = reranker.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(reranker.device)
    times = timed_calls(lambda: reranker.logits(ids, [tokens], layer, [dim]), 2)
    peak = torch.cuda.max_memory_allocated(reranker.device) / 2**30 if cuda else None
    return {"tokens": tokens, "best_ms": round(min(times), 1), "peak_device_memory_gb": peak and round(peak, 3)}


def environment(device: str) -> dict[str, Any]:
    """What ran the check: device, PyTorch, Python."""
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    return {"device": device, "device_name": name, "torch": torch.__version__, "python": platform.python_version()}


def report_markdown(report: dict[str, Any]) -> str:
    """The JSON report as Markdown tables."""
    env, parity_result, served = report["environment"], report["parity"], report["served"]
    lines = [
        f"# gpu-check: {env['device_name']} ({env['device']}, torch {env['torch']}, preset {report['preset']})",
        "",
    ]
    lines += ["## Parity", "", markdown_table(list(parity_result), [list(parity_result.values())]), ""]
    latency = served["latency"]
    lines += ["## Latency (concurrency 1)", ""]
    lines.append(
        markdown_table(
            ["request", "p50 ms", "p95 ms", "requests"],
            [
                ["1 query + 10 short documents", *latency["short_10_docs"].values()],
                [f"1 query + 1 document of {latency['long_doc_tokens']} tokens", *latency["one_long_doc"].values()],
            ],
        )  # fmt: skip
    )
    lines += ["", "## Throughput (10 short documents per request)", ""]
    lines.append(
        markdown_table(["concurrency", "requests/s", "pairs/s"], [list(r.values()) for r in served["throughput"]])
    )
    lines += ["", "## Requests/s by exit layer (10 documents of ~256 tokens, concurrency 8)", ""]
    lines.append(markdown_table(["layer", "requests/s"], [list(r.values()) for r in served["exit_grid"]]))
    lines += ["", "## Long pair and achieved FLOP/s", ""]
    lines.append(markdown_table(list(served["long_pair"]), [list(served["long_pair"].values())]))
    lines += ["", "In-process on the same device (peak memory of the encoder alone):", ""]
    lines.append(markdown_table(list(report["library_long_pair"]), [list(report["library_long_pair"].values())]))
    lines.append("")
    lines.append(markdown_table(list(served["mfu"]), [list(served["mfu"].values())]))
    lines += ["", f"Total time: {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def run(device: str, quick: bool, out_dir: Path) -> dict[str, Any]:
    """Every step; returns the report that was written."""
    began = time.perf_counter()
    plan = QUICK if quick else FULL
    checkpoint = demo_checkpoint(plan.preset)
    layout = CheckpointLayout.open(checkpoint)
    progress(f"parity on {device} against fp32 on the CPU, {plan.parity_pairs} pairs x every exit")
    report: dict[str, Any] = {"environment": environment(device), "preset": plan.preset, "quick": quick}
    in_process = MatryoshkaReranker.from_pretrained(layout, device=device)
    report["parity"] = parity(layout, in_process, plan.parity_pairs)
    progress(f"one {plan.long_pair_tokens}-token pair in-process, for its peak device memory")
    report["library_long_pair"] = library_long_pair(in_process, plan.long_pair_tokens)
    del in_process
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        progress("starting tritonserver through the launcher")
        server = start_server(
            checkpoint,
            Path(scratch) / "tritonserver.log",
            "--device", "gpu" if device == "cuda" else "cpu",
            ready_timeout=600,
            launcher=(sys.executable, "-m", "mmrerank.launch.launcher"),
        )  # fmt: skip
        try:
            report["served"] = served_measurements(server, layout, plan)
        finally:
            server.stop()
    peak = peak_tflops(report["environment"]["device_name"]) if device == "cuda" else None
    achieved = report["served"]["mfu"]["achieved_tflops"]
    report["served"]["mfu"]["peak_tflops"] = peak
    report["served"]["mfu"]["fraction_of_peak"] = round(achieved / peak, 4) if peak else None
    report["seconds"] = round(time.perf_counter() - began, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "gpu-check.md").write_text(report_markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: `scripts/gpu-check [--device cuda|cpu] [--quick] [--out reports]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="the tiny preset and short runs (any machine)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("PyTorch sees no GPU here; use --device cpu --quick for a dry run")
    report = run(args.device, args.quick, args.out)
    print(report_markdown(report))
    progress(f"wrote {args.out / 'gpu-check.json'} and {args.out / 'gpu-check.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
