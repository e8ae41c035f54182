"""The reranker model's step without Triton: check each request's token rows, score all requests in one plan."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmrerank.model import MatryoshkaReranker
from mmrerank.model.attention import StopCheck
from mmrerank.serving.contract import (
    InvalidRequestError,
    RerankOptions,
    check_document_count,
    check_request_tokens,
    parse_options,
)
from mmrerank.serving.deadlines import NO_DEADLINE, CancelNotices, ShutdownNotice, WorkAbandoned, request_deadline
from mmrerank.serving.planner import MicroBatch, plan_micro_batches


@dataclass(frozen=True)
class ScoreRequest:
    """One validated request: its pairs as unpadded id rows, its options, and when nobody waits for it any more."""

    rows: list[np.ndarray]
    options: RerankOptions
    deadline: float = NO_DEADLINE  # monotonic clock
    request_id: str = ""  # Triton's request id: the rerank API front cancels by it


@dataclass(frozen=True)
class ScoredBatch:
    """Scores per request, the exit layer behind each score, and the micro-batches that ran (for metrics).

    A request in `abandoned` ("deadline", "cancelled" or "shutdown") was stopped before all its pairs were scored;
    its scores and exit layers are empty.
    """

    scores: list[np.ndarray]
    exit_layers: list[np.ndarray]  # int32 per pair: the request's layer, or its prefilter layer in a cascade
    abandoned: dict[int, str]
    batches: list[MicroBatch]
    tokens_processed: int  # what the encoder ran: padded tokens for a padding kernel, else real ones


@dataclass(frozen=True)
class DirectCaps:
    """What the reranker enforces itself when called directly, without the tokenizer step before it."""

    max_documents: int
    max_request_tokens: int
    default_deadline_ms: int | None = None


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function in fp32, stable for large magnitudes."""
    return (0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))).astype(np.float32)


