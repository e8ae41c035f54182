"""Work stops for requests nobody waits for: past their deadline, or past a shutdown's grace."""

from __future__ import annotations

import itertools
import math
import random
import time

import numpy as np
import pytest
import torch

from mmrerank.dev.corpus import text
from mmrerank.layout import CheckpointLayout
from mmrerank.model.attention import GLOBAL_QUERY_BLOCK, global_attention
from mmrerank.serving import reranker_step
from mmrerank.serving.contract import RequestOptions, RequestRefused, parse_options
from mmrerank.serving.deadlines import NO_DEADLINE, ShutdownNotice, WorkAbandoned, request_deadline
from mmrerank.serving.reranker_step import DirectCaps, RerankerStep, ScoreRequest
from mmrerank.serving.tokenizer_step import TokenizerStep
from mmrerank_client.schema import Prefilter

QUERY = "where is the river library"


@pytest.fixture(scope="module")
def rows(pair_tokenizer):
    rng = random.Random(9)
    documents = [text(rng, n) for n in (3, 40, 70, 8, 150, 20, 95, 60)]
    return pair_tokenizer.encode(QUERY, documents, max_length=32768).rows()


def options(layer=6, dim=128, prefilter=None):
    return RequestOptions(layer=layer, dim=dim, normalize=False, max_length=32768, truncate=True, prefilter=prefilter)


class LayerCounter:
    """Counts encoder layers run, through forward hooks on the reranker's layers."""

    def __init__(self, reranker):
        self.count = 0
        self.handles = [layer.register_forward_hook(self._seen) for layer in reranker.encoder.layers]

    def _seen(self, *_):
        self.count += 1

    def close(self):
        for handle in self.handles:
            handle.remove()


@pytest.fixture
def layers_run(reranker):
    counter = LayerCounter(reranker)
    yield counter
    counter.close()


def test_a_request_past_its_deadline_costs_nothing_and_its_batch_mates_are_scored(reranker, rows, layers_run):
    step = RerankerStep(reranker, max_batch_tokens=100_000)
    alone = step.score([ScoreRequest(rows, options())]).scores[0]
    layers_run.count = 0
    expired = ScoreRequest(rows, options(), deadline=time.monotonic() - 1)
    live = ScoreRequest(rows[:3], options(), deadline=time.monotonic() + 600)
    scored = step.score([expired, live])
    assert scored.abandoned == {0: "deadline"}
    assert scored.scores[0].size == 0 and scored.exit_layers[0].size == 0
    np.testing.assert_allclose(scored.scores[1], alone[:3], rtol=1e-4, atol=1e-5)
    # Only the live request's three rows ran: one micro-batch of six layers.
    assert layers_run.count == 6
    assert [len(batch.indices) for batch in scored.batches] == [3]


def test_the_step_runs_its_between_layers_hook_before_every_layer(reranker, rows, layers_run):
    step = RerankerStep(reranker, max_batch_tokens=100_000)
    layers_before = []
    step.between_layers = lambda: layers_before.append(layers_run.count)
    step.score([ScoreRequest(rows, options(layer=6))])
    assert layers_before == [0, 1, 2, 3, 4, 5]


def test_a_deadline_passing_mid_batch_stops_at_the_next_layer(reranker, rows, layers_run, monkeypatch):
    clock = itertools.count(1000.0, 1.0)  # every look at the clock is one second later
    monkeypatch.setattr(reranker_step.time, "monotonic", lambda: next(clock))
    step = RerankerStep(reranker, max_batch_tokens=100_000)
    scored = step.score([ScoreRequest(rows, options(layer=6), deadline=1003.5)])
    assert scored.abandoned == {0: "deadline"}
    assert 0 < layers_run.count < 6, "stopped between layers, after starting"
    assert scored.batches == [] and scored.tokens_processed == 0


def test_only_requests_whose_pairs_all_ran_are_answered_with_scores(reranker, rows, monkeypatch):
    # A tight budget makes several micro-batches; the deadline passes between them.
    clock = itertools.count(1000.0, 1.0)
    monkeypatch.setattr(reranker_step.time, "monotonic", lambda: next(clock))
    step = RerankerStep(reranker, max_batch_tokens=200)
    scored = step.score([ScoreRequest(rows, options(layer=1), deadline=1005.5)])
    assert scored.abandoned == {0: "deadline"}
    assert len(scored.batches) >= 1, "some micro-batches ran before the deadline"


def test_a_cascade_past_its_deadline_is_abandoned(reranker, rows):
    step = RerankerStep(reranker, max_batch_tokens=100_000)
    cascade = ScoreRequest(rows, options(6, 128, Prefilter(1, 8, top_k=2)), deadline=time.monotonic() - 1)
    plain = ScoreRequest(rows, options())
    scored = step.score([cascade, plain])
    assert scored.abandoned == {0: "deadline"}
    assert scored.scores[1].shape == (len(rows),)


