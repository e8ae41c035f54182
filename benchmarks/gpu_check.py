"""Check and measure the served reranker on a GPU machine without internet: `scripts/gpu-check`.

For every attention kernel that runs on the device: parity (the device's dtype against the fp32
CPU reference, every exit, pairs around the sliding window's edges and one long pair), then a real
tritonserver started through the launcher with that kernel, measured through it on three
workloads (10 short documents, mixed lengths, ~1,500-token documents: p50 at concurrency 1 and
requests/s under load) and on one long document beside many short ones (time; peak device memory
in-process through the serving step). With the kernel `auto` picks, also: throughput by
concurrency, requests/s by exit layer, one long pair, and the achieved FLOP/s. Writes
reports/gpu-check.json and reports/gpu-check.md. `--device cpu --quick` runs the same steps end
to end on the tiny preset, which the test suite does.
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
from mmrerank.dev.background import start_server
from mmrerank.layout import CheckpointLayout, EncoderConfig
from mmrerank.model import MatryoshkaReranker
from mmrerank.model.kernels import KERNELS, choose_kernel
from mmrerank.serving.contract import RequestOptions
from mmrerank.serving.reranker_step import RerankerStep, ScoreRequest
from mmrerank_client import RerankClient

# Dense bf16 tensor-core peaks (TFLOP/s) by a fragment of the device name; the fraction is left
# out for a device not listed.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "MI300X": 1307.0, "MI325X": 1307.0}


@dataclass(frozen=True)
class Plan:
    """How much of each measurement to run: full on a GPU, small in quick mode."""

    preset: str
    parity_pairs: int  # random pairs of 16-400 tokens, beside the window-edge lengths and one long pair
    parity_long_tokens: int
    latency_requests: int
    seconds_per_point: float
    concurrencies: tuple[int, ...]
    workload_concurrency: int
    long_pair_tokens: int
    long_document_tokens: int
    mixed_tokens: tuple[int, int]
    beside_long: tuple[int, int]  # one document of this many tokens beside this many short ones
    max_batch_tokens: int  # the serving step's budget for the in-process run of that request


FULL = Plan("base", 32, 5000, 100, 5.0, (1, 8, 32), 16, 32768, 1500, (50, 4000), (32768, 999), 65536)
QUICK = Plan("tiny", 8, 1000, 10, 1.0, (1, 4), 4, 2048, 300, (50, 600), (2048, 199), 8192)
# Lengths around the 128-token sliding window (half window 64) and its block edges.
WINDOW_EDGE_LENGTHS = (63, 64, 65, 127, 128, 129)


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


@dataclass(frozen=True)
class ParityPairs:
    """Token rows for parity, packed end to end, and their fp32 CPU logits at every exit."""

    ids: np.ndarray
    lengths: list[int]
    expected: dict[tuple[int, int], np.ndarray]  # (layer, dim) -> logits


def parity_pairs(layout: CheckpointLayout, random_pairs: int, long_tokens: int) -> ParityPairs:
    """Window-edge lengths, `random_pairs` pairs of 16-400 tokens and one long pair, scored by fp32 on the CPU."""
    reference = MatryoshkaReranker.from_pretrained(layout, device="cpu", precision="fp32")
    rng = np.random.default_rng(0)
    vocab = min(layout.encoder_config.vocab_size, 8000)
    lengths = [*WINDOW_EDGE_LENGTHS, *(int(n) for n in rng.integers(16, 400, size=random_pairs)), long_tokens]
    rows = [np.concatenate([[layout.encoder_config.bos_token_id], rng.integers(5, vocab, size=n - 1)]) for n in lengths]
    ids = np.concatenate(rows)
    return ParityPairs(ids, lengths, logits_at_every_exit(reference, ids, lengths))


def logits_at_every_exit(
    reranker: MatryoshkaReranker, ids: np.ndarray, lengths: list[int]
) -> dict[tuple[int, int], np.ndarray]:
    """Logits of every row at every (layer, dim), one encoder pass per exit layer."""
    return {
        (layer, dim): logits
        for layer in reranker.spec.layer_indices
        for dim, logits in reranker.logits_at_every_width(ids, lengths, layer).items()
    }


def parity(pairs: ParityPairs, served: MatryoshkaReranker) -> dict[str, Any]:
    """Scores of `served` (its device, dtype and kernel) against fp32 on the CPU, every exit."""
    actual = logits_at_every_exit(served, pairs.ids, pairs.lengths)
    largest, agree, groups = 0.0, 0, 0
    for exit_, expected in pairs.expected.items():
        largest = max(largest, float(np.abs(sigmoid(actual[exit_]) - sigmoid(expected)).max()))
        for start in range(0, len(expected), 8):  # groups of 8 documents, as if 8 per query
            groups += 1
            agree += int(np.argmax(actual[exit_][start : start + 8]) == np.argmax(expected[start : start + 8]))
    return {
        "device": served.device.type,
        "dtype": str(served.dtype).removeprefix("torch."),
        "kernel": served.kernel.name,
        "pairs": len(pairs.lengths),
        "longest": max(pairs.lengths),
        "exits": len(pairs.expected),
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


@dataclass(frozen=True)
class Workload:
    """One request sent again and again: a query and its documents."""

    name: str
    query: str
    documents: list[str]


def workloads(plan: Plan) -> list[Workload]:
    """The requests every kernel is measured on: short documents, mixed lengths, ~1,500-token documents."""
    rng = random.Random(0)
    low, high = plan.mixed_tokens
    return [
        Workload(
            "10 short documents",
            "where does the river meet the sea?",
            [documents_of_tokens(rng, 15) for _ in range(10)],
        ),
        Workload(
            f"10 mixed documents ({low}-{high} tokens)",
            "river delta",
            [documents_of_tokens(rng, rng.randint(low, high)) for _ in range(10)],
        ),  # fmt: skip
        Workload(
            f"4 documents of ~{plan.long_document_tokens} tokens",
            "river delta",
            [documents_of_tokens(rng, plan.long_document_tokens) for _ in range(4)],
        ),  # fmt: skip
    ]


def beside_long_documents(plan: Plan) -> list[str]:
    """One document of about `plan.beside_long[0]` tokens (cut there by max_length) and many short ones."""
    rng = random.Random(1)
    long_tokens, short_count = plan.beside_long
    return [documents_of_tokens(rng, int(long_tokens * 1.2))] + [
        documents_of_tokens(rng, 15) for _ in range(short_count)
    ]


def kernel_measurements(url: str, plan: Plan) -> dict[str, Any]:
    """Per workload: p50 at concurrency 1 and requests/s under load; then the long-beside-short request."""
    results: dict[str, Any] = {"workloads": []}
    with RerankClient(url, timeout=600) as client:
        for workload in workloads(plan):
            progress(f"  {workload.name}: latency, then concurrency {plan.workload_concurrency}")
            times = timed_calls(lambda w=workload: client.score(w.query, w.documents), plan.latency_requests)
            tokens = sum(result.num_tokens for result in client.rerank(workload.query, workload.documents))
            per_second = rate(url, (workload.query, workload.documents, {}), plan.workload_concurrency,
                              plan.seconds_per_point)  # fmt: skip
            results["workloads"].append({
                "workload": workload.name, "tokens_per_request": int(tokens), "p50_ms": percentiles(times)["p50_ms"],
                "requests_per_s": round(per_second, 2), "pairs_per_s": round(per_second * len(workload.documents), 1),
            })  # fmt: skip
        documents = beside_long_documents(plan)
        long_tokens = plan.beside_long[0]
        progress(f"  one {long_tokens}-token document beside {len(documents) - 1} short ones")
        call = lambda: client.score("river", documents, max_length=long_tokens)  # noqa: E731
        results["beside_long_ms"] = round(min(timed_calls(call, 2)), 1)
    return results


def in_process_beside_long(reranker: MatryoshkaReranker, layout: CheckpointLayout, plan: Plan) -> dict[str, Any]:
    """The long-beside-short request through the serving step's planner in-process: time and peak device memory."""
    from mmrerank.serving.pair_tokenizer import PairTokenizer

    tokenizer = PairTokenizer.from_file(layout.directory / "tokenizer.json")
    long_tokens = plan.beside_long[0]
    rows = tokenizer.encode("river", beside_long_documents(plan), long_tokens).rows()
    step = RerankerStep(reranker, plan.max_batch_tokens)
    options = RequestOptions(layer=layout.spec.default_layer, dim=layout.spec.default_dim, normalize=False,
                            max_length=long_tokens, truncate=True)  # fmt: skip
    cuda = reranker.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(reranker.device)
    times = timed_calls(lambda: step.score([ScoreRequest(rows, options)]), 1)
    peak = torch.cuda.max_memory_allocated(reranker.device) / 2**30 if cuda else None
    return {
        "documents": len(rows),
        "tokens": int(sum(len(row) for row in rows)),
        "max_batch_tokens": plan.max_batch_tokens,
        "best_ms": round(min(times), 1),
        "peak_device_memory_gb": peak and round(peak, 3),
    }


