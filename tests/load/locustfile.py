"""Locust load test of the served reranker, over HTTP and gRPC, through the typed client.

    locust -f tests/load/locustfile.py --headless --host http://127.0.0.1:8000 -u 16 -r 4 -t 60s
    locust -f tests/load/locustfile.py ... --tags matryoshka          # one scenario
    locust -f tests/load/locustfile.py ... GrpcRerankUser             # one protocol

gRPC users reach `--grpc-host` (or $RERANK_GRPC_URL), by default the HTTP host with port + 1;
rerank-API users reach `--api-host` (or $RERANK_API_URL), by default the HTTP host on port 8080.
Exit layers and head widths come from the server (`describe()`), so any checkpoint works as is.
Three layers: `TimedRerankClient` reports each call to Locust -> `RerankUser` holds one ->
`HttpRerankUser` / `GrpcRerankUser` run the scenarios.

Sizes are in words; what they are in tokens depends on the served tokenizer, so each typed call
reports its request's tokens (pairs with the query and special tokens, as the server counted them)
as its size: Locust's "Average size" column. Measured per pair, the scenarios send
(the test suite's random-weight tiny checkpoint / the trained demo in demo/checkpoint):

| scenario | documents | tokens per pair | tokens per request |
| --- | --- | --- | --- |
| short | 10 of 9 words | ~27 / ~120 | ~270 / ~1,200 |
| long | 2 of 940 words | ~1,370 / ~6,900 | ~2,700 / ~13,800 |
| matryoshka | 10 of 10-120 words | ~30-190 / ~130-940 | ~1,100 / ~5,300 |
| cascade | 30 of 10-120 words | as matryoshka | ~3,300 / ~16,000 |
| rag | 20-100 of 20-400 words | ~40-580 / ~190-2,900 | 4,400-25,000 / 26,000-127,000 |
"""

from __future__ import annotations

import random
import time
from typing import Any
from urllib.parse import urlsplit

import grpc.experimental.gevent as grpc_gevent
from locust import FastHttpUser, User, between, events, tag, task

from mmrerank.dev.corpus import rag_documents, text
from mmrerank_client import RerankClient, RerankError

grpc_gevent.init_gevent()  # gRPC's blocking calls must yield to Locust's greenlets


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    parser.add_argument("--grpc-host", env_var="RERANK_GRPC_URL", default="", help="grpc://host:port for gRPC users")
    parser.add_argument("--model-name", default="rerank", help="Triton model to call")
    parser.add_argument("--api-host", env_var="RERANK_API_URL", default="", help="http://host:port of the rerank API")


class TimedRerankClient:
    """Wraps the typed client; every call fires Locust's request event with its time, size and error."""

    def __init__(self, url: str, model: str, request_type: str) -> None:
        self.client = RerankClient(url, model=model, timeout=120)
        self.request_type = request_type

    def rerank(self, name: str, query: str, documents: list[str], **options: Any) -> None:
        start = time.perf_counter()
        error: Exception | None = None
        tokens = 0
        try:
            tokens = sum(result.num_tokens for result in self.client.rerank(query, documents, **options))
        except RerankError as caught:
            error = caught
        events.request.fire(
            request_type=self.request_type,
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=tokens,  # the request's tokens under the served tokenizer: Locust's "size" column
            exception=error,
            context={},
        )

    def close(self) -> None:
        self.client.close()


class RerankUser(User):
    """A user holding one timed client; the scenarios are its tasks."""

    abstract = True
    wait_time = between(0.0, 0.05)
    protocol = "http"

    def url(self) -> str:
        host = self.host or "http://127.0.0.1:8000"
        if self.protocol == "http":
            return host
        if self.environment.parsed_options and self.environment.parsed_options.grpc_host:
            return self.environment.parsed_options.grpc_host
        parts = urlsplit(host)
        return f"grpc://{parts.hostname}:{(parts.port or 8000) + 1}"

    def on_start(self) -> None:
        options = self.environment.parsed_options
        model = options.model_name if options else "rerank"
        self.rng = random.Random()
        self.client = TimedRerankClient(self.url(), model, self.protocol)
        self.client.client.wait_until_ready(timeout=60)
        self.served = self.client.client.describe()
        self.exits = [(layer, dim) for layer in self.served.layer_indices for dim in self.served.dim_indices]

    def on_stop(self) -> None:
        self.client.close()

    @tag("short")
    @task(4)
    def short_documents(self) -> None:
        """10 documents of 9 words."""
        docs = [text(self.rng, 9) for _ in range(10)]
        self.client.rerank("short", text(self.rng, 6), docs)

    @tag("long")
    @task(1)
    def long_documents(self) -> None:
        """2 documents of 940 words."""
        docs = [text(self.rng, 940) for _ in range(2)]
        self.client.rerank("long", text(self.rng, 6), docs)

    @tag("matryoshka")
    @task(3)
    def matryoshka_mix(self) -> None:
        """10 documents of 10-120 words at a random (layer, width) among the served model's exits."""
        layer, dim = self.rng.choice(self.exits)
        docs = [text(self.rng, self.rng.randint(10, 120)) for _ in range(10)]
        self.client.rerank(f"layer {layer} dim {dim}", text(self.rng, 6), docs, layer=layer, dim=dim)

    @tag("cascade")
    @task(1)
    def cascade(self) -> None:
        """30 documents of 10-120 words at the shallowest exit, the best 5 continued to the deepest."""
        layers = self.served.layer_indices
        docs = [text(self.rng, self.rng.randint(10, 120)) for _ in range(30)]
        options = {"layer": layers[-1], "prefilter_layer": layers[0], "prefilter_top_k": 5}
        self.client.rerank("cascade", text(self.rng, 6), docs, **options)

    @tag("rag")
    @task(2)
    def rag_request(self) -> None:
        """1 query, 20-100 passages of 20-400 words in mixed languages."""
        self.client.rerank("rag", text(self.rng, 8), rag_documents(self.rng, self.rng.randint(20, 100)))


class HttpRerankUser(RerankUser):
    """Calls over HTTP."""

    protocol = "http"


class GrpcRerankUser(RerankUser):
    """Calls over gRPC."""

    protocol = "grpc"


class RerankApiUser(FastHttpUser):
    """Calls the rerank API front the way RAG frameworks do: Cohere v2 and TEI shapes."""

    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.rng = random.Random()
        options = self.environment.parsed_options
        if options and options.api_host:
            self.client.base_url = options.api_host.rstrip("/")
        else:
            parts = urlsplit(self.host or "http://127.0.0.1:8000")
            self.client.base_url = f"http://{parts.hostname}:8080"

    @tag("api")
    @task(2)
    def cohere_v2(self) -> None:
        """Cohere v2 shape, 10 short documents, the best 3."""
        body = {"model": "mmrerank", "query": text(self.rng, 6), "documents": [text(self.rng, 9) for _ in range(10)],
                "top_n": 3}  # fmt: skip
        self.client.post("/v2/rerank", json=body, name="api /v2/rerank")

    @tag("api")
    @task(1)
    def tei(self) -> None:
        """TEI shape, 10 short texts."""
        body = {"query": text(self.rng, 6), "texts": [text(self.rng, 9) for _ in range(10)], "truncate": True}
        self.client.post("/rerank", json=body, name="api /rerank")
