"""The rerank API front against direct KServe gRPC calls: requests/s on the same workload and concurrency.

Both paths are measured in one run against one server, alternating, so the ratio holds on a noisy
machine. The front's clients keep their HTTP connections alive, as RAG frameworks' clients do.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import demo_checkpoint, documents_of_tokens, markdown_table, progress, requests_per_second
from mmrerank.dev.background import start_server
from mmrerank_client import RerankClient


def main(argv: list[str] | None = None) -> int:
    """Command line: `scripts/bench-api-front [--preset tiny|base] [--concurrency C] [--seconds S] [--rounds R]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    rng = random.Random(0)
    query = "where does the river meet the sea?"
    documents = [documents_of_tokens(rng, 15) for _ in range(10)]
    body = json.dumps({"model": "mmrerank", "query": query, "documents": documents}).encode()
    with tempfile.TemporaryDirectory() as scratch:
        progress("starting tritonserver and the rerank API front")
        server = start_server(demo_checkpoint(args.preset), Path(scratch) / "server.log")
        try:

            def grpc_call() -> Callable[[], None]:
                client = RerankClient(f"grpc://{server.grpc_url}", timeout=120)
                return lambda: client.score(query, documents) and None

            def front_call() -> Callable[[], None]:
                connection = http.client.HTTPConnection("127.0.0.1", server.api_port, timeout=120)

                def call() -> None:
                    connection.request("POST", "/v2/rerank", body, {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    response.read()
                    if response.status != 200:
                        raise RuntimeError(f"the front answered {response.status}")

                return call

            rates: dict[str, list[float]] = {"KServe gRPC, direct": [], "rerank API front, /v2/rerank": []}
            for round_number in range(args.rounds):
                for name, make_call in zip(rates, (grpc_call, front_call), strict=True):
                    progress(f"round {round_number + 1}: {name}, concurrency {args.concurrency}")
                    rates[name].append(requests_per_second(make_call, args.concurrency, args.seconds))
        finally:
            server.stop()
    direct = max(rates["KServe gRPC, direct"])
    rows = [
        [name, " / ".join(f"{r:.1f}" for r in values), f"{max(values) / direct:.2f}"] for name, values in rates.items()
    ]
    print(f"# Rerank API front vs direct gRPC ({args.preset} preset, CPU)\n")
    print(f"1 query + 10 documents of ~15 tokens, concurrency {args.concurrency}, {args.seconds:.0f} s per point.\n")
    print(markdown_table(["path", "requests/s per round", "best vs direct"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
