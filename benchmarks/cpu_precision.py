"""CPU precisions side by side through the server, against what a CPU user would run instead: ONNX Runtime.

For each workload (10 short documents, 10 mixed, 4 of about 1,500 tokens), exit (the deepest and
the shallowest layer) and concurrency (1 and 4): requests per second and median latency of the
server at each precision (`scripts/serve --precision`), and of ONNX Runtime fp32 and int8
(`quantize_dynamic`) on the same weights and the same token ids. The ONNX models are exported the
way a user would: the checkpoint's encoder through transformers' ModernBERT (truncated to the exit's
layers) and `torch.onnx`, the head on the first token; each request is padded to its longest pair,
as those tools do. ONNX Runtime is a benchmark-only extra (`pip install 'mmrerank[onnx-bench]'`).

    scripts/bench-cpu-precision [--preset base] [--precisions fp32,int8] [--seconds 12] [--onnx/--no-onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import demo_checkpoint, documents_of_tokens, markdown_table, progress
from mmrerank.dev.background import start_server
from mmrerank.layout import CheckpointLayout
from mmrerank.serving.pair_tokenizer import PairTokenizer
from mmrerank_client import RerankClient

CONCURRENCIES = (1, 4)


@dataclass(frozen=True)
class Workload:
    """Requests of one query each and their documents, all of the same shape."""

    name: str
    requests: list[tuple[str, list[str]]]


def workloads(count: int, seed: int = 0) -> list[Workload]:
    """10 short documents (15-40 tokens), 10 mixed (15-600), 4 of about 1,500 tokens; `count` requests each."""
    rng = random.Random(seed)

    def requests(lengths: Callable[[], list[int]]) -> list[tuple[str, list[str]]]:
        return [(documents_of_tokens(rng, 8), [documents_of_tokens(rng, n) for n in lengths()]) for _ in range(count)]

    return [
        Workload("10 short", requests(lambda: [rng.randint(15, 40) for _ in range(10)])),
        Workload("10 mixed", requests(lambda: [rng.choice((20, 40, 80, 150, 300, 600)) for _ in range(10)])),
        Workload("4 × 1,500", requests(lambda: [rng.randint(1400, 1600) for _ in range(4)])),
    ]


def timed(call: Callable[[tuple[str, list[str]]], object], requests: Sequence, concurrency: int, seconds: float):
    """Requests/s and median latency (ms), sending `requests` round and round for about `seconds` after a warm-up."""
    call(requests[0])
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    def worker(offset: int) -> None:
        index = offset
        while time.perf_counter() < stop_at or (index == offset and not latencies):
            started = time.perf_counter()
            call(requests[index % len(requests)])
            latencies.append(time.perf_counter() - started)
            index += concurrency

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), statistics.median(latencies) * 1000


class OnnxScorer:
    """A checkpoint's encoder, truncated to `layer`, exported to ONNX and run by ONNX Runtime on padded batches."""

    def __init__(self, checkpoint: Path, layer: int, quantized: bool, scratch: Path) -> None:
        import onnxruntime

        path = export_onnx(checkpoint, layer, scratch)
        if quantized:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8 = scratch / f"encoder-{layer}-int8.onnx"
            if not int8.exists():
                quantize_dynamic(str(path), str(int8), weight_type=QuantType.QInt8)
            path = int8
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = PairTokenizer.from_file(checkpoint / "tokenizer.json")
        layout = CheckpointLayout.open(checkpoint)
        self.max_length = layout.encoder_config.max_position_embeddings

    def score(self, request: tuple[str, list[str]]) -> np.ndarray:
        """Tokenize as the server does, pad to the longest pair, run the graph, take the CLS row."""
        query, documents = request
        encoded = self.tokenizer.encode(query, documents, self.max_length)
        longest = max(encoded.lengths)
        ids = np.zeros((len(documents), longest), dtype=np.int64)
        mask = np.zeros_like(ids)
        start = 0
        for row, length in enumerate(encoded.lengths):
            ids[row, :length] = encoded.input_ids[start : start + length]
            mask[row, :length] = 1
            start += length
        (cls,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
        return cls


def export_onnx(checkpoint: Path, layer: int, scratch: Path) -> Path:
    """The checkpoint's first `layer` layers as transformers' ModernBERT, exported to ONNX once; output: CLS rows."""
    import torch
    from transformers import ModernBertConfig, ModernBertModel

    path = scratch / f"encoder-{layer}.onnx"
    if path.exists():
        return path
    config = ModernBertConfig.from_pretrained(checkpoint)
    config.num_hidden_layers = layer
    config._attn_implementation = "sdpa"
    model = ModernBertModel.from_pretrained(checkpoint, config=config, dtype=torch.float32).eval()

    class Cls(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]

    example = (torch.ones(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long))
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}}
    torch.onnx.export(Cls(), example, str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["cls"], dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip
    return path


def served_rows(checkpoint: Path, precision: str, jobs, seconds: float, logs: Path) -> list[list[object]]:
    """Every (workload, layer, concurrency) through a server started at `precision`."""
    server = start_server(checkpoint, logs / f"serve-{precision}.log", "--precision", precision, api_front=False)
    rows = []
    try:
        with RerankClient(f"grpc://{server.grpc_url}", timeout=600) as client:
            for workload, layer, concurrency in jobs:
                progress(f"server {precision}: {workload.name}, layer {layer}, concurrency {concurrency}")
                call = lambda request, layer=layer: client.score(*request, layer=layer)  # noqa: E731
                rows.append([f"server {precision}", *_cell(workload, layer, concurrency, call, seconds)])
    finally:
        server.stop()
    return rows


def onnx_rows(checkpoint: Path, quantized: bool, jobs, seconds: float, scratch: Path) -> list[list[object]]:
    """Every (workload, layer, concurrency) through ONNX Runtime, fp32 or int8."""
    label = f"ONNX Runtime {'int8' if quantized else 'fp32'}"
    scorers: dict[int, OnnxScorer] = {}
    rows = []
    for workload, layer, concurrency in jobs:
        if layer not in scorers:
            progress(f"exporting layers 1..{layer} to ONNX{' and quantizing' if quantized else ''}")
            scorers[layer] = OnnxScorer(checkpoint, layer, quantized, scratch)
        progress(f"{label}: {workload.name}, layer {layer}, concurrency {concurrency}")
        rows.append([label, *_cell(workload, layer, concurrency, scorers[layer].score, seconds)])
    return rows


def _cell(workload: Workload, layer: int, concurrency: int, call, seconds: float) -> list[object]:
    per_second, p50 = timed(call, workload.requests, concurrency, seconds)
    return [workload.name, layer, concurrency, f"{per_second:.2f}", f"{p50:.0f}"]


def main(argv: list[str] | None = None) -> int:
    """Command line; prints a Markdown report and writes it as JSON with `--json`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "base"), default="base")
    parser.add_argument("--precisions", default="fp32,int8", help="server precisions, comma separated")
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds per cell (at least one request)")
    parser.add_argument("--requests", type=int, default=8, help="distinct requests per workload")
    parser.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    checkpoint = demo_checkpoint(args.preset)
    layers = CheckpointLayout.open(checkpoint).spec.layer_indices
    jobs = [(w, layer, c) for w in workloads(args.requests) for layer in (layers[-1], layers[0]) for c in CONCURRENCIES]
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-cpu-precision-") as scratch:
        for precision in args.precisions.split(","):
            rows += served_rows(checkpoint, precision, jobs, args.seconds, Path(scratch))
        if args.onnx:
            for quantized in (False, True):
                rows += onnx_rows(checkpoint, quantized, jobs, args.seconds, Path(scratch))
    rows.sort(key=lambda row: (row[1], -row[2], row[3], row[0]))
    header = ["system", "workload", "layer", "concurrency", "requests/s", "p50 ms"]
    print(f"# CPU precisions ({args.preset} preset, {len(os.sched_getaffinity(0))} cores)\n")  # noqa: T201
    print(markdown_table(header, rows))  # noqa: T201
    if args.json:
        args.json.write_text(json.dumps([dict(zip(header, row, strict=True)) for row in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
