"""The reranker's serving step without Triton: score the pairs of many requests in one plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mmrerank.model import MatryoshkaReranker
from mmrerank.requests import InvalidRequest, RerankOptions, parse_options
from mmrerank.scoring import PairTask, ScoringResult, score_tasks


@dataclass(frozen=True)
class ScoreRequest:
    """One validated request: its pairs as unpadded id rows, and its options."""

    rows: list[np.ndarray]
    options: RerankOptions


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function in fp32, stable for large magnitudes."""
    return (0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))).astype(np.float32)


class ScoreStep:
    """Validates token tensors of each request, then scores all requests' pairs together."""

    def __init__(self, reranker: MatryoshkaReranker, max_batch_tokens: int) -> None:
        self.reranker = reranker
        self.max_batch_tokens = max_batch_tokens

    def prepare(self, input_ids: np.ndarray, lengths: np.ndarray, parameters: Mapping[str, object]) -> ScoreRequest:
        """Check one request's tensors and parameters; raise InvalidRequest if they are unusable."""
        config = self.reranker.config
        options = parse_options(parameters, self.reranker.spec, config.max_position_embeddings)
        lengths = lengths.reshape(-1)
        if input_ids.ndim != 2 or input_ids.shape[0] != lengths.size:
            raise InvalidRequest(
                f"'_input_ids' must be [pairs, tokens] with one row per length, got {list(input_ids.shape)}",
                "bad_tensor",
            )
        if lengths.size and (lengths.min() < 1 or lengths.max() > input_ids.shape[1]):
            raise InvalidRequest(f"'_lengths' must lie between 1 and {input_ids.shape[1]}", "bad_tensor")
        if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= config.vocab_size):
            raise InvalidRequest(f"token ids must lie between 0 and {config.vocab_size - 1}", "bad_tensor")
        return ScoreRequest([input_ids[row, : lengths[row]] for row in range(lengths.size)], options)

    def score(self, requests: Sequence[ScoreRequest]) -> tuple[list[np.ndarray], ScoringResult]:
        """Scores per request (sigmoid where asked), from one plan over every pair of every request."""
        tasks = [
            PairTask(row, request.options.layer, request.options.dim) for request in requests for row in request.rows
        ]
        result = score_tasks(self.reranker, tasks, self.max_batch_tokens)
        scores: list[np.ndarray] = []
        start = 0
        for request in requests:
            logits = result.logits[start : start + len(request.rows)]
            scores.append(sigmoid(logits) if request.options.normalize else logits.copy())
            start += len(request.rows)
        return scores, result
