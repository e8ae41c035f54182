"""The reranker model's step without Triton: check each request's token rows, then score the requests in flight.

Requests join a pool as they arrive and leave it once answered. The pool runs one micro-batch at a
time, led by the request that one micro-batch can finish (the nearest to done), else by the one
served the fewest tokens so far (among requests not started yet, the smallest), and filled up with
pairs of other requests at the same exit. So a short request that arrives while others run starts
after the micro-batch running and is done within about one more, however many long requests are
in flight, and long requests share the time between them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmrerank.model import MatryoshkaReranker
from mmrerank.model.attention import StopCheck
from mmrerank.model.heads import sigmoid
from mmrerank.serving.contract import (
    RequestOptions,
    RequestRefused,
    check_document_count,
    check_request_tokens,
    parse_options,
)
from mmrerank.serving.deadlines import NO_DEADLINE, CancelNotices, ShutdownNotice, WorkAbandoned, request_deadline
from mmrerank.serving.planner import MicroBatch, plan_micro_batches, share_micro_batch
from mmrerank_client.schema import pair_token_cap


@dataclass(frozen=True)
class ScoreRequest:
    """One validated request: its pairs as unpadded id rows, its options, and when nobody waits for it any more."""

    rows: list[np.ndarray]
    options: RequestOptions
    deadline: float = NO_DEADLINE  # monotonic clock
    request_id: str = ""  # Triton's request id: the rerank API front cancels by it


@dataclass(frozen=True)
class Outcome:
    """What became of one request: a score and exit layer per pair, or why its work stopped.

    `abandoned` is "deadline", "cancelled", "shutdown" or "error" when the request was stopped
    before all its pairs were scored; its scores and exit layers are then empty. `waited` is the
    time from reaching the instance to its first micro-batch (to its end, when none ran).
    """

    scores: np.ndarray
    exit_layers: np.ndarray  # int32 per pair: the request's layer, or its prefilter layer in a cascade
    abandoned: str | None
    waited: float


@dataclass(frozen=True)
class ScoredBatch:
    """What `RerankerStep.score` gives: an outcome per request and the micro-batches that ran.

    In a micro-batch the step ran, `indices` are each pair's index within its own request.
    """

    outcomes: list[Outcome]
    batches: list[MicroBatch]
    tokens_processed: int  # what the encoder ran: padded tokens for a padding kernel, else real ones

    @property
    def scores(self) -> list[np.ndarray]:
        """Scores per request, in request order (empty for an abandoned request)."""
        return [outcome.scores for outcome in self.outcomes]

    @property
    def exit_layers(self) -> list[np.ndarray]:
        """The exit layer behind each score, per request."""
        return [outcome.exit_layers for outcome in self.outcomes]

    @property
    def abandoned(self) -> dict[int, str]:
        """Why each stopped request was stopped, by its position."""
        return {i: outcome.abandoned for i, outcome in enumerate(self.outcomes) if outcome.abandoned}


@dataclass(frozen=True)
class DirectCaps:
    """What the reranker enforces itself when called directly, without the tokenizer step before it."""

    max_documents: int
    max_request_tokens: int
    default_deadline_ms: int | None = None
    max_tokens_per_pair: int = 2**31 - 1  # never past the model's positions
    min_pair_tokens: int = 1  # the pair template's special tokens and one document token


Done = Callable[[Outcome], None]


@dataclass(eq=False)
class _InFlight:
    """One request in the pool: its logits so far, what is left of it, and what it has been served."""

    request: ScoreRequest
    order: int  # admission order, the last tie-break
    tokens: int  # all its pairs' tokens
    done: Done
    arrived: float
    logits: np.ndarray
    exit_layers: np.ndarray
    pending: list[int]  # a plain request's pairs still to score, longest first
    cascade: Iterator[tuple[MicroBatch, bool]] | None = None  # a cascade's micro-batches, each with "was it the last"
    served_tokens: int = 0
    started: float | None = None

    def priority(self, max_batch_tokens: int) -> tuple[bool, int, int, int]:
        """Sort key: requests one micro-batch can finish first, the nearest to done first.

        Then the least served, the smallest among equals (requests not started yet), then the earliest.
        """
        remaining = max(0, self.tokens - self.served_tokens)
        if remaining <= max_batch_tokens:
            return False, remaining, 0, self.order
        return True, self.served_tokens, self.tokens, self.order


class RerankerStep:
    """Validates token tensors of each request, then scores the requests in its pool a micro-batch at a time.

    Work stops for a request once nobody waits for it (its deadline or a shutdown's grace has
    passed, or its client left the rerank API front): it leaves the pool before the next
    micro-batch, and a running micro-batch stops at the next encoder layer once nobody waits for
    any of its requests. The pool is not thread-safe: one thread admits and runs. `between_layers`,
    when set, runs wherever work may stop (before each encoder layer): the scoring loop resizes
    PyTorch's threads there.
    """

    def __init__(
        self,
        reranker: MatryoshkaReranker,
        max_batch_tokens: int,
        shutdown: ShutdownNotice | None = None,
        caps: DirectCaps | None = None,
        cancels: CancelNotices | None = None,
    ) -> None:
        self.reranker = reranker
        self.max_batch_tokens = max_batch_tokens
        self.shutdown = shutdown or ShutdownNotice(None)
        self.caps = caps
        self.cancels = cancels or CancelNotices(None)
        self.between_layers: Callable[[], None] | None = None
        self._pool: list[_InFlight] = []
        self._admissions = itertools.count()

    def warm_up(self) -> int:
        """Score one short pair at every exit layer, so no client request pays for first-call setup.

        The Triton model runs this in `initialize`: the model reports ready only once it is warm.
        Returns how many exits were run.
        """
        config, spec = self.reranker.config, self.reranker.spec
        body = np.arange(5, 21, dtype=np.int32) % config.vocab_size
        row = np.concatenate([[config.bos_token_id], body, [config.eos_token_id]]).astype(np.int32)
        for layer in spec.layer_indices:
            self.reranker.logits(row, [len(row)], layer, [spec.default_dim])
        return len(spec.layer_indices)

    def direct_options(
        self, parameters: Mapping[str, object], pairs: int, tokens: int, arrived: float
    ) -> tuple[RequestOptions, float]:
        """Options and deadline of a request sent to this model directly, not through the tokenizer step.

        Its parameters are parsed as the tokenizer step parses them, with this model's own caps:
        tokens per pair (never past the model's positions), documents, tokens, and the default
        deadline counted from `arrived`.
        """
        positions = self.reranker.config.max_position_embeddings
        caps = self.caps
        if caps is None:
            options = parse_options(parameters, self.reranker.spec, positions)
            return options, request_deadline(arrived, options.deadline_ms)
        pair_cap = pair_token_cap(caps.max_tokens_per_pair, positions)
        options = parse_options(parameters, self.reranker.spec, pair_cap, caps.min_pair_tokens)
        check_document_count(pairs, caps.max_documents)
        check_request_tokens(tokens, caps.max_request_tokens)
        deadline_ms = options.deadline_ms if options.deadline_ms is not None else caps.default_deadline_ms
        return options, request_deadline(arrived, deadline_ms)

    def prepare(
        self,
        input_ids: np.ndarray,
        lengths: np.ndarray,
        options: RequestOptions,
        deadline: float = NO_DEADLINE,
        request_id: str = "",
    ) -> ScoreRequest:
        """Check one request's ragged row (ids end to end, per-pair lengths) against what protects this process.

        `options` are trusted (the tokenizer step or `direct_options` validated them) but for their
        exits, which must exist. Raises RequestRefused when the tensors disagree, the options
        name an exit the checkpoint lacks, a pair is longer than the request's `max_length` or the
        model's positions, or an id is outside the vocabulary.
        """
        config, spec = self.reranker.config, self.reranker.spec
        exits = [(options.layer, options.dim)]
        if options.prefilter is not None:
            exits.append((options.prefilter.layer, options.prefilter.dim))
        if any(layer not in spec.layer_indices or dim not in spec.dim_indices for layer, dim in exits):
            raise RequestRefused(f"'_options' names an exit this checkpoint lacks: {exits}", "bad_tensor")
        longest = min(options.max_length, config.max_position_embeddings)
        ids, lengths = input_ids.reshape(-1), lengths.reshape(-1)
        if lengths.size == 0 or int(lengths.astype(np.int64).sum()) != ids.size:
            raise RequestRefused(
                f"'_lengths' must add up to the {ids.size} ids of '_input_ids', one entry per pair", "bad_tensor"
            )
        if lengths.min() < 1 or lengths.max() > longest:
            raise RequestRefused(
                f"every pair must hold between 1 and max_length={longest} tokens, "
                f"got {int(lengths.min())} to {int(lengths.max())}",
                "bad_tensor",
            )
        if ids.min() < 0 or ids.max() >= config.vocab_size:
            raise RequestRefused(f"token ids must lie between 0 and {config.vocab_size - 1}", "bad_tensor")
        return ScoreRequest(np.split(ids, np.cumsum(lengths)[:-1]), options, float(deadline), request_id)

    @property
    def in_flight(self) -> int:
        """Requests in the pool: admitted and not yet answered."""
        return len(self._pool)

    def admit(self, request: ScoreRequest, done: Done, arrived: float | None = None) -> None:
        """Add a request to the pool; `done` receives its outcome from the `run_next` call that ends it.

        `arrived` (monotonic, default now) is when the request reached this instance: its wait counts from there.
        """
        count = len(request.rows)
        job = _InFlight(
            request,
            next(self._admissions),
            sum(len(row) for row in request.rows),
            done,
            arrived=time.monotonic() if arrived is None else arrived,
            logits=np.empty(count, dtype=np.float32),
            exit_layers=np.full(count, request.options.layer, dtype=np.int32),
            pending=sorted(range(count), key=lambda j: -len(request.rows[j])),
        )
        if request.options.prefilter is not None:
            job.cascade = self._cascade(job)
        self._pool.append(job)

    def run_next(self) -> MicroBatch | None:
        """Run one micro-batch led by the pool's first request in priority order, shared with others at its exit.

        First, requests nobody waits for any more end, answered as abandoned. Returns the
        micro-batch that ran, or None when none did (the pool is empty, or the one picked was
        abandoned on the way). An unexpected failure ends the requests of the failing micro-batch
        with "error", then propagates.
        """
        for job in list(self._pool):
            reason = self.given_up(job.request)
            if reason:
                self._finish(job, reason)
        if not self._pool:
            return None
        first = min(self._pool, key=self._priority)
        if first.cascade is not None:
            return self._advance_cascade(first)
        return self._run_shared(first)

    def abandon_all(self, reason: str) -> None:
        """End every request in the pool as abandoned for `reason` (the model is being unloaded)."""
        for job in list(self._pool):
            self._finish(job, reason)

    def score(self, requests: Sequence[ScoreRequest]) -> ScoredBatch:
        """Score `requests` to the end in this thread, through the pool as the server does."""
        outcomes: dict[int, Outcome] = {}
        for i, request in enumerate(requests):
            self.admit(request, lambda outcome, i=i: outcomes.__setitem__(i, outcome))
        batches = []
        while self._pool:
            ran = self.run_next()
            if ran is not None:
                batches.append(ran)
        processed = sum(self.tokens_processed(batch) for batch in batches)
        return ScoredBatch([outcomes[i] for i in range(len(requests))], batches, processed)

    def tokens_processed(self, batch: MicroBatch) -> int:
        """What the encoder ran for `batch`: padded tokens for a padding kernel, else real ones."""
        return batch.padded_tokens if self._pads else batch.real_tokens

    def _priority(self, job: _InFlight) -> tuple[bool, int, int, int]:
        return job.priority(self.max_batch_tokens)

    @property
    def _pads(self) -> bool:
        return self.reranker.kernel.pads

    def _plan(self, rows: Sequence[np.ndarray], layers: Sequence[int]) -> list[MicroBatch]:
        return plan_micro_batches([len(row) for row in rows], layers, self.max_batch_tokens, count_padding=self._pads)

    def given_up(self, request: ScoreRequest) -> str | None:
        """Why nobody waits for `request` any more ("shutdown", "cancelled", "deadline"), or None."""
        now = time.monotonic()
        if now >= self.shutdown.ends_at():
            return "shutdown"
        if self.cancels.cancelled(request.request_id):
            return "cancelled"
        return "deadline" if now >= request.deadline else None

    def _stop_when_all_given_up(self, requests: Sequence[ScoreRequest]) -> StopCheck:
        """A check where work may stop: once nobody waits for any of `requests`, it raises WorkAbandoned."""

        def stop_check() -> None:
            if self.between_layers is not None:
                self.between_layers()
            if all(self.given_up(request) for request in requests):
                raise WorkAbandoned

        return stop_check

    def _finish(self, job: _InFlight, abandoned: str | None = None) -> None:
        """Take `job` out of the pool and hand its outcome to its `done`."""
        self._pool.remove(job)
        if abandoned == "cancelled":
            self.cancels.forget(job.request.request_id)
        waited = (job.started if job.started is not None else time.monotonic()) - job.arrived
        if abandoned:
            empty = np.empty(0, dtype=np.float32)
            job.done(Outcome(empty, empty.astype(np.int32), abandoned, waited))
            return
        scores = sigmoid(job.logits) if job.request.options.normalize else job.logits
        job.done(Outcome(scores, job.exit_layers, None, waited))

    def _start(self, jobs: Sequence[_InFlight]) -> None:
        now = None
        for job in jobs:
            if job.started is None:
                job.started = now = now or time.monotonic()

    def _run_shared(self, first: _InFlight) -> MicroBatch | None:
        """One micro-batch led by `first`'s longest pending pairs, filled with other plain requests' at its layer."""
        layer = first.request.options.layer
        others = sorted(
            (
                job
                for job in self._pool
                if job is not first and job.cascade is None and job.request.options.layer == layer
            ),
            key=self._priority,
        )
        sharing = [first, *others]
        taken = share_micro_batch(
            [[len(job.request.rows[j]) for j in job.pending] for job in sharing], self.max_batch_tokens, self._pads
        )
        members = [
            (job, [job.pending[k] for k in positions])
            for job, positions in zip(sharing, taken, strict=True)
            if positions
        ]
        pairs = [(job, j) for job, chosen in members for j in chosen]
        owners = [job for job, _ in members]
        self._start(owners)
        rows = [job.request.rows[j] for job, j in pairs]
        try:
            values = self.reranker.logits(
                np.concatenate(rows),
                [len(row) for row in rows],
                layer,
                [job.request.options.dim for job, _ in pairs],
                self._stop_when_all_given_up([job.request for job in owners]),
            )
        except WorkAbandoned:
            for job in owners:
                self._finish(job, self.given_up(job.request) or "deadline")
            return None
        except Exception:
            for job in owners:
                self._finish(job, "error")
            raise
        for (job, j), value in zip(pairs, values, strict=True):
            job.logits[j] = value
        for job, chosen in members:
            done = set(chosen)
            job.pending = [j for j in job.pending if j not in done]
            job.served_tokens += sum(len(job.request.rows[j]) for j in chosen)
            if not job.pending:
                self._finish(job)
        lengths = [len(row) for row in rows]
        return MicroBatch(layer, tuple(j for _, j in pairs), max(lengths), sum(lengths))

    def _advance_cascade(self, job: _InFlight) -> MicroBatch | None:
        """Run the cascade request `job`'s next micro-batch; end it after its last or once abandoned."""
        assert job.cascade is not None
        self._start([job])
        try:
            ran, last = next(job.cascade)
        except WorkAbandoned:
            self._finish(job, self.given_up(job.request) or "deadline")
            return None
        except Exception:
            self._finish(job, "error")
            raise
        job.served_tokens += ran.real_tokens
        if last:
            self._finish(job)
        return ran

    def _cascade(self, job: _InFlight) -> Iterator[tuple[MicroBatch, bool]]:
        """A cascade's micro-batches, one per step, each with whether it was the last.

        Every row runs at the prefilter exit, then the best `top_k` resume from that layer's hidden
        states to the request's exit. Writes `job`'s logits and each row's exit layer in place. Only
        the running best `top_k` rows' hidden states are kept between micro-batches, so memory stays
        bounded by `top_k` rows plus one micro-batch. Ties keep the earlier document. Raises
        WorkAbandoned once the request is past its cutoff.
        """
        rows, options, logits = job.request.rows, job.request.options, job.logits
        prefilter = options.prefilter
        assert prefilter is not None
        stop_check = self._stop_when_all_given_up([job.request])
        kept: dict[int, torch.Tensor] = {}
        for batch in self._plan(rows, [prefilter.layer] * len(rows)):
            chosen = list(batch.indices)
            logits[chosen], hidden = self.reranker.prefilter(
                np.concatenate([rows[i] for i in chosen]),
                [len(rows[i]) for i in chosen],
                prefilter.layer,
                [prefilter.dim] * len(chosen),
                stop_check,
            )
            kept.update(zip(chosen, hidden, strict=True))
            best = sorted(kept, key=lambda i: (-logits[i], i))[: prefilter.top_k]
            # Clone this batch's survivors so the batch's hidden-state tensor can be freed.
            in_batch = set(chosen)
            kept = {i: kept[i].clone() if i in in_batch else kept[i] for i in best}
            yield batch, False
        finalists = sorted(kept)
        job.exit_layers[:] = prefilter.layer
        job.exit_layers[finalists] = options.layer
        deep = self._plan([rows[i] for i in finalists], [options.layer] * len(finalists))
        for number, batch in enumerate(deep, start=1):
            chosen = [finalists[j] for j in batch.indices]
            logits[chosen] = self.reranker.continue_logits(
                [kept[i] for i in chosen], prefilter.layer, options.layer, [options.dim] * len(chosen), stop_check
            )
            yield MicroBatch(batch.layer, tuple(chosen), batch.padded_length, batch.real_tokens), number == len(deep)
