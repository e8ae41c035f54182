"""The cascade: every document at a cheap exit, the best few resumed from its hidden states to a deep exit."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mmrerank.dev.corpus import text
from mmrerank.serving.contract import RequestOptions, RequestRefused, parse_options
from mmrerank.serving.reranker_step import RerankerStep, ScoreRequest
from mmrerank_client.schema import Prefilter

QUERY = "where is the river library"


@pytest.fixture(scope="module")
def rows(pair_tokenizer):
    rng = random.Random(5)
    documents = [text(rng, n) for n in (3, 40, 70, 8, 150, 20, 95, 1, 60, 30, 120, 45)]
    return pair_tokenizer.encode(QUERY, documents, max_length=32768).rows()


def options(layer, dim, prefilter=None):
    return RequestOptions(layer=layer, dim=dim, normalize=False, max_length=32768, truncate=True, prefilter=prefilter)


def plain(step, rows, layer, dim):
    return step.score([ScoreRequest(rows, options(layer, dim))]).scores[0]


@pytest.mark.parametrize("budget", [100_000, 300])  # one micro-batch, or many (the running top-k is kept across)
def test_every_exit_pair_continues_the_best_and_matches_plain_requests(reranker, rows, budget):
    step = RerankerStep(reranker, max_batch_tokens=budget)
    layers, dims = reranker.spec.layer_indices, reranker.spec.dim_indices
    for deep in layers:
        for cheap in [layer for layer in layers if layer < deep]:
            prefilter = Prefilter(cheap, dims[1], top_k=4)
            scored = step.score([ScoreRequest(rows, options(deep, dims[-1], prefilter))])
            values, exits = scored.scores[0], scored.exit_layers[0]
            cheap_scores = plain(step, rows, cheap, dims[1])
            deep_scores = plain(step, rows, deep, dims[-1])
            best = sorted(range(len(rows)), key=lambda i: (-cheap_scores[i], i))[:4]
            assert sorted(np.flatnonzero(exits == deep).tolist()) == sorted(best), (cheap, deep)
            continued = exits == deep
            np.testing.assert_allclose(values[continued], deep_scores[continued], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(values[~continued], cheap_scores[~continued], rtol=1e-4, atol=1e-5)
            assert set(exits.tolist()) == {cheap, deep}


def test_top_k_beyond_the_document_count_continues_them_all(reranker, rows):
    step = RerankerStep(reranker, max_batch_tokens=8192)
    scored = step.score([ScoreRequest(rows, options(6, 128, Prefilter(1, 8, top_k=100)))])
    assert scored.exit_layers[0].tolist() == [6] * len(rows)
    np.testing.assert_allclose(scored.scores[0], plain(step, rows, 6, 128), rtol=1e-4, atol=1e-5)


def test_cascades_and_plain_requests_share_one_execute(reranker, rows):
    step = RerankerStep(reranker, max_batch_tokens=8192)
    requests = [
        ScoreRequest(rows[:5], options(4, 32)),
        ScoreRequest(rows, options(6, 64, Prefilter(2, 16, top_k=3))),
        ScoreRequest(rows[5:], options(2, 128)),
    ]
    scored = step.score(requests)
    assert [len(values) for values in scored.scores] == [5, len(rows), len(rows) - 5]
    np.testing.assert_allclose(scored.scores[0], plain(step, rows[:5], 4, 32), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scored.scores[2], plain(step, rows[5:], 2, 128), rtol=1e-4, atol=1e-5)
    assert scored.exit_layers[0].tolist() == [4] * 5 and (scored.exit_layers[1] == 6).sum() == 3


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"layer": 4, "prefilter_layer": 4, "prefilter_top_k": 2}, r"shallower than layer 4, one of \[1, 2\], got 4"),
        ({"layer": 2, "prefilter_layer": 6, "prefilter_top_k": 2}, r"shallower than layer 2, one of \[1\], got 6"),
        ({"prefilter_layer": 3, "prefilter_top_k": 2}, r"one of \[1, 2, 4\], got 3"),
        ({"prefilter_layer": 1, "prefilter_top_k": 0}, "'prefilter_top_k' must be at least 1, got 0"),
        ({"prefilter_layer": 1, "prefilter_top_k": 2, "prefilter_dim": 7}, r"'prefilter_dim' must be one of \[8, 16"),
        ({"prefilter_layer": 1}, "needs both 'prefilter_layer' and 'prefilter_top_k'"),
        ({"prefilter_top_k": 5}, "needs both 'prefilter_layer' and 'prefilter_top_k'"),
        ({"prefilter_layer": "1", "prefilter_top_k": 2}, "'prefilter_layer' must be an integer"),
    ],
)
def test_bad_cascades_are_refused(reranker, parameters, message):
    with pytest.raises(RequestRefused, match=message):
        parse_options(parameters, reranker.spec, 32768)


def test_prefilter_dim_defaults_to_the_requests_dim(reranker):
    parsed = parse_options({"dim": 32, "prefilter_layer": 2, "prefilter_top_k": 3}, reranker.spec, 32768)
    assert parsed.prefilter == Prefilter(layer=2, dim=32, top_k=3)