class RerankerStep:
    """Validates token tensors of each request, then scores all requests' pairs together.

    Work stops for a request once nobody waits for it (its deadline or a shutdown's grace has
    passed, or its client left the rerank API front): its pairs leave the micro-batches still to
    run, and a running micro-batch stops at the next encoder layer once nobody waits for any of its
    requests.
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
    ) -> tuple[RerankOptions, float]:
        """Options and deadline of a request sent to this model directly, not through the tokenizer step.

        Its parameters are parsed as the tokenizer step would, against the model's positions, and
        this model's own caps apply: documents, tokens, and the default deadline counted from `arrived`.
        """
        options = parse_options(parameters, self.reranker.spec, self.reranker.config.max_position_embeddings)
        caps = self.caps
        if caps is None:
            return options, request_deadline(arrived, options.deadline_ms)
        check_document_count(pairs, caps.max_documents)
        check_request_tokens(tokens, caps.max_request_tokens)
        deadline_ms = options.deadline_ms if options.deadline_ms is not None else caps.default_deadline_ms
        return options, request_deadline(arrived, deadline_ms)

    def prepare(
        self,
        input_ids: np.ndarray,
        lengths: np.ndarray,
        options: RerankOptions,
        deadline: float = NO_DEADLINE,
        request_id: str = "",
    ) -> ScoreRequest:
        """Check one request's ragged row (ids end to end, per-pair lengths) against what protects this process.

        `options` are trusted (the tokenizer step or `direct_options` validated them) but for their
        exits, which must exist. Raises InvalidRequestError when the tensors disagree, the options
        name an exit the checkpoint lacks, a pair is longer than the request's `max_length` or the
        model's positions, or an id is outside the vocabulary.
        """
        config, spec = self.reranker.config, self.reranker.spec
        exits = [(options.layer, options.dim)]
        if options.prefilter is not None:
            exits.append((options.prefilter.layer, options.prefilter.dim))
        if any(layer not in spec.layer_indices or dim not in spec.dim_indices for layer, dim in exits):
            raise InvalidRequestError(f"'_options' names an exit this checkpoint lacks: {exits}", "bad_tensor")
        longest = min(options.max_length, config.max_position_embeddings)
        ids, lengths = input_ids.reshape(-1), lengths.reshape(-1)
        if lengths.size == 0 or int(lengths.astype(np.int64).sum()) != ids.size:
            raise InvalidRequestError(
                f"'_lengths' must add up to the {ids.size} ids of '_input_ids', one entry per pair", "bad_tensor"
            )
        if lengths.min() < 1 or lengths.max() > longest:
            raise InvalidRequestError(
                f"every pair must hold between 1 and max_length={longest} tokens, "
                f"got {int(lengths.min())} to {int(lengths.max())}",
                "bad_tensor",
            )
        if ids.min() < 0 or ids.max() >= config.vocab_size:
            raise InvalidRequestError(f"token ids must lie between 0 and {config.vocab_size - 1}", "bad_tensor")
        return ScoreRequest(np.split(ids, np.cumsum(lengths)[:-1]), options, float(deadline), request_id)

    def score(self, requests: Sequence[ScoreRequest]) -> ScoredBatch:
        """Scores per request (sigmoid where asked): plain requests share one plan, each cascade runs its own."""
        logits = [np.empty(len(request.rows), dtype=np.float32) for request in requests]
        exit_layers = [np.full(len(request.rows), request.options.layer, dtype=np.int32) for request in requests]
        abandoned: dict[int, str] = {}
        plain = [i for i, request in enumerate(requests) if request.options.prefilter is None]
        batches = self._score_plain(requests, plain, logits, abandoned)
        for i, request in enumerate(requests):
            if request.options.prefilter is None:
                continue
            try:
                batches += self._score_cascade(request, logits[i], exit_layers[i])
            except WorkAbandoned:
                abandoned[i] = self.given_up(request) or "deadline"
        empty = np.empty(0, dtype=np.float32)
        scores = [
            empty if i in abandoned else sigmoid(values) if request.options.normalize else values
            for i, (request, values) in enumerate(zip(requests, logits, strict=True))
        ]
        exit_layers = [empty.astype(np.int32) if i in abandoned else exits for i, exits in enumerate(exit_layers)]
        processed = sum(batch.padded_tokens if self._pads else batch.real_tokens for batch in batches)
        return ScoredBatch(scores, exit_layers, abandoned, batches, processed)

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
            if all(self.given_up(request) for request in requests):
                raise WorkAbandoned

        return stop_check

    def _score_plain(
        self,
        requests: Sequence[ScoreRequest],
        plain: Sequence[int],
        logits: list[np.ndarray],
        abandoned: dict[int, str],
    ) -> list[MicroBatch]:
        """Raw logits of the `plain` requests from one plan over all their pairs, written into `logits`.

        Before each micro-batch the pairs of requests nobody waits for leave it; a micro-batch stops
        between layers once nobody waits for any of its requests. Returns the micro-batches that ran.
        """
        slots = [(i, j) for i in plain for j in range(len(requests[i].rows))]
        rows = [requests[i].rows[j] for i, j in slots]
        layers = [requests[i].options.layer for i, _ in slots]
        ran: list[MicroBatch] = []
        for batch in self._plan(rows, layers):
            for i in {slots[k][0] for k in batch.indices} - abandoned.keys():
                reason = self.given_up(requests[i])
                if reason:
                    abandoned[i] = reason
            chosen = [k for k in batch.indices if slots[k][0] not in abandoned]
            if not chosen:
                continue
            owners = {slots[k][0] for k in chosen}
            try:
                values = self.reranker.logits(
                    np.concatenate([rows[k] for k in chosen]),
                    [len(rows[k]) for k in chosen],
                    batch.layer,
                    [requests[slots[k][0]].options.dim for k in chosen],
                    self._stop_when_all_given_up([requests[i] for i in owners]),
                )
            except WorkAbandoned:
                abandoned.update((i, self.given_up(requests[i]) or "deadline") for i in owners)
                continue
            for k, value in zip(chosen, values, strict=True):
                i, j = slots[k]
                logits[i][j] = value
            lengths = [len(rows[k]) for k in chosen]
            ran.append(MicroBatch(batch.layer, tuple(chosen), max(lengths), sum(lengths)))
        return ran

    def _score_cascade(self, request: ScoreRequest, logits: np.ndarray, exit_layers: np.ndarray) -> list[MicroBatch]:
        """Every row at the prefilter exit; the best `top_k` resumed from that layer's hidden states to the request's.

        Writes the logits and each row's exit layer in place; returns the micro-batches that ran.
        Only the running best `top_k` rows' hidden states are kept between micro-batches, so memory
        stays bounded by `top_k` rows plus one micro-batch. Ties keep the earlier document. Raises
        WorkAbandoned once the request is past its cutoff.
        """
        rows, options = request.rows, request.options
        prefilter = options.prefilter
        assert prefilter is not None
        stop_check = self._stop_when_all_given_up([request])
        kept: dict[int, torch.Tensor] = {}
        batches = self._plan(rows, [prefilter.layer] * len(rows))
        for batch in batches:
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
        finalists = sorted(kept)
        deep = self._plan([rows[i] for i in finalists], [options.layer] * len(finalists))
        for batch in deep:
            chosen = [finalists[j] for j in batch.indices]
            logits[chosen] = self.reranker.continue_logits(
                [kept[i] for i in chosen], prefilter.layer, options.layer, [options.dim] * len(chosen), stop_check
            )
        exit_layers[:] = prefilter.layer
        exit_layers[finalists] = options.layer
        return batches + deep
