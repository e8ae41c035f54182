"""How long a short request waits while heavy RAG requests outnumber the reranker instances.

For each reranker instance count (the CPU config's 2; 1, the GPU configs' count per GPU, emulated
on the CPU) and each number of heavy requests in flight (60 documents of mixed lengths each, the
locustfile's `rag` shape), the heavy requests are sent at once, a short request (2 documents)
follows 0.5 s later, and the table gives the short request's latency beside the heavy ones' total
time (first sent to last answered) and one heavy request's time alone.

    .venv/bin/python -m benchmarks.fairness --heavy 2 4 6 --instances 2 1
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import markdown_table, progress
from mmrerank.dev.background import edited_repository, start_server
from mmrerank.dev.corpus import rag_documents
from mmrerank.launch.launcher import DEFAULT_DEMO_CHECKPOINT
from mmrerank_client import RerankClient

SHORT = ["The river reaches the sea at the delta.", "A recipe for bread."]


def heavy_documents(seed: int) -> list[str]:
    """60 passages of 20 to 400 words in mixed languages, as the locustfile's `rag` scenario sends them."""
    return rag_documents(random.Random(seed), 60)


def timed_rerank(url: str, documents: list[str], into: list[float]) -> None:
    """One rerank call on its own connection; appends its latency to `into`."""
    with RerankClient(url, timeout=600) as client:
        started = time.monotonic()
        client.rerank("where does the river meet the sea?", documents)
        into.append(time.monotonic() - started)


def one_round(url: str, heavies: int) -> tuple[float, float]:
    """`heavies` heavy requests at once, a short one 0.5 s later: (short latency, heavy total time)."""
    heavy_times: list[float] = []
    threads = [
        threading.Thread(target=timed_rerank, args=(url, heavy_documents(seed), heavy_times)) for seed in range(heavies)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    short: list[float] = []
    timed_rerank(url, SHORT, short)
    for thread in threads:
        thread.join()
    return short[0], time.monotonic() - started


def with_instances(count: int) -> Callable[[str], str]:
    """The CPU reranker config with `count` instances."""
    return lambda config: re.sub(r"kind: KIND_CPU count: \d+", f"kind: KIND_CPU count: {count}", config)


def main() -> None:
    """Measure every instance count and number of heavy requests; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heavy", type=int, nargs="+", default=[2, 4, 6], help="heavy requests in flight")
    parser.add_argument("--instances", type=int, nargs="+", default=[2, 1], help="reranker instance counts")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_DEMO_CHECKPOINT)
    args = parser.parse_args()
    rows = []
    for instances in args.instances:
        with tempfile.TemporaryDirectory(prefix="mmrerank-fairness-") as scratch:
            repository = edited_repository(
                Path(scratch) / "model_repository", "reranker/configs/cpu.pbtxt", with_instances(instances)
            )
            progress(f"serving {args.checkpoint} with {instances} reranker instance(s)")
            server = start_server(
                args.checkpoint, Path(scratch) / "server.log", "--model-repository", str(repository), api_front=False
            )
            try:
                url = f"grpc://{server.grpc_url}"
                alone: list[float] = []
                timed_rerank(url, heavy_documents(99), alone)  # warm-up
                timed_rerank(url, heavy_documents(0), alone)
                for heavies in args.heavy:
                    short, total = one_round(url, heavies)
                    progress(
                        f"{instances} instance(s), {heavies} heavy: short {short:.2f} s, heavy total {total:.1f} s"
                    )
                    rows.append((instances, heavies, f"{short:.2f}", f"{total:.1f}", f"{alone[-1]:.2f}"))
            finally:
                server.stop()
    header = ("reranker instances", "heavy requests in flight", "short request (s)", "heavy total (s)",
              "one heavy alone (s)")  # fmt: skip
    print(markdown_table(header, rows))  # noqa: T201 - the report


if __name__ == "__main__":
    main()
