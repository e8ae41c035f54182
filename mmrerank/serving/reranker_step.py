"""The reranker model's step without Triton: check each request's token rows, score all requests in one plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmrerank.model import MatryoshkaReranker
from mmrerank.serving.contract import InvalidRequestError, Prefilter, RerankOptions, parse_options
from mmrerank.serving.planner import MicroBatch, plan_micro_batches


@dataclass(frozen=True)
class ScoreRequest:
    """One validated request: its pairs as unpadded id rows, and its options."""

    rows: list[np.ndarray]
    options: RerankOptions


@dataclass(frozen=True)
class ScoredBatch:
    """Scores per request, the exit layer behind each score, and the micro-batches that ran (for metrics)."""

    scores: list[np.ndarray]
    exit_layers: list[np.ndarray]  # int32 per pair: the request's layer, or its prefilter layer in a cascade
    batches: list[MicroBatch]
    tokens_processed: int  # what the encoder ran: padded tokens for a padding kernel, else real ones


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function in fp32, stable for large magnitudes."""
    return (0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))).astype(np.float32)


class RerankerStep:
    """Validates token tensors of each request, then scores all requests' pairs together."""

    def __init__(self, reranker: MatryoshkaReranker, max_batch_tokens: int) -> None:
        self.reranker = reranker
        self.max_batch_tokens = max_batch_tokens

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

    def prepare(self, input_ids: np.ndarray, lengths: np.ndarray, parameters: Mapping[str, object]) -> ScoreRequest:
        """Check one request's ragged row (ids end to end, per-pair lengths) and parameters.

        Raises InvalidRequestError when the tensors disagree, a pair is longer than the request's
        `max_length` or the model's positions, or an id is outside the vocabulary.
        """
        config = self.reranker.config
        options = parse_options(parameters, self.reranker.spec, config.max_position_embeddings)
        ids, lengths = input_ids.reshape(-1), lengths.reshape(-1)
        if lengths.size == 0 or int(lengths.astype(np.int64).sum()) != ids.size:
            raise InvalidRequestError(
                f"'_lengths' must add up to the {ids.size} ids of '_input_ids', one entry per pair", "bad_tensor"
            )
        if lengths.min() < 1 or lengths.max() > options.max_length:
            raise InvalidRequestError(
                f"every pair must hold between 1 and max_length={options.max_length} tokens, "
                f"got {int(lengths.min())} to {int(lengths.max())}",
                "bad_tensor",
            )
        if ids.min() < 0 or ids.max() >= config.vocab_size:
            raise InvalidRequestError(f"token ids must lie between 0 and {config.vocab_size - 1}", "bad_tensor")
        return ScoreRequest(np.split(ids, np.cumsum(lengths)[:-1]), options)

    def score(self, requests: Sequence[ScoreRequest]) -> ScoredBatch:
        """Scores per request (sigmoid where asked): plain requests share one plan, each cascade runs its own."""
        logits: list[np.ndarray] = []
        exit_layers: list[np.ndarray] = []
        plain = [request for request in requests if request.options.prefilter is None]
        plain_logits, batches = self._score_plain(plain)
        next_plain = iter(plain_logits)
        for request in requests:
            prefilter = request.options.prefilter
            if prefilter is None:
                logits.append(next(next_plain))
                exit_layers.append(np.full(len(request.rows), request.options.layer, dtype=np.int32))
            else:
                values, exits, cascade_batches = self._score_cascade(request.rows, request.options, prefilter)
                logits.append(values)
                exit_layers.append(exits)
                batches += cascade_batches
        scores = [
            sigmoid(values) if request.options.normalize else values
            for request, values in zip(requests, logits, strict=True)
        ]
        processed = sum(batch.padded_tokens if self._pads else batch.real_tokens for batch in batches)
        return ScoredBatch(scores, exit_layers, batches, processed)

    @property
    def _pads(self) -> bool:
        return self.reranker.kernel.pads

    def _plan(self, rows: Sequence[np.ndarray], layers: Sequence[int]) -> list[MicroBatch]:
        return plan_micro_batches([len(row) for row in rows], layers, self.max_batch_tokens, count_padding=self._pads)

    def _score_plain(self, requests: Sequence[ScoreRequest]) -> tuple[list[np.ndarray], list[MicroBatch]]:
        """Raw logits per request from one plan over all their pairs (grouped by exit layer, sorted by length)."""
        rows = [row for request in requests for row in request.rows]
        layers = [request.options.layer for request in requests for _ in request.rows]
        dims = [request.options.dim for request in requests for _ in request.rows]
        batches = self._plan(rows, layers)
        logits = np.empty(len(rows), dtype=np.float32)
        for batch in batches:
            chosen = list(batch.indices)
            logits[chosen] = self.reranker.logits(
                np.concatenate([rows[i] for i in chosen]),
                [len(rows[i]) for i in chosen],
                batch.layer,
                [dims[i] for i in chosen],
            )
        bounds = np.cumsum([0, *(len(request.rows) for request in requests)])
        return [logits[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)], batches

    def _score_cascade(
        self, rows: Sequence[np.ndarray], options: RerankOptions, prefilter: Prefilter
    ) -> tuple[np.ndarray, np.ndarray, list[MicroBatch]]:
        """Every row at the prefilter exit; the best `top_k` resumed from that layer's hidden states to the request's.

        Only the running best `top_k` rows' hidden states are kept between micro-batches, so memory
        stays bounded by `top_k` rows plus one micro-batch. Ties keep the earlier document.
        """
        logits = np.empty(len(rows), dtype=np.float32)
        kept: dict[int, torch.Tensor] = {}
        batches = self._plan(rows, [prefilter.layer] * len(rows))
        for batch in batches:
            chosen = list(batch.indices)
            logits[chosen], hidden = self.reranker.prefilter(
                np.concatenate([rows[i] for i in chosen]),
                [len(rows[i]) for i in chosen],
                prefilter.layer,
                [prefilter.dim] * len(chosen),
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
                [kept[i] for i in chosen], prefilter.layer, options.layer, [options.dim] * len(chosen)
            )
        exit_layers = np.full(len(rows), prefilter.layer, dtype=np.int32)
        exit_layers[finalists] = options.layer
        return logits, exit_layers, batches + deep
