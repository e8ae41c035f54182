"""Score many pairs from many requests in one go: plan micro-batches, run them, scatter back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmrerank.model import MatryoshkaReranker
from mmrerank.planner import MicroBatch, plan_micro_batches


@dataclass(frozen=True)
class PairTask:
    """One pair to score: its token ids (unpadded) and the exit it asks for."""

    token_ids: np.ndarray
    layer: int
    dim: int


@dataclass(frozen=True)
class ScoringResult:
    """Raw logits in task order, and the micro-batches that produced them."""

    logits: np.ndarray
    batches: list[MicroBatch]

    @property
    def padded_tokens(self) -> int:
        """Tokens the encoder processed, padding included."""
        return sum(batch.padded_tokens for batch in self.batches)


def pad_rows(rows: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-D id arrays into [rows, longest] and return it with the lengths."""
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    padded = np.full((len(rows), int(lengths.max(initial=0))), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return padded, lengths


def score_tasks(
    reranker: MatryoshkaReranker,
    tasks: Sequence[PairTask],
    max_batch_tokens: int,
) -> ScoringResult:
    """Raw logits for every task, in order, computed in length-sorted micro-batches per exit layer."""
    logits = np.empty(len(tasks), dtype=np.float32)
    batches = plan_micro_batches(
        [len(task.token_ids) for task in tasks], [task.layer for task in tasks], max_batch_tokens
    )
    pad_id = reranker.config.pad_token_id
    for batch in batches:
        chosen = [tasks[i] for i in batch.indices]
        ids, lengths = pad_rows([task.token_ids for task in chosen], pad_id)
        logits[list(batch.indices)] = reranker.logits(ids, lengths, batch.layer, [task.dim for task in chosen])
    return ScoringResult(logits=logits, batches=batches)
