"""The reranker's scoring thread: Triton's `execute` hands requests over and returns at once.

An instance that returns from `execute` gets the next requests from Triton's dynamic batcher
right away, so a request that arrives while others are being scored joins the step's pool and
starts within one micro-batch instead of waiting for a whole `execute`. The thread owns the pool;
`submit` blocks while `max_in_flight` requests are in it, so beyond that requests wait in
Triton's queue, whose size limit and timeouts keep their meaning. On a CPU with a `CoreShare`, the
thread sizes PyTorch's thread count to this instance's share of the cores among the instances
scoring at that moment, before each micro-batch and again before each encoder layer, so a lone
request's extra threads give way within a layer once another instance starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch

from mmrerank.serving.core_share import CoreShare
from mmrerank.serving.planner import MicroBatch
from mmrerank.serving.reranker_step import Done, Outcome, RerankerStep, ScoreRequest


class ScoringLoop:
    """Runs `step`'s micro-batches on one thread while requests are submitted from another."""

    def __init__(
        self,
        step: RerankerStep,
        max_in_flight: int,
        on_batch: Callable[[MicroBatch], None],
        on_failure: Callable[[BaseException], None],
        threads: int | None = None,
        share: CoreShare | None = None,
    ) -> None:
        self.step = step
        self.threads = threads
        self.share = share
        if share is not None:
            step.between_layers = self._follow_share
        self.max_in_flight = max_in_flight
        self._on_batch = on_batch
        self._on_failure = on_failure
        self._changed = threading.Condition()
        self._arrivals: list[tuple[ScoreRequest, Done, float]] = []
        self._in_flight = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mmrerank-scoring", daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet answered."""
        return self._in_flight

    def submit(self, request: ScoreRequest, done: Done) -> None:
        """Hand `request` to the scoring thread; `done` gets its outcome there. Blocks while the pool is full."""
        with self._changed:
            self._changed.wait_for(lambda: self._in_flight < self.max_in_flight or self._stopping)
            self._in_flight += 1
            self._arrivals.append((request, self._counted(done), time.monotonic()))
            self._changed.notify_all()

    def stop(self, timeout: float = 30.0) -> None:
        """End the thread; requests still in the pool are answered as abandoned for "shutdown"."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout)

    def _counted(self, done: Done) -> Done:
        def finished(outcome: Outcome) -> None:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()
            done(outcome)

        return finished

    def _run(self) -> None:
        if self.threads is not None:  # PyTorch's thread count is kept per thread: a new thread starts at all cores
            torch.set_num_threads(self.threads)
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._arrivals or self.step.in_flight or self._stopping)
                arrivals, self._arrivals = self._arrivals, []
                stopping = self._stopping
            for request, done, arrived in arrivals:
                self.step.admit(request, done, arrived)
            if stopping:
                self.step.abandon_all("shutdown")
                if self.share is not None:
                    self.share.close()
                return
            self._take_share()
            try:
                ran = self.step.run_next()
            except Exception as error:  # noqa: BLE001 - the failing batch's requests are answered; go on
                self._on_failure(error)
                continue
            finally:
                if self.share is not None and not self.step.in_flight:
                    self.share.set_busy(False)
            if ran is not None:
                self._on_batch(ran)

    def _take_share(self) -> None:
        """Before a micro-batch: mark this instance busy and take its share of the cores among the busy ones."""
        if self.share is None or not self.step.in_flight:
            return
        self.share.set_busy(True)
        self._follow_share()

    def _follow_share(self) -> None:
        """Set PyTorch's thread count to this instance's share of the cores now."""
        if self.share is None:
            return
        threads = self.share.threads()
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
