"""Requests in flight share the reranker: the least-served request goes next, a late short one starts within one
micro-batch, scores do not depend on who shared a batch, and the scoring thread bounds what it holds."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from mmrerank.dev.corpus import text
from mmrerank.serving.contract import RequestOptions
from mmrerank.serving.planner import MicroBatch
from mmrerank.serving.reranker_step import Outcome, RerankerStep, ScoreRequest
from mmrerank.serving.scoring_loop import ScoringLoop
from mmrerank_client.schema import Prefilter

QUERY = "where is the river library"


def options(layer=6, dim=128, prefilter=None):
    return RequestOptions(layer=layer, dim=dim, normalize=False, max_length=32768, truncate=True, prefilter=prefilter)


@pytest.fixture(scope="module")
def long_rows(pair_tokenizer):
    rng = random.Random(4)
    return pair_tokenizer.encode(QUERY, [text(rng, rng.choice([60, 120, 200])) for _ in range(24)], 32768).rows()


@pytest.fixture(scope="module")
def short_rows(pair_tokenizer):
    return pair_tokenizer.encode(QUERY, ["the river library", "a market"], 32768).rows()


def test_a_request_that_arrives_while_a_long_one_runs_finishes_after_one_micro_batch(reranker, long_rows, short_rows):
    step = RerankerStep(reranker, max_batch_tokens=600)
    outcomes: dict[str, Outcome] = {}
    step.admit(ScoreRequest(long_rows, options()), lambda outcome: outcomes.__setitem__("long", outcome))
    assert step.run_next() is not None
    step.admit(ScoreRequest(short_rows, options()), lambda outcome: outcomes.__setitem__("short", outcome))
    step.run_next()
    assert "short" in outcomes and "long" not in outcomes
    while step.in_flight:
        step.run_next()
    alone = RerankerStep(reranker, max_batch_tokens=600)
    np.testing.assert_allclose(outcomes["short"].scores, alone.score([ScoreRequest(short_rows, options())]).scores[0],
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(outcomes["long"].scores, alone.score([ScoreRequest(long_rows, options())]).scores[0],
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_long_requests_take_turns_by_tokens_served(reranker, long_rows):
    step = RerankerStep(reranker, max_batch_tokens=600)
    finished: dict[str, int] = {}
    calls = 0
    for name in ("first", "second"):
        step.admit(
            ScoreRequest(long_rows, options(layer=4)), lambda outcome, name=name: finished.setdefault(name, calls)
        )
    while step.in_flight:
        calls += 1
        step.run_next()
    assert calls > 6, "enough micro-batches for the order to mean something"
    # One after the other, the first would be done halfway; taking turns, both finish near the end (the
    # one a micro-batch can finish goes first).
    assert finished["second"] == calls and finished["first"] >= calls - 3


def test_a_request_one_micro_batch_can_finish_goes_before_long_ones_that_just_arrived(reranker, long_rows, short_rows):
    step = RerankerStep(reranker, max_batch_tokens=600)
    done: list[str] = []
    medium = ScoreRequest(long_rows[:5], options())  # a little more than one micro-batch
    step.admit(medium, lambda outcome: done.append("medium"))
    step.run_next()
    assert not done, "it needs a second micro-batch"
    for name in ("long 1", "long 2", "long 3"):  # they arrive now, served nothing yet
        step.admit(ScoreRequest(long_rows, options()), lambda outcome, name=name: done.append(name))
    step.run_next()
    assert done == ["medium"]


def test_a_cascade_shares_the_instance_one_micro_batch_at_a_time(reranker, long_rows, short_rows):
    step = RerankerStep(reranker, max_batch_tokens=600)
    outcomes: dict[str, Outcome] = {}
    cascade = ScoreRequest(long_rows, options(6, 128, Prefilter(1, 8, top_k=3)))
    step.admit(cascade, lambda outcome: outcomes.__setitem__("cascade", outcome))
    step.run_next()
    step.admit(ScoreRequest(short_rows, options()), lambda outcome: outcomes.__setitem__("short", outcome))
    step.run_next()
    assert "short" in outcomes and "cascade" not in outcomes
    while step.in_flight:
        step.run_next()
    alone = RerankerStep(reranker, max_batch_tokens=600).score([cascade])
    np.testing.assert_allclose(outcomes["cascade"].scores, alone.scores[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outcomes["cascade"].exit_layers, alone.exit_layers[0])
    assert sorted(outcomes["cascade"].exit_layers.tolist()).count(6) == 3


def test_the_wait_counts_from_arrival_to_the_first_micro_batch(reranker, long_rows, short_rows):
    step = RerankerStep(reranker, max_batch_tokens=600)
    outcomes: dict[str, Outcome] = {}
    step.admit(ScoreRequest(long_rows, options()), lambda outcome: outcomes.__setitem__("long", outcome))
    arrived = time.monotonic()  # the short request reaches the instance while the long one's batch runs
    step.run_next()
    running = time.monotonic() - arrived
    step.admit(ScoreRequest(short_rows, options()), lambda outcome: outcomes.__setitem__("short", outcome), arrived)
    step.run_next()
    assert running <= outcomes["short"].waited <= time.monotonic() - arrived


class FakeStep:
    """The pool's interface with requests that finish when told to (a stand-in for the step, not the model)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[ScoreRequest, object]] = []
        self.release = threading.Event()
        self.fail_next = False

    @property
    def in_flight(self) -> int:
        return len(self.jobs)

    def admit(self, request, done, arrived=None) -> None:
        self.jobs.append((request, done))

    def run_next(self) -> MicroBatch | None:
        if self.fail_next:
            self.fail_next = False
            _, done = self.jobs.pop(0)
            done(Outcome(np.empty(0, np.float32), np.empty(0, np.int32), "error", 0.0))
            raise RuntimeError("device lost")
        if not self.release.wait(0.01):
            return None
        _, done = self.jobs.pop(0)
        done(Outcome(np.zeros(1, np.float32), np.zeros(1, np.int32), None, 0.0))
        return MicroBatch(6, (0,), 1, 1)

    def abandon_all(self, reason: str) -> None:
        while self.jobs:
            _, done = self.jobs.pop(0)
            done(Outcome(np.empty(0, np.float32), np.empty(0, np.int32), reason, 0.0))


