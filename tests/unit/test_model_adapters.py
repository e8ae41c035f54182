"""The model.py adapters driven like Triton drives them, with the backend utils stubbed."""

from __future__ import annotations

import numpy as np
import pytest
from triton_stub import FakeRequest, MetricFamily, load_adapter, model_args

from mmrerank.score_step import sigmoid


def texts(*items) -> np.ndarray:
    return np.array([item if isinstance(item, bytes) else item.encode() for item in items], dtype=np.object_)


@pytest.fixture()
def tokenizer_model(pb_utils, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MMRERANK_CHECKPOINT", str(tiny_checkpoint))
    model = load_adapter("tokenizer")
    model.initialize(model_args("tokenizer"))
    return model


@pytest.fixture()
def reranker_model(pb_utils, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MMRERANK_CHECKPOINT", str(tiny_checkpoint))
    model = load_adapter("reranker")
    model.initialize(model_args("reranker", "configs/cpu.pbtxt"))
    return model


def test_tokenizer_answers_each_request_on_its_own(tokenizer_model, pair_tokenizer):
    requests = [
        FakeRequest({"query": texts("river"), "documents": texts("water", "a long river")}, {"max_length": 64}),
        FakeRequest({"query": texts("river"), "documents": texts("x")}, {"layer": 3}),
        FakeRequest({"query": texts("river"), "documents": texts(b"\xff")}),
    ]
    good, bad_layer, bad_text = tokenizer_model.execute(requests)
    expected = pair_tokenizer.encode("river", ["water", "a long river"], 64)
    assert good.error is None
    np.testing.assert_array_equal(good.output("_input_ids"), expected.input_ids)
    assert good.output("_lengths").shape == (2, 1)
    assert good.output("num_tokens").tolist() == expected.lengths.tolist()
    assert bad_layer.error.code() == "INVALID_ARG" and "one of [1, 2, 4, 6]" in bad_layer.error.message()
    assert bad_text.error.code() == "INVALID_ARG" and "document 0 is not valid UTF-8" in bad_text.error.message()
    rejected = {
        key: value for key, value in MetricFamily.values.items() if key[0] == "mmrerank_requests_rejected_total"
    }
    assert sum(rejected.values()) == 2


def test_reranker_scores_valid_requests_together_and_refuses_the_rest(reranker_model, reranker, pair_tokenizer):
    first = pair_tokenizer.encode("river", ["water", "the river flows into the sea"], 512)
    second = pair_tokenizer.encode("city", ["a city of bridges"], 512)
    bad_ids = first.input_ids.copy()
    bad_ids[0, 1] = 999_999

    def request(encoded, parameters, ids=None, cancelled=False):
        tensors = {"_input_ids": encoded.input_ids if ids is None else ids, "_lengths": encoded.lengths}
        return FakeRequest(tensors, parameters, cancelled)

    responses = reranker_model.execute(
        [
            request(first, {"layer": 2, "dim": 16}),
            request(first, {"layer": 2}, ids=bad_ids),
            request(second, {"layer": 6, "dim": 128, "normalize": False}),
            request(second, {}, cancelled=True),
        ]
    )
    assert len(responses) == 4
    expected_first = sigmoid(reranker.logits(first.input_ids, first.lengths, 2, [16, 16]))
    np.testing.assert_allclose(responses[0].output("scores"), expected_first, rtol=1e-5)
    assert responses[1].error.code() == "INVALID_ARG" and "token ids must lie between" in responses[1].error.message()
    expected_second = reranker.logits(second.input_ids, second.lengths, 6, [128])
    np.testing.assert_allclose(responses[2].output("scores"), expected_second, rtol=1e-5)
    assert responses[3].error.code() == "CANCELLED"
    pairs = {key[1]: value for key, value in MetricFamily.values.items() if key[0] == "mmrerank_pairs_scored_total"}
    assert pairs == {(("dim", "16"), ("layer", "2")): 2.0, (("dim", "128"), ("layer", "6")): 1.0}


def test_a_scoring_failure_answers_every_request_with_an_error(reranker_model, pair_tokenizer, monkeypatch):
    encoded = pair_tokenizer.encode("river", ["water"], 512)

    def explode(requests):
        raise RuntimeError("device lost")

    monkeypatch.setattr(reranker_model.step, "score", explode)
    responses = reranker_model.execute(
        [FakeRequest({"_input_ids": encoded.input_ids, "_lengths": encoded.lengths}) for _ in range(3)]
    )
    assert [r.error.code() for r in responses] == ["INTERNAL"] * 3
    assert all("device lost" not in r.error.message() for r in responses)


def test_a_missing_checkpoint_setting_fails_loudly(pb_utils, monkeypatch):
    monkeypatch.delenv("MMRERANK_CHECKPOINT", raising=False)
    with pytest.raises(ValueError, match="no checkpoint given"):
        load_adapter("tokenizer").initialize(model_args("tokenizer"))
