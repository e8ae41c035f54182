"""The `rerank` model's contract as both ends read it: names, outputs and the limits of its values.

Pure Python: the typed client, the rerank API front, the launcher and both Triton steps import
it, so a parameter, an output or a limit is written down once. A deployment's caps (documents,
tokens per pair and per request) are the tokenizer config's parameters; the launcher hands the
same values to the reranker, which enforces them when it is called directly.
"""

from __future__ import annotations

import math

MODEL = "rerank"
PARAMETERS = (
    "layer", "dim", "normalize", "max_length", "truncate", "prefilter_layer", "prefilter_dim", "prefilter_top_k",
    "deadline_ms",
)  # fmt: skip
PREFILTER_PARAMETERS = ("prefilter_layer", "prefilter_dim", "prefilter_top_k")
OUTPUTS = ("scores", "num_tokens", "truncated", "exit_layer")

# The longest deadline a request may ask for: a day.
MAX_DEADLINE_MS = 86_400_000


def pair_token_cap(configured: int, positions: int) -> int:
    """Tokens one pair may hold, special tokens included: the configured cap, never past the model's positions."""
    return min(configured, positions)


def deadline_ms_problem(value: int) -> str | None:
    """Why `value` cannot be a request's `deadline_ms`, or None when it can."""
    if 1 <= value <= MAX_DEADLINE_MS:
        return None
    return f"parameter 'deadline_ms' must be between 1 and {MAX_DEADLINE_MS}, got {value}"


def deadline_ms(timeout_seconds: float) -> int:
    """A wait in seconds as the `deadline_ms` parameter: whole milliseconds, 1 to MAX_DEADLINE_MS."""
    return min(MAX_DEADLINE_MS, max(1, math.ceil(timeout_seconds * 1000)))