def request() -> ScoreRequest:
    return ScoreRequest([np.array([1, 2, 3], dtype=np.int32)], options())


def test_submit_blocks_while_the_pool_is_full_so_the_rest_wait_in_tritons_queue():
    step, outcomes, batches = FakeStep(), [], []
    loop = ScoringLoop(step, max_in_flight=2, on_batch=batches.append, on_failure=print)
    try:
        loop.submit(request(), outcomes.append)
        loop.submit(request(), outcomes.append)
        third = threading.Thread(target=loop.submit, args=(request(), outcomes.append))
        third.start()
        third.join(0.3)
        assert third.is_alive(), "the third request must wait while two are in flight"
        assert loop.in_flight == 2
        step.release.set()
        third.join(5)
        assert not third.is_alive()
        deadline = time.monotonic() + 5
        while len(outcomes) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [outcome.abandoned for outcome in outcomes] == [None, None, None]
        assert len(batches) == 3 and loop.in_flight == 0
    finally:
        loop.stop()


def test_a_failing_batch_is_reported_and_the_loop_goes_on():
    step, outcomes, failures = FakeStep(), [], []
    loop = ScoringLoop(step, max_in_flight=4, on_batch=lambda batch: None, on_failure=failures.append)
    try:
        step.fail_next = True
        loop.submit(request(), outcomes.append)
        loop.submit(request(), outcomes.append)
        step.release.set()
        deadline = time.monotonic() + 5
        while len(outcomes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [outcome.abandoned for outcome in outcomes] == ["error", None]
        assert [str(error) for error in failures] == ["device lost"]
    finally:
        loop.stop()


def test_stopping_answers_what_is_left_as_shutdown():
    step, outcomes = FakeStep(), []
    loop = ScoringLoop(step, max_in_flight=4, on_batch=lambda batch: None, on_failure=print)
    loop.submit(request(), outcomes.append)
    loop.submit(request(), outcomes.append)
    loop.stop(timeout=5)
    assert [outcome.abandoned for outcome in outcomes] == ["shutdown", "shutdown"]