def test_a_shutdown_past_its_grace_abandons_every_request(reranker, rows, tmp_path):
    notice = ShutdownNotice(tmp_path / "shutting-down")
    step = RerankerStep(reranker, max_batch_tokens=100_000, shutdown=notice)
    assert not step.score([ScoreRequest(rows, options())]).abandoned
    notice.announce(grace_seconds=600)  # shutting down, but time is left: work goes on
    assert not step.score([ScoreRequest(rows, options())]).abandoned
    late = ShutdownNotice(tmp_path / "late")
    late.announce(grace_seconds=0)
    step = RerankerStep(reranker, max_batch_tokens=100_000, shutdown=late)
    scored = step.score([ScoreRequest(rows, options()), ScoreRequest(rows, options(), deadline=time.monotonic() + 60)])
    assert scored.abandoned == {0: "shutdown", 1: "shutdown"}


def test_the_shutdown_notice_reads_what_the_launcher_announced(tmp_path):
    notice = ShutdownNotice(tmp_path / "notice")
    assert notice.ends_at() == NO_DEADLINE
    before = time.monotonic()
    notice.announce(grace_seconds=25)
    reader = ShutdownNotice(notice.path)
    assert before + 25 <= reader.ends_at() <= time.monotonic() + 25
    notice.withdraw()
    assert not notice.path.exists()
    assert ShutdownNotice(None).ends_at() == NO_DEADLINE


def test_the_encoder_runs_the_hook_before_every_layer_and_stops_when_it_raises(reranker, rows):
    calls = []

    def stop_check():
        calls.append(1)
        if len(calls) == 3:
            raise WorkAbandoned

    with pytest.raises(WorkAbandoned):
        reranker.logits(np.concatenate(rows), [len(row) for row in rows], 6, [128] * len(rows), stop_check)
    assert len(calls) == 3
    calls.clear()
    reranker.logits(np.concatenate(rows), [len(row) for row in rows], 4, [128] * len(rows), lambda: calls.append(1))
    assert len(calls) == 4


def test_long_global_attention_checks_between_query_blocks_with_unchanged_results():
    generator = torch.Generator().manual_seed(0)
    length = 2 * GLOBAL_QUERY_BLOCK + 100
    query, key, value = (torch.randn(1, 2, length, 16, generator=generator) for _ in range(3))
    valid = torch.ones(1, length, dtype=torch.bool)
    valid[0, -50:] = False
    calls = []
    blocked = global_attention(query, key, value, valid, lambda: calls.append(1))
    assert len(calls) == 2  # between the three blocks
    torch.testing.assert_close(blocked, global_attention(query, key, value, valid), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", [0, -5, 86_400_001, "100", 1.5, True])
def test_deadline_ms_must_be_a_positive_integer_up_to_a_day(reranker, value):
    with pytest.raises(RequestRefused, match="deadline_ms"):
        parse_options({"deadline_ms": value}, reranker.spec, 32768)


def test_the_tokenizer_step_dates_each_request(tiny_checkpoint):
    def step(default):
        return TokenizerStep(CheckpointLayout.open(tiny_checkpoint), 10, 512, 1 << 20, 1 << 16, 1 << 20, default)

    query, documents = np.array([b"river"], dtype=object), np.array([b"a river", b"bread"], dtype=object)
    assert step(None).run(query, documents, {}, arrived=100.0).deadline == math.inf
    assert step(5_000).run(query, documents, {}, arrived=100.0).deadline == pytest.approx(105.0)
    assert step(5_000).run(query, documents, {"deadline_ms": 250}, arrived=100.0).deadline == pytest.approx(100.25)
    assert request_deadline(7.0, None) == NO_DEADLINE


def test_a_direct_call_gets_the_reranker_s_own_caps_and_default_deadline(reranker):
    step = RerankerStep(reranker, max_batch_tokens=1000, caps=DirectCaps(4, 100, default_deadline_ms=250))
    options, deadline = step.direct_options({"layer": 2}, pairs=3, tokens=90, arrived=1000.0)
    assert options.layer == 2 and deadline == pytest.approx(1000.25)
    _, deadline = step.direct_options({"deadline_ms": 40}, pairs=3, tokens=90, arrived=1000.0)
    assert deadline == pytest.approx(1000.04)
    with pytest.raises(RequestRefused, match="at most 4 are allowed per request"):
        step.direct_options({}, pairs=5, tokens=90, arrived=1000.0)
    with pytest.raises(RequestRefused, match="at most 100 are allowed per request"):
        step.direct_options({}, pairs=3, tokens=101, arrived=1000.0)