def auto_measurements(url: str, plan: Plan) -> dict[str, Any]:
    """What is measured for the kernel `auto` picks only: throughput by concurrency, exit grid, one long pair."""
    rng = random.Random(2)
    short = ("where does the river meet the sea?", [documents_of_tokens(rng, 15) for _ in range(10)], {})
    results: dict[str, Any] = {"throughput": []}
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
    with RerankClient(url, timeout=600) as client:
        layers = [int(layer) for layer in client.describe().layer_indices]
    for layer in layers:
        progress(f"exit grid: layer {layer}, 10 documents of ~256 tokens, concurrency 8")
        request = ("river", grid_documents, {"layer": layer})
        results["exit_grid"].append(
            {"layer": layer, "requests_per_s": round(rate(url, request, 8, plan.seconds_per_point), 2)}
        )
    progress(f"one {plan.long_pair_tokens}-token pair")
    results["long_pair"] = long_pair(url, rng, plan.long_pair_tokens)
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
    env, kernels, served = report["environment"], report["kernels"], report["served"]
    lines = [
        f"# gpu-check: {env['device_name']} ({env['device']}, torch {env['torch']}, preset {report['preset']})",
        "",
        f"`auto` picks **{report['auto_kernel']}** here; kernels compared: {', '.join(kernels)}.",
        "",
        "## Parity (against fp32 on the CPU, every exit)",
        "",
    ]
    parities = [kernel["parity"] for kernel in kernels.values()]
    lines += [markdown_table(list(parities[0]), [list(row.values()) for row in parities]), ""]
    lines += ["## Kernels through the server", ""]
    header = ["workload", "tokens/request", *(f"{name}: p50 ms / req/s" for name in kernels), "fastest"]
    rows = []
    for index, workload in enumerate(next(iter(kernels.values()))["served"]["workloads"]):
        cells = [f"{k['served']['workloads'][index]['p50_ms']} / {k['served']['workloads'][index]['requests_per_s']}"
                 for k in kernels.values()]  # fmt: skip
        rows.append(
            [workload["workload"], workload["tokens_per_request"], *cells, report["fastest"][workload["workload"]]]
        )
    long_tokens, short_count = report["beside_long"]
    beside = [kernel["served"]["beside_long_ms"] for kernel in kernels.values()]
    label = f"1 document of {long_tokens} tokens + {short_count} short (best ms)"
    rows.append([label, "", *beside, report["fastest"]["beside_long"]])
    lines += [markdown_table(header, rows), ""]
    lines += ["In-process through the serving step (peak device memory; GPU only):", ""]
    in_process = [{"kernel": name, **kernel["beside_long_in_process"]} for name, kernel in kernels.items()]
    lines += [markdown_table(list(in_process[0]), [list(row.values()) for row in in_process]), ""]
    lines += [f"## With `{report['auto_kernel']}`: throughput (10 short documents per request)", ""]
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


