"""The typed client against the real server: protocols and modes agree, ranking, timeouts, unavailability, CLI."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close, library_scores

from mmrerank.dev.background import free_ports
from mmrerank.dev.corpus import text
from mmrerank_client import (
    AsyncRerankClient,
    InvalidRequestError,
    RerankClient,
    RerankTimeoutError,
    ServerUnavailableError,
)

QUERY = "river library history"


@pytest.fixture(scope="module")
def documents() -> list[str]:
    rng = random.Random(21)
    return [text(rng, n) for n in (4, 25, 60, 9, 120, 33)]


def urls(server) -> dict[str, str]:
    return {"http": f"http://{server.http_url}", "grpc": f"grpc://{server.grpc_url}"}


def test_sync_async_http_grpc_agree_with_the_library(server, reranker, pair_tokenizer, documents):
    expected = library_scores(reranker, pair_tokenizer, QUERY, documents, 4, 64)
    results = {}
    for protocol, url in urls(server).items():
        with RerankClient(url) as client:
            client.wait_until_ready(timeout=30)
            results[f"sync-{protocol}"] = client.score(QUERY, documents, layer=4, dim=64)

        async def run(url=url):
            async with AsyncRerankClient(url) as client:
                await client.wait_until_ready(timeout=30)
                return await client.score(QUERY, documents, layer=4, dim=64)

        results[f"async-{protocol}"] = asyncio.run(run())
    for scores in results.values():
        assert_close(np.array(scores, dtype=np.float32), expected)
    assert len({tuple(scores) for scores in results.values()}) == 1


def test_rerank_sorts_and_cuts_to_top_n(server, documents):
    with RerankClient(urls(server)["grpc"]) as client:
        full = client.rerank(QUERY, documents, return_documents=True)
        top = client.rerank(QUERY, documents, top_n=3)
    scores = [r.score for r in full]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r.index for r in full) == list(range(len(documents)))
    assert all(r.document == documents[r.index] for r in full)
    assert [r.index for r in top] == [r.index for r in full][:3]


def test_score_pairs_matches_per_query_calls(server):
    pairs = [("river", "the river flows"), ("city", "a city of water"), ("river", "bread and salt")]
    with RerankClient(urls(server)["http"]) as client:
        scores = client.score_pairs(pairs, layer=2)
        river = client.score("river", ["the river flows", "bread and salt"], layer=2)
    assert scores[0] == pytest.approx(river[0]) and scores[2] == pytest.approx(river[1])


def test_server_errors_carry_the_servers_message(server):
    with (
        RerankClient(urls(server)["http"]) as client,
        pytest.raises(InvalidRequestError, match=r"one of \[1, 2, 4, 6\]"),
    ):
        client.rerank(QUERY, ["x"], layer=3)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_slow_call_raises_the_timeout_error(server, protocol):
    long_document = text(random.Random(4), 8000)  # about 12K tokens: over a second on the tiny model
    with RerankClient(urls(server)[protocol]) as client, pytest.raises(RerankTimeoutError):
        client.rerank(QUERY, [long_document], layer=6, timeout=0.05)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_no_server_raises_unavailable(scheme):
    (port,) = free_ports(1)
    with RerankClient(f"{scheme}://127.0.0.1:{port}", timeout=5) as client:
        with pytest.raises(ServerUnavailableError):
            client.wait_until_ready(timeout=1)
        with pytest.raises(ServerUnavailableError):
            client.rerank(QUERY, ["x"])


def test_cli_prints_the_ranking(server):
    rerank = Path(sys.executable).parent / "rerank"
    result = subprocess.run(
        [str(rerank), QUERY, "the river library", "bread", "--url", urls(server)["http"], "--top-n", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "index", "tokens", "exit", "document"]
    assert len(lines) == 3 and {line.split()[2] for line in lines[1:]} == {"0", "1"}


def test_cli_reports_a_bad_request(server):
    rerank = Path(sys.executable).parent / "rerank"
    result = subprocess.run(
        [str(rerank), QUERY, "doc", "--url", urls(server)["grpc"], "--layer", "99"], capture_output=True, text=True
    )
    assert result.returncode == 1 and "InvalidRequestError" in result.stderr and "[1, 2, 4, 6]" in result.stderr
