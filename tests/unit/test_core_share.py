"""CPU instances split the cores among those scoring: a lone request gets every core, two busy instances half each."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from test_sharing import FakeStep, request

from mmrerank.serving.core_share import CPU_SHARE_ENV, CoreShare
from mmrerank.serving.planner import MicroBatch
from mmrerank.serving.scoring_loop import ScoringLoop


@pytest.fixture
def share_file(tmp_path, monkeypatch):
    path = CoreShare.create(tmp_path / "cpu-share")
    monkeypatch.setenv(CPU_SHARE_ENV, str(path))
    return path


def test_the_busy_instances_split_the_cores(share_file):
    first, second = (CoreShare.from_environment(f"reranker_0_{index}", cores=4) for index in (0, 1))
    assert first.threads() == second.threads() == 4  # nobody scoring
    first.set_busy(True)
    assert (first.busy(), first.threads(), second.threads()) == (1, 4, 4)
    second.set_busy(True)
    assert (first.busy(), first.threads(), second.threads()) == (2, 2, 2)
    first.close()
    assert (second.busy(), second.threads()) == (1, 4)
    restarted = CoreShare.from_environment("reranker_0_0", cores=4)  # a restarted stub keeps its slot
    assert restarted.slot == first.slot and restarted.busy() == 1


def test_no_share_without_the_variable_and_a_name_without_an_index_is_refused(share_file, monkeypatch):
    with pytest.raises(ValueError, match="cannot tell a share slot"):
        CoreShare.from_environment("reranker", cores=2)
    monkeypatch.setenv(CPU_SHARE_ENV, "off")
    assert CoreShare.from_environment("reranker_0_0", cores=2) is None
    monkeypatch.delenv(CPU_SHARE_ENV)
    assert CoreShare.from_environment("reranker_0_0", cores=2) is None


class ThreadsSeen(FakeStep):
    """Records PyTorch's thread count on the scoring thread at each micro-batch."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def run_next(self) -> MicroBatch | None:
        if self.jobs and self.release.is_set():
            self.threads.append(torch.get_num_threads())
        return super().run_next()


def test_the_scoring_thread_takes_every_core_alone_and_its_share_beside_a_busy_instance(share_file):
    share = CoreShare.from_environment("reranker_0_0", cores=2)
    other = CoreShare.from_environment("reranker_0_1", cores=2)
    step, outcomes = ThreadsSeen(), []
    loop = ScoringLoop(step, max_in_flight=4, on_batch=lambda batch: None, on_failure=print, threads=1, share=share)
    try:
        step.release.set()
        for busy_beside in (False, True):
            other.set_busy(busy_beside)
            loop.submit(request(), outcomes.append)
            deadline = time.monotonic() + 5
            while len(outcomes) < (2 if busy_beside else 1) and time.monotonic() < deadline:
                time.sleep(0.01)
        assert step.threads == [2, 1]
        assert other.busy() == 1, "once its pool is empty the instance is idle again"
    finally:
        loop.stop()
        other.close()
    assert [outcome.abandoned for outcome in outcomes] == [None, None]
    assert all(thread.name != "mmrerank-scoring" for thread in threading.enumerate())


class AnotherStartsMidBatch(FakeStep):
    """A micro-batch of two layers; another instance starts scoring between them."""

    def __init__(self, other: CoreShare) -> None:
        super().__init__()
        self.other = other
        self.threads: list[int] = []
        self.between_layers = None

    def run_next(self) -> MicroBatch | None:
        if self.jobs and self.release.is_set():
            self.threads.append(torch.get_num_threads())
            self.other.set_busy(True)
            self.between_layers()
            self.threads.append(torch.get_num_threads())
        return super().run_next()


def test_a_lone_requests_extra_threads_give_way_at_the_next_layer(share_file):
    share = CoreShare.from_environment("reranker_0_0", cores=2)
    other = CoreShare.from_environment("reranker_0_1", cores=2)
    step, outcomes = AnotherStartsMidBatch(other), []
    loop = ScoringLoop(step, max_in_flight=4, on_batch=lambda batch: None, on_failure=print, threads=1, share=share)
    try:
        step.release.set()
        loop.submit(request(), outcomes.append)
        deadline = time.monotonic() + 5
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert step.threads == [2, 1]
    finally:
        loop.stop()
        other.close()
