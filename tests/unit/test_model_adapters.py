"""The model.py adapters driven like Triton drives them, with the backend utils stubbed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from triton_stub import FakeRequest, MetricFamily, answers, load_adapter, model_args

from mmrerank.model import MatryoshkaReranker
from mmrerank.model.heads import sigmoid


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
    threads = torch.get_num_threads()  # the adapter sets its instance's share of the cores
    model = load_adapter("reranker")
    model.initialize(model_args("reranker", "configs/cpu.pbtxt"))
    yield model
    model.finalize()
    torch.set_num_threads(threads)


def test_tokenizer_answers_each_request_on_its_own(tokenizer_model, pair_tokenizer):
    requests = [
        FakeRequest({"query": texts("river"), "documents": texts("water", "a long river")}, {"max_length": 64}),
        FakeRequest({"query": texts("river"), "documents": texts("x")}, {"layer": 3}),
        FakeRequest({"query": texts("river"), "documents": texts(b"\xff")}),
    ]
    good, bad_layer, bad_text = tokenizer_model.execute(requests)
    expected = pair_tokenizer.encode("river", ["water", "a long river"], 64)
    assert good.error is None
    np.testing.assert_array_equal(good.output("_input_ids"), expected.input_ids.reshape(1, -1))
    np.testing.assert_array_equal(good.output("_lengths"), expected.lengths.reshape(1, -1))
    assert good.output("num_tokens").tolist() == expected.lengths.tolist()
    assert bad_layer.error.code() == "INVALID_ARG" and "one of [1, 2, 4, 6]" in bad_layer.error.message()
    assert bad_text.error.code() == "INVALID_ARG" and "document 0 is not valid UTF-8" in bad_text.error.message()
    rejected = {
        key: value for key, value in MetricFamily.values.items() if key[0] == "mmrerank_requests_rejected_total"
    }
    assert sum(rejected.values()) == 2


def test_reranker_scores_valid_requests_together_and_refuses_the_rest(reranker_model, served_reranker, pair_tokenizer):
    first = pair_tokenizer.encode("river", ["water", "the river flows into the sea"], 512)
    second = pair_tokenizer.encode("city", ["a city of bridges"], 512)
    bad_ids = first.input_ids.copy()
    bad_ids[1] = 999_999

    def request(encoded, parameters, ids=None, cancelled=False):
        ids = encoded.input_ids if ids is None else ids
        tensors = {"_input_ids": ids.reshape(1, -1), "_lengths": encoded.lengths.reshape(1, -1)}
        return FakeRequest(tensors, parameters, cancelled)

    responses = answers(
        reranker_model,
        [
            request(first, {"layer": 2, "dim": 16}),
            request(first, {"layer": 2}, ids=bad_ids),
            request(second, {"layer": 6, "dim": 128, "normalize": False}),
            request(second, {}, cancelled=True),
        ],
    )
    assert len(responses) == 4
    expected_first = sigmoid(served_reranker.logits(first.input_ids, first.lengths, 2, [16, 16]))
    np.testing.assert_allclose(responses[0].output("scores"), expected_first.reshape(1, -1), rtol=1e-5)
    assert responses[1].error.code() == "INVALID_ARG" and "token ids must lie between" in responses[1].error.message()
    expected_second = served_reranker.logits(second.input_ids, second.lengths, 6, [128])
    np.testing.assert_allclose(responses[2].output("scores"), expected_second.reshape(1, -1), rtol=1e-5)
    assert responses[3].error.code() == "CANCELLED"
    pairs = {key[1]: value for key, value in MetricFamily.values.items() if key[0] == "mmrerank_pairs_scored_total"}
    assert pairs == {(("dim", "16"), ("layer", "2")): 2.0, (("dim", "128"), ("layer", "6")): 1.0}


def test_a_scoring_failure_answers_every_request_with_an_error(reranker_model, pair_tokenizer, monkeypatch):
    encoded = pair_tokenizer.encode("river", ["water"], 512)

    def explode(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(reranker_model.step.reranker, "logits", explode)
    responses = answers(
        reranker_model,
        [FakeRequest({"_input_ids": encoded.input_ids[None], "_lengths": encoded.lengths[None]}) for _ in range(3)],
    )
    assert [r.error.code() for r in responses] == ["INTERNAL"] * 3
    assert all("device lost" not in r.error.message() for r in responses)


def test_a_missing_checkpoint_setting_fails_loudly(pb_utils, monkeypatch):
    monkeypatch.delenv("MMRERANK_CHECKPOINT", raising=False)
    with pytest.raises(ValueError, match="no checkpoint given"):
        load_adapter("tokenizer").initialize(model_args("tokenizer"))


def broken_metrics(*args, **kwargs):
    raise RuntimeError("metrics endpoint gone")


def test_a_failing_metrics_backend_does_not_turn_answers_into_errors(reranker_model, pair_tokenizer, monkeypatch):
    encoded = pair_tokenizer.encode("river", ["water", "sea"], 512)
    monkeypatch.setattr(reranker_model.metrics, "_metric", broken_metrics)
    (response,) = answers(
        reranker_model, [FakeRequest({"_input_ids": encoded.input_ids[None], "_lengths": encoded.lengths[None]})]
    )
    assert response.error is None and response.output("scores").shape == (1, 2)


def test_a_failing_metrics_backend_does_not_fail_the_tokenizer(tokenizer_model, monkeypatch):
    monkeypatch.setattr(tokenizer_model.metrics, "_metric", broken_metrics)
    long_document = "river " * 200  # truncated: the truncation counter is updated
    good, bad = tokenizer_model.execute([
        FakeRequest({"query": texts("river"), "documents": texts("water", long_document)}, {"max_length": 32}),
        FakeRequest({"query": texts("river"), "documents": texts("x")}, {"layer": 3}),
    ])  # fmt: skip
    assert good.error is None and bool(good.output("truncated")[1])
    assert bad.error.code() == "INVALID_ARG"


def test_an_unexpected_failure_reading_one_request_fails_that_request_alone(
    reranker_model, pair_tokenizer, monkeypatch
):
    encoded = pair_tokenizer.encode("river", ["water", "sea"], 512)
    prepare = reranker_model.step.prepare

    def fragile(input_ids, lengths, *args):
        if lengths.size == 1:
            raise MemoryError("cannot split")
        return prepare(input_ids, lengths, *args)

    monkeypatch.setattr(reranker_model.step, "prepare", fragile)
    one = pair_tokenizer.encode("river", ["water"], 512)
    good, failed = answers(reranker_model, [
        FakeRequest({"_input_ids": encoded.input_ids[None], "_lengths": encoded.lengths[None]}),
        FakeRequest({"_input_ids": one.input_ids[None], "_lengths": one.lengths[None]}),
    ])  # fmt: skip
    assert good.error is None and good.output("scores").shape == (1, 2)
    assert failed.error.code() == "INTERNAL" and "cannot split" not in failed.error.message()


@pytest.mark.parametrize(
    ("ids", "lengths", "parameters", "message"),
    [
        ([2, 5, 1, 2, 6], [3, 3], {}, "must add up to the 5 ids"),
        ([2, 5, 1, 7, 1], [5], {"max_length": 4}, "between 1 and max_length=4 tokens, got 5 to 5"),
        ([2, 5, 1], [0, 3], {}, "between 1 and max_length=32768 tokens, got 0 to 3"),
    ],
)
def test_the_reranker_checks_lengths_itself(reranker_model, ids, lengths, parameters, message):
    request = FakeRequest(
        {"_input_ids": np.array([ids], dtype=np.int32), "_lengths": np.array([lengths], dtype=np.int32)}, parameters
    )
    (response,) = answers(reranker_model, [request])
    assert response.error.code() == "INVALID_ARG" and message in response.error.message()


def test_the_reranker_trusts_the_options_the_tokenizer_step_validated(
    tokenizer_model, reranker_model, served_reranker, pair_tokenizer
):
    (tokenized,) = tokenizer_model.execute(
        [
            FakeRequest(
                {"query": texts("river"), "documents": texts("water", "sea")},
                {"layer": 2, "dim": 16, "normalize": False, "max_length": 64},
            )
        ]  # fmt: skip
    )
    assert tokenized.output("_options").tolist() == [[2, 16, 0, 64, 1, 0, 0, 0]]
    tensors = {name: tokenized.output(name) for name in ("_input_ids", "_lengths", "_options")}
    # The parameters travel too, but the reranker reads none of them when `_options` is there.
    (scored,) = answers(reranker_model, [FakeRequest(tensors, {"layer": 999})])
    encoded = pair_tokenizer.encode("river", ["water", "sea"], 64)
    expected = served_reranker.logits(encoded.input_ids, encoded.lengths, 2, [16, 16])
    np.testing.assert_allclose(scored.output("scores"), expected.reshape(1, -1), rtol=1e-5)


def test_options_naming_a_missing_exit_fail_that_request_alone(reranker_model, pair_tokenizer):
    encoded = pair_tokenizer.encode("river", ["water"], 64)
    tensors = {"_input_ids": encoded.input_ids[None], "_lengths": encoded.lengths[None]}
    bad = FakeRequest({**tensors, "_options": np.array([[3, 16, 1, 64, 1, 0, 0, 0]], dtype=np.int32)})
    good = FakeRequest({**tensors, "_options": np.array([[2, 16, 1, 64, 1, 0, 0, 0]], dtype=np.int32)})
    refused, scored = answers(reranker_model, [bad, good])
    assert refused.error.code() == "INVALID_ARG" and "exit this checkpoint lacks: [(3, 16)]" in refused.error.message()
    assert scored.error is None and scored.output("scores").shape == (1, 1)


def test_the_reranker_is_warm_before_initialize_returns(pb_utils, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MMRERANK_CHECKPOINT", str(tiny_checkpoint))
    logged = []
    pb_utils.Logger = type("Logger", (), {"log_info": staticmethod(logged.append), "log_error": staticmethod(print)})
    calls = []
    model = load_adapter("reranker")
    original = MatryoshkaReranker.logits
    monkeypatch.setattr(
        MatryoshkaReranker, "logits", lambda self, *args: calls.append(args[2]) or original(self, *args)
    )
    model.initialize(model_args("reranker", "configs/cpu.pbtxt"))
    assert calls == [1, 2, 4, 6]
    assert "warmed up 4 exits" in logged[-1]


def test_a_deadline_counts_from_when_the_tokenizer_step_starts_on_the_request(tokenizer_model):
    before = time.monotonic()
    own, default = tokenizer_model.execute([
        FakeRequest({"query": texts("river"), "documents": texts("water")}, {"deadline_ms": 1500}),
        FakeRequest({"query": texts("river"), "documents": texts("water")}),
    ])  # fmt: skip
    after = time.monotonic()
    assert before + 1.5 <= float(own.output("_deadline")[0, 0]) <= after + 1.5
    # Without its own, the config's default: 60 s in the GPU config (configs/cpu.pbtxt: 120 s).
    assert before + 60 <= float(default.output("_deadline")[0, 0]) <= after + 60
