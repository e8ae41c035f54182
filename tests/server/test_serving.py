"""End to end on a real tritonserver: parity with the library, batching, truncation, 32K context."""

from __future__ import annotations

import json
import random
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import assert_close, infer, library_scores
from servers import start_server

from mmrerank.dev.corpus import text

QUERY = "where does the river meet the city library"


@pytest.fixture(scope="module")
def documents() -> list[str]:
    rng = random.Random(11)
    return [text(rng, n) for n in (3, 12, 30, 80, 200)]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("normalize", [True, False])
def test_every_exit_serves_the_librarys_scores(server, reranker, pair_tokenizer, documents, protocol, normalize):
    url = server.http_url if protocol == "http" else server.grpc_url
    for layer in reranker.spec.layer_indices:
        for dim in reranker.spec.dim_indices:
            served = infer(protocol, url, QUERY, documents, layer=layer, dim=dim, normalize=normalize)
            expected = library_scores(reranker, pair_tokenizer, QUERY, documents, layer, dim, normalize)
            assert_close(served["scores"], expected)
            assert served["scores"].dtype == np.float32


def test_defaults_are_the_deepest_layer_and_widest_head(server, reranker, pair_tokenizer, documents):
    served = infer("http", server.http_url, QUERY, documents)
    assert_close(served["scores"], library_scores(reranker, pair_tokenizer, QUERY, documents, 6, 128))
    assert np.all((served["scores"] >= 0) & (served["scores"] <= 1))
    encoded = pair_tokenizer.encode(QUERY, documents, 32768)
    assert served["num_tokens"].tolist() == encoded.lengths.tolist()
    assert served["truncated"].tolist() == [False] * len(documents)


def _stats(server, model: str) -> dict:
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/stats") as response:
        stats = json.loads(response.read())["model_stats"][0]
    return {"requests": int(stats["inference_stats"]["success"]["count"]), "executions": int(stats["execution_count"])}


def test_concurrent_mixed_requests_are_batched_and_each_correct(server, reranker, pair_tokenizer):
    rng = random.Random(5)
    exits = [(layer, dim) for layer in reranker.spec.layer_indices for dim in reranker.spec.dim_indices]
    jobs = []
    for i in range(24):
        layer, dim = rng.choice(exits)
        docs = [text(rng, rng.choice([2, 20, 150, 600])) for _ in range(rng.randint(1, 6))]
        jobs.append((f"query {i} {text(rng, 4)}", docs, layer, dim, i % 3 != 0))
    before = _stats(server, "reranker")
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(
            pool.map(
                lambda job: infer("http", server.http_url, job[0], job[1], layer=job[2], dim=job[3], normalize=job[4]),
                jobs,
            )
        )
    after = _stats(server, "reranker")
    for (query, docs, layer, dim, normalize), served in zip(jobs, results, strict=True):
        assert_close(served["scores"], library_scores(reranker, pair_tokenizer, query, docs, layer, dim, normalize))
    assert after["requests"] - before["requests"] == len(jobs)
    assert after["executions"] - before["executions"] < len(jobs)


def test_a_document_over_the_cap_is_truncated_and_flagged(server, reranker, pair_tokenizer):
    docs = ["short river text", text(random.Random(2), 400)]
    served = infer("grpc", server.grpc_url, QUERY, docs, max_length=64)
    assert served["num_tokens"][1] == 64
    assert served["truncated"].tolist() == [False, True]
    assert_close(served["scores"], library_scores(reranker, pair_tokenizer, QUERY, docs, max_length=64))


@pytest.mark.slow
def test_a_32k_token_pair_is_served(server, reranker, pair_tokenizer):
    long_document = text(random.Random(3), 30000)
    served = infer("http", server.http_url, QUERY, [long_document, "water"], layer=1)
    assert served["num_tokens"][0] == 32768 and served["truncated"].tolist() == [True, False]
    expected = library_scores(reranker, pair_tokenizer, QUERY, [long_document, "water"], layer=1)
    assert_close(served["scores"], expected)


def test_a_checkpoint_with_a_roberta_template_serves_the_references_scores(roberta_checkpoint, tmp_path):
    """The served pairs follow tokenizer.json's own template, as transformers' tokenizer(query, document) does."""
    from reference import ReferenceScorer

    reference = ReferenceScorer(roberta_checkpoint)
    documents = ["the river meets the sea", "bread and water", "a library by the river " * 20]
    server = start_server(roberta_checkpoint, tmp_path / "server.log", "--precision", "fp32")  # the reference is fp32
    try:
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            served = infer(protocol, url, QUERY, documents, layer=4, dim=32, normalize=False)
            expected = np.array([reference.logit(QUERY, doc, 4, 32) for doc in documents], dtype=np.float32)
            assert_close(served["scores"], expected)
            assert served["num_tokens"].tolist() == [len(reference.token_ids(QUERY, doc)) for doc in documents]
    finally:
        assert server.stop() == 0