def achieved_flops(config: EncoderConfig, layers: int, workload: dict[str, Any], documents: int) -> dict[str, Any]:
    """Encoder FLOP/s of a measured workload, from its tokens per pair and pairs per second."""
    tokens = workload["tokens_per_request"] // documents
    flops = encoder_flops_per_pair(config, tokens, layers) * workload["pairs_per_s"]
    return {
        "tokens_per_pair": tokens,
        "pairs_per_s": workload["pairs_per_s"],
        "achieved_tflops": round(flops / 1e12, 3),
    }


def run(device: str, quick: bool, out_dir: Path) -> dict[str, Any]:
    """Every step; returns the report that was written."""
    began = time.perf_counter()
    plan = QUICK if quick else FULL
    checkpoint = demo_checkpoint(plan.preset)
    layout = CheckpointLayout.open(checkpoint)
    torch_device = torch.device(device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    auto = choose_kernel("auto", torch_device, dtype).name
    names = [auto, *(name for name, kernel in KERNELS.items() if name != auto and kernel.runs_on(torch_device, dtype))]
    report: dict[str, Any] = {"environment": environment(device), "preset": plan.preset, "quick": quick,
                              "auto_kernel": auto, "beside_long": list(plan.beside_long), "kernels": {}}  # fmt: skip
    progress(
        f"fp32 CPU reference for parity: {plan.parity_pairs + 7} pairs (longest {plan.parity_long_tokens}) x every exit"
    )
    pairs = parity_pairs(layout, plan.parity_pairs, plan.parity_long_tokens)
    for name in names:
        progress(f"kernel {name}: parity on {device}, then the long-beside-short request in-process")
        in_process = MatryoshkaReranker.from_pretrained(layout, device=device, attention=name)
        measured: dict[str, Any] = {"parity": parity(pairs, in_process)}
        measured["beside_long_in_process"] = in_process_beside_long(in_process, layout, plan)
        if name == auto:
            progress(f"one {plan.long_pair_tokens}-token pair in-process, for its peak device memory")
            report["library_long_pair"] = library_long_pair(in_process, plan.long_pair_tokens)
        del in_process
        if device == "cuda":
            torch.cuda.empty_cache()
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
            progress(f"kernel {name}: starting tritonserver through the launcher")
            server = start_server(
                checkpoint,
                Path(scratch) / "tritonserver.log",
                "--device", "gpu" if device == "cuda" else "cpu", "--attention", name,
                ready_timeout=600,
                launcher=(sys.executable, "-m", "mmrerank.launch.launcher"),
                api_front=False,
            )  # fmt: skip
            try:
                url = f"grpc://{server.grpc_url}"
                measured["served"] = kernel_measurements(url, plan)
                if name == auto:
                    report["served"] = auto_measurements(url, plan)
            finally:
                server.stop()
        report["kernels"][name] = measured
    report["fastest"] = fastest_kernels(report["kernels"])
    heavy = report["kernels"][auto]["served"]["workloads"][-1]
    mfu = achieved_flops(layout.encoder_config, layout.spec.default_layer, heavy, 4)
    peak = peak_tflops(report["environment"]["device_name"]) if device == "cuda" else None
    mfu["peak_tflops"] = peak
    mfu["fraction_of_peak"] = round(mfu["achieved_tflops"] / peak, 4) if peak else None
    report["served"]["mfu"] = mfu
    report["seconds"] = round(time.perf_counter() - began, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "gpu-check.md").write_text(report_markdown(report))
    return report


def fastest_kernels(kernels: dict[str, Any]) -> dict[str, str]:
    """For each workload the kernel with the most requests/s, and for the long-beside-short request the quickest."""
    names = list(kernels)
    fastest = {}
    for index, workload in enumerate(kernels[names[0]]["served"]["workloads"]):
        fastest[workload["workload"]] = max(
            names, key=lambda n: kernels[n]["served"]["workloads"][index]["requests_per_s"]
        )
    fastest["beside_long"] = min(names, key=lambda n: kernels[n]["served"]["beside_long_ms"])
    return fastest


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
