"""Cross-request batching plans: group pairs by exit layer, sort by length, cut under a token budget.

Pure and Triton-free. `plan_micro_batches` cuts a known set of pairs (one request, a cascade's
stage); `share_micro_batch` picks the next micro-batch from the requests in flight.
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
    padded_length: int  # the longest pair's length
    real_tokens: int  # tokens of all its pairs, no padding

    @property
    def padded_tokens(self) -> int:
        """Tokens the batch holds when padded to its longest pair."""
        return self.padded_length * len(self.indices)


def plan_micro_batches(
    lengths: Sequence[int], layers: Sequence[int], max_batch_tokens: int, count_padding: bool = True
) -> list[MicroBatch]:
    """Split pairs into micro-batches of one exit layer that stay under a token budget.

    Within a layer, pairs are sorted longest first, so each batch's first pair is its longest.
    The budget counts padded tokens (rows x longest) for kernels that pad, else real tokens.
    A single pair longer than the budget still runs, alone. Deeper layers come first.
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
            sizes = lengths_array[order[start:]]
            cost = np.arange(1, len(sizes) + 1) * sizes[0] if count_padding else np.cumsum(sizes)
            fit = max(1, int(np.searchsorted(cost, max_batch_tokens, side="right")))
            chosen = order[start : start + fit]
            batches.append(MicroBatch(int(layer), tuple(int(i) for i in chosen), int(sizes[0]), int(sizes[:fit].sum())))
            start += len(chosen)
    return batches


def share_micro_batch(
    queues: Sequence[Sequence[int]], max_batch_tokens: int, count_padding: bool = True
) -> list[list[int]]:
    """The next micro-batch, drawn from requests in the order they are to be served.

    Each queue holds the lengths of one request's pairs still to score, longest first. The first
    request gives its longest pairs, cut under the budget as `plan_micro_batches` cuts; the others
    add pairs no longer than the batch's longest while the budget holds, so sharing a batch never
    lengthens it for the request served first. Returns, per queue, the positions taken from it.
    """
    if max_batch_tokens < 1:
        raise ValueError("max_batch_tokens must be positive")
    if not queues or not queues[0]:
        raise ValueError("the first request must have a pair to score")
    first = np.asarray(queues[0], dtype=np.int64)
    cost = np.arange(1, len(first) + 1) * first[0] if count_padding else np.cumsum(first)
    fit = max(1, int(np.searchsorted(cost, max_batch_tokens, side="right")))
    longest, rows, tokens = int(first[0]), fit, int(first[:fit].sum())
    taken = [list(range(fit))]
    for queue in queues[1:]:
        chosen = []
        for position, length in enumerate(queue):
            if length > longest:
                continue
            cost = (rows + 1) * longest if count_padding else tokens + length
            if cost > max_batch_tokens:
                break
            chosen.append(position)
            rows, tokens = rows + 1, tokens + length
        taken.append(chosen)
    return taken
