"""The reranker model's step without Triton: check each request's token rows, score all requests in one plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mmrerank.model import MatryoshkaReranker
from mmrerank.serving.contract import InvalidRequestError, RerankOptions, parse_options
from mmrerank.serving.planner import MicroBatch, plan_micro_batches


@dataclass(frozen=True)
class ScoreRequest:
    """One validated request: its pairs as unpadded id rows, and its options."""

    rows: list[np.ndarray]
    options: RerankOptions


@dataclass(frozen=True)
class ScoredBatch:
    """Scores per request, and the micro-batches that produced them (for metrics)."""

    scores: list[np.ndarray]
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
        """Scores per request (sigmoid where asked), from one plan over every pair of every request."""
        rows = [row for request in requests for row in request.rows]
        layers = [request.options.layer for request in requests for _ in request.rows]
        dims = [request.options.dim for request in requests for _ in request.rows]
        pads = self.reranker.kernel.pads
        batches = plan_micro_batches([len(row) for row in rows], layers, self.max_batch_tokens, count_padding=pads)
        logits = np.empty(len(rows), dtype=np.float32)
        for batch in batches:
            chosen = list(batch.indices)
            logits[chosen] = self.reranker.logits(
                np.concatenate([rows[i] for i in chosen]),
                [len(rows[i]) for i in chosen],
                batch.layer,
                [dims[i] for i in chosen],
            )
        scores: list[np.ndarray] = []
        start = 0
        for request in requests:
            values = logits[start : start + len(request.rows)]
            scores.append(sigmoid(values) if request.options.normalize else values.copy())
            start += len(request.rows)
        processed = sum(batch.padded_tokens if pads else batch.real_tokens for batch in batches)
        return ScoredBatch(scores, batches, processed)
