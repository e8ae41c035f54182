"""Every (layer, dim) exit of the fast path against the reference, early exit, batching, neighbours."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mmrerank.dev.corpus import text
from mmrerank.model.encoder import rotary_tables
from mmrerank.model.kernels import PackedRows
from mmrerank.serving.contract import RequestOptions
from mmrerank.serving.reranker_step import RerankerStep, ScoreRequest

RTOL = 1e-4
QUERY = "where is the river library"


def close(actual: np.ndarray, expected: np.ndarray) -> bool:
    return bool(np.all(np.abs(actual - expected) <= RTOL * np.maximum(1.0, np.abs(expected))))


@pytest.fixture(scope="module")
def documents() -> list[str]:
    rng = random.Random(7)
    return [text(rng, n) for n in (2, 15, 40, 90, 260)]


@pytest.fixture(scope="module")
def encoded(pair_tokenizer, documents):
    return pair_tokenizer.encode(QUERY, documents, max_length=32768)


def test_pair_tokens_match_the_tokenizers_own_pair_template(encoded, reference, documents):
    for row, document in enumerate(documents):
        assert encoded.rows()[row].tolist() == reference.token_ids(QUERY, document)


def test_every_exit_matches_the_reference(reranker, reference, encoded, documents):
    exits = [(layer, dim) for layer in reranker.spec.layer_indices for dim in reranker.spec.dim_indices]
    assert len(exits) == 20
    for layer, dim in exits:
        fast = reranker.logits(encoded.input_ids, encoded.lengths, layer, [dim] * len(documents))
        expected = np.array([reference.logit(QUERY, doc, layer, dim) for doc in documents])
        assert close(fast, expected), (layer, dim, fast, expected)


def test_scores_depend_on_the_document(reranker, encoded):
    logits = reranker.logits(encoded.input_ids, encoded.lengths, reranker.spec.default_layer, [128] * 5)
    assert np.ptp(logits) > 0.5


@pytest.mark.parametrize("length", [63, 64, 65, 127, 128, 129, 257, 1000, 5000])
def test_lengths_around_window_edges_match_the_reference(reranker, reference, length):
    rng = np.random.default_rng(length)
    ids = [2, *rng.integers(5, 2000, size=length - 2).tolist(), 1]
    for layer in reranker.spec.layer_indices:
        fast = reranker.logits(np.array(ids), [length], layer, [64])
        assert close(fast, np.array([reference.logit_of_ids(ids, layer, 64)])), (length, layer)


def _full_run_hidden_states(reranker, ids: torch.Tensor, rows: PackedRows) -> list[torch.Tensor]:
    """Hidden states after every layer, running every layer over every position."""
    encoder = reranker.encoder
    config = encoder.config
    hidden = encoder.embeddings(ids)
    states = [hidden]
    for layer in encoder.layers:
        theta = config.global_rope_theta if layer.half_window is None else config.local_rope_theta
        cos, sin = rotary_tables(rows.max_length, config.head_dim, theta, torch.float32, ids.device)
        hidden = layer(hidden, (cos[rows.positions], sin[rows.positions]), rows, encoder.kernel, cls_only=False)
        states.append(hidden)
    return states


@torch.inference_mode()
def test_early_exit_equals_a_full_run(reranker, encoded):
    ids = torch.as_tensor(encoded.input_ids, dtype=torch.long)
    rows = PackedRows.from_lengths(torch.as_tensor(encoded.lengths, dtype=torch.long), tuple(encoded.lengths.tolist()))
    states = _full_run_hidden_states(reranker, ids, rows)
    last = reranker.config.num_layers
    for layer in reranker.spec.layer_indices:
        cls = states[layer][rows.starts]
        if layer < last:
            cls = reranker.encoder.final_norm(cls)
        early = reranker.encoder.cls_states(ids, rows, layer)
        torch.testing.assert_close(early, cls, rtol=1e-5, atol=1e-5)


def test_mixed_layer_batches_equal_one_row_at_a_time(reranker, encoded):
    rng = random.Random(3)
    exits = [(layer, dim) for layer in reranker.spec.layer_indices for dim in reranker.spec.dim_indices]
    rows = encoded.rows()
    requests = []
    for i in range(40):
        layer, dim = rng.choice(exits)
        options = RequestOptions(layer=layer, dim=dim, normalize=False, max_length=32768, truncate=True)
        requests.append(ScoreRequest([rows[i % len(rows)]], options))
    scored = RerankerStep(reranker, max_batch_tokens=600).score(requests)
    assert len(scored.batches) > 4
    for request, logits in zip(requests, scored.scores, strict=True):
        row, options = request.rows[0], request.options
        alone = reranker.logits(row, [len(row)], options.layer, [options.dim])
        assert close(logits, alone)


def test_a_long_neighbour_does_not_change_a_score(reranker, encoded):
    short, long = encoded.rows()[0], encoded.rows()[4]
    alone = reranker.logits(short, [len(short)], 6, [128])
    with_long_neighbour = reranker.logits(np.concatenate([short, long]), [len(short), len(long)], 6, [128, 128])
    assert close(with_long_neighbour[:1], alone)


def test_an_unknown_layer_is_refused(reranker, encoded):
    with pytest.raises(ValueError, match=r"layer 5 is not one of \[1, 2, 4, 6\]"):
        reranker.logits(encoded.input_ids, encoded.lengths, 5, [8] * 5)


def test_every_width_from_one_pass_equals_each_width_alone(reranker):
    rng = np.random.default_rng(5)
    lengths = [7, 70, 150]
    ids = rng.integers(5, 2000, size=sum(lengths))
    ids[np.cumsum([0, *lengths[:-1]])] = 2
    for layer in reranker.spec.layer_indices:
        every = reranker.logits_at_every_width(ids, lengths, layer)
        assert list(every) == list(reranker.spec.dim_indices)
        for dim, logits in every.items():
            np.testing.assert_array_equal(logits, reranker.logits(ids, lengths, layer, [dim] * len(lengths)))
