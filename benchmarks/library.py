"""Library benchmark (no server): early-exit speed by layer, the planner vs naive padding, head width.

Ratios are measured side by side in one run, so they hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from benchmarks.common import demo_checkpoint, markdown_table, progress, score_planned, seconds
from mmrerank.model import MatryoshkaReranker
from mmrerank.serving.reranker_step import RerankerStep


def random_rows(rng: np.random.Generator, lengths: list[int], vocab: int) -> list[np.ndarray]:
    """Token id rows of the given lengths, starting with <bos>."""
    rows = []
    for length in lengths:
        row = rng.integers(5, vocab, size=length)
        row[0] = 2
        rows.append(row)
    return rows


def layer_throughput(reranker: MatryoshkaReranker, rows: list[np.ndarray], repeats: int) -> list[list[object]]:
    """Pairs per second at each exit layer, relative to the deepest."""
    ids, lengths = np.concatenate(rows), [len(row) for row in rows]
    dim = reranker.spec.default_dim
    timings = {}
    for layer in reranker.spec.layer_indices:
        progress(f"layer {layer}")
        timings[layer] = seconds(lambda layer=layer: reranker.logits(ids, lengths, layer, [dim] * len(rows)), repeats)
    deepest = timings[reranker.spec.default_layer]
    return [[layer, f"{len(rows) / t:.1f}", f"{deepest / t:.2f}x"] for layer, t in timings.items()]


def planner_vs_naive(
    reranker: MatryoshkaReranker, rows: list[np.ndarray], layer: int, batch_size: int, max_batch_tokens: int
) -> list[list[object]]:
    """The planner's length-sorted micro-batches against arrival-order batches of `batch_size` pairs."""
    dim = reranker.spec.default_dim
    step = RerankerStep(reranker, max_batch_tokens)

    def naive() -> None:
        for start in range(0, len(rows), batch_size):
            chosen = rows[start : start + batch_size]
            reranker.logits(np.concatenate(chosen), [len(row) for row in chosen], layer, [dim] * len(chosen))

    progress("mixed-length workload: naive padded batches")
    naive_time = seconds(naive, 1, warm_up=False)
    progress("mixed-length workload: planner")
    planned_time = seconds(lambda: score_planned(step, rows, layer, dim), 1, warm_up=False)
    naive_tokens = sum(
        max(len(r) for r in rows[s : s + batch_size]) * len(rows[s : s + batch_size])
        for s in range(0, len(rows), batch_size)
    )
    planned = score_planned(step, rows, layer, dim)
    return [
        ["naive, arrival order", f"{len(rows) / naive_time:.1f}", naive_tokens, "1.00x"],
        ["planner", f"{len(rows) / planned_time:.1f}", planned.tokens_processed, f"{naive_time / planned_time:.2f}x"],
    ]


def width_cost(reranker: MatryoshkaReranker, rows: list[np.ndarray], repeats: int) -> list[list[object]]:
    """Time at the narrowest and widest head of the deepest layer."""
    ids, lengths = np.concatenate(rows), [len(row) for row in rows]
    layer = reranker.spec.default_layer
    timings = {
        dim: seconds(lambda dim=dim: reranker.logits(ids, lengths, layer, [dim] * len(rows)), repeats)
        for dim in (min(reranker.spec.dim_indices), max(reranker.spec.dim_indices))
    }
    widest = timings[max(timings)]
    return [[dim, f"{len(rows) / t:.1f}", f"{widest / t:.2f}x"] for dim, t in timings.items()]


def main(argv: list[str] | None = None) -> int:
    """Command line: `scripts/bench-library [--preset base|tiny] [--quick]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "base"), default="base")
    parser.add_argument("--checkpoint", help="any checkpoint directory instead of a demo preset")
    parser.add_argument("--quick", action="store_true", help="smaller workloads, for a smoke run")
    args = parser.parse_args(argv)
    path = args.checkpoint or demo_checkpoint(args.preset)
    reranker = MatryoshkaReranker.from_pretrained(path)
    vocab = min(reranker.config.vocab_size, 8000)
    rng = np.random.default_rng(0)
    pairs, length = (4, 64) if args.quick else (8, 256)
    uniform = random_rows(rng, [length] * pairs, vocab)
    mixed_rng = random.Random(0)
    count, long_count = (20, 2) if args.quick else (32, 4)
    mixed_lengths = [mixed_rng.randint(50, 300) for _ in range(count - long_count)]
    mixed_lengths += [mixed_rng.randint(1000, 2000) for _ in range(long_count)]
    mixed_rng.shuffle(mixed_lengths)
    mixed = random_rows(rng, mixed_lengths, vocab)
    mixed_layer = min(reranker.spec.layer_indices)

    print(f"# Library benchmark ({path}, {reranker.device}, {reranker.dtype}, {torch.get_num_threads()} threads)\n")
    print(f"## Exit layer ({pairs} pairs of {length} tokens)\n")
    print(markdown_table(["layer", "pairs/s", "speed vs deepest"], layer_throughput(reranker, uniform, 3)))
    print(
        f"\n## Mixed lengths ({count} pairs: {count - long_count} of 50-300 tokens, {long_count} long; "
        f"layer {mixed_layer}, naive batches of 8, planner budget 8192 tokens)\n"
    )
    print(
        markdown_table(
            ["batching", "pairs/s", "padded tokens", "speed"], planner_vs_naive(reranker, mixed, mixed_layer, 8, 8192)
        )
    )
    print(f"\n## Head width (layer {reranker.spec.default_layer})\n")
    print(markdown_table(["dim", "pairs/s", "speed vs widest"], width_cost(reranker, uniform, 3)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
