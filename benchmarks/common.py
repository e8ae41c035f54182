"""Helpers shared by the benchmarks: checkpoints on demand, timing, workloads, Markdown tables."""

from __future__ import annotations

import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mmrerank.dev.corpus import text
from mmrerank.dev.random_checkpoint import build_random_checkpoint
from mmrerank.serving.contract import RequestOptions
from mmrerank.serving.reranker_step import RerankerStep, ScoredBatch, ScoreRequest

REPO_ROOT = Path(__file__).resolve().parents[1]


def progress(message: str) -> None:
    """One line of progress on stderr, so stdout stays the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def demo_checkpoint(preset: str) -> Path:
    """The demo checkpoint of a preset under checkpoints/, built on first use."""
    path = REPO_ROOT / "checkpoints" / f"demo-{preset}"
    if not (path / "model.safetensors").is_file():
        progress(f"building the {preset} demo checkpoint in {path}")
        build_random_checkpoint(path, preset)
    return path


def seconds(call: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    """Median wall time of `repeats` calls, after one warm-up call unless told otherwise."""
    if warm_up:
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def documents_of_tokens(rng: random.Random, tokens: int) -> str:
    """A multilingual text of roughly `tokens` demo-tokenizer tokens (about 1.6 tokens per word)."""
    return text(rng, max(1, int(tokens / 1.6)))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def score_planned(
    step: RerankerStep, rows: Sequence[np.ndarray], layer: int, dim: int, max_length: int = 32768
) -> ScoredBatch:
    """Raw logits of many rows at one exit through the serving step's planner (one request)."""
    options = RequestOptions(layer=layer, dim=dim, normalize=False, max_length=max_length, truncate=True)
    return step.score([ScoreRequest(list(rows), options)])


def pad_rows(rows: Sequence[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-D id rows into [rows, longest] with their lengths (for engines that take padded batches)."""
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    padded = np.full((len(rows), int(lengths.max(initial=0))), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return padded, lengths


def requests_per_second(make_call: Callable[[], Callable[[], None]], concurrency: int, seconds: float) -> float:
    """Requests/s with `concurrency` threads, each with its own connection, after one warm-up call each."""
    counts = [0] * concurrency
    window: list[float] = []
    start_line = threading.Barrier(
        concurrency, action=lambda: window.extend([now := time.perf_counter(), now + seconds])
    )

    def worker(slot: int) -> None:
        call = make_call()
        call()
        start_line.wait()
        while time.perf_counter() < window[1]:
            call()
            counts[slot] += 1

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - window[0])
