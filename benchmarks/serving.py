"""Served vs in-process: the same rerank workload through tritonserver and through the library directly.

The ratio of their throughputs is what serving costs (or, with cross-request batching, gains).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common import demo_checkpoint, documents_of_tokens, markdown_table, progress
from mmrerank.dev.background import start_server
from mmrerank.layout import CheckpointLayout
from mmrerank.model import MatryoshkaReranker
from mmrerank.serving.reranker_step import RerankerStep
from mmrerank.serving.tokenizer_step import TokenizerStep
from mmrerank_client import RerankClient


def workload(count: int, documents: int, tokens: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """`count` requests of one query and `documents` documents of about `tokens` tokens."""
    rng = random.Random(seed)
    return [
        (documents_of_tokens(rng, 8), [documents_of_tokens(rng, tokens) for _ in range(documents)])
        for _ in range(count)
    ]


def in_process(checkpoint: Path, requests: list[tuple[str, list[str]]], max_batch_tokens: int) -> float:
    """Requests per second through TokenizerStep + RerankerStep, one request at a time, in this process."""
    layout = CheckpointLayout.open(checkpoint)
    tokenize = TokenizerStep(
        layout, max_documents=1000, max_tokens_per_pair=32768, max_text_bytes=4 * 2**20,
        max_request_tokens=2**18, max_request_bytes=2**25,
    )  # fmt: skip
    score = RerankerStep(MatryoshkaReranker.from_pretrained(layout, device="cpu"), max_batch_tokens)

    def one(query: str, documents: list[str]) -> None:
        tokenized = tokenize.run(
            np.array([query.encode()], dtype=object), np.array([d.encode() for d in documents], dtype=object), {}
        )
        pairs = tokenized.pairs
        score.score([score.prepare(pairs.input_ids, pairs.lengths, tokenized.options, tokenized.deadline)])

    one(*requests[0])
    start = time.perf_counter()
    for query, documents in requests:
        one(query, documents)
    return len(requests) / (time.perf_counter() - start)


def served(url: str, requests: list[tuple[str, list[str]]], concurrency: int) -> float:
    """Requests per second through the server with `concurrency` requests in flight."""
    with RerankClient(url, timeout=600) as client:
        client.score(*requests[0])
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda request: client.score(*request), requests))
        return len(requests) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """Command line: `scripts/bench-serving [--preset tiny|base] [--requests N] [--documents D] [--tokens T]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--documents", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    checkpoint = demo_checkpoint(args.preset)
    requests = workload(args.requests, args.documents, args.tokens)
    progress("in-process run")
    local = in_process(checkpoint, requests, max_batch_tokens=8192)
    with tempfile.TemporaryDirectory() as scratch:
        progress("starting tritonserver")
        server = start_server(checkpoint, Path(scratch) / "server.log")
        try:
            rows = [["in-process, sequential", f"{local:.2f}", "1.00"]]
            for concurrency in sorted({1, args.concurrency}):
                progress(f"served run, concurrency {concurrency}")
                rate = served(f"http://{server.http_url}", requests, concurrency)
                rows.append([f"served over HTTP, concurrency {concurrency}", f"{rate:.2f}", f"{rate / local:.2f}"])
        finally:
            server.stop()
    print(f"# Served vs in-process ({args.preset} preset, CPU)\n")
    print(f"{args.requests} requests of 1 query x {args.documents} documents of ~{args.tokens} tokens.\n")
    print(markdown_table(["mode", "requests/s", "ratio to in-process"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
