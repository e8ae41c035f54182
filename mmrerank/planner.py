"""Cross-request batching plan: group pairs by exit layer, sort by length, cut under a token budget.

Pure and Triton-free: the Triton model hands it every pair of every request in one `execute`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MicroBatch:
    """Pairs (indices into the caller's list) that run together, all exiting at `layer`."""

    layer: int
    indices: tuple[int, ...]
    padded_length: int

    @property
    def padded_tokens(self) -> int:
        """Tokens the encoder processes for this batch, padding included."""
        return self.padded_length * len(self.indices)


def plan_micro_batches(
    lengths: Sequence[int], layers: Sequence[int], max_batch_tokens: int, max_batch_pairs: int | None = None
) -> list[MicroBatch]:
    """Split pairs into micro-batches of one exit layer whose padded size stays under the budget.

    Within a layer, pairs are sorted longest first, so each batch pads to its first pair's
    length. A single pair longer than the budget still runs, alone. Deeper layers come first.
    """
    if len(lengths) != len(layers):
        raise ValueError("lengths and layers must have one entry per pair")
    if max_batch_tokens < 1:
        raise ValueError("max_batch_tokens must be positive")
    lengths_array = np.asarray(lengths, dtype=np.int64)
    layers_array = np.asarray(layers, dtype=np.int64)
    batches: list[MicroBatch] = []
    for layer in sorted(set(layers_array.tolist()), reverse=True):
        members = np.flatnonzero(layers_array == layer)
        order = members[np.argsort(-lengths_array[members], kind="stable")]
        start = 0
        while start < len(order):
            padded_length = int(lengths_array[order[start]])
            fit = max(1, max_batch_tokens // max(padded_length, 1))
            if max_batch_pairs is not None:
                fit = min(fit, max_batch_pairs)
            chosen = order[start : start + fit]
            batches.append(MicroBatch(int(layer), tuple(int(i) for i in chosen), padded_length))
            start += len(chosen)
    return batches
