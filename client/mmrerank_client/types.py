"""Results returned by the client: frozen dataclasses."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class RerankResult:
    """One document's place in the ranking."""

    index: int  # position in the documents sent
    score: float
    num_tokens: int  # tokens scored for this (query, document) pair
    truncated: bool  # whether the document was cut to fit max_length
    exit_layer: int  # the exit that produced the score: the request's layer, or the prefilter layer in a cascade
    document: str | None = None  # the text, when return_documents=True


@dataclass(frozen=True)
class RerankResponse:
    """Results best first, and the exit asked for (None: the server's default).

    In a cascade the documents continued to the deep exit come first, by their final score, then
    the rest by their prefilter score; otherwise simply by score.
    """

    results: tuple[RerankResult, ...]
    layer: int | None
    dim: int | None

    def __iter__(self) -> Iterator[RerankResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)


@dataclass(frozen=True)
class ServedModel:
    """What the server says about the checkpoint it serves (the `rerank` model's configuration)."""

    checkpoint: str  # the checkpoint's name (or its directory's)
    layer_indices: tuple[int, ...]  # exit layers a request may ask for
    dim_indices: tuple[int, ...]  # head widths a request may ask for
    default_layer: int
    default_dim: int
    max_tokens_per_pair: int  # the server's cap; longer pairs are cut (or refused with truncate=False)
    max_documents: int  # documents per request
    max_request_tokens: int  # tokens of all of a request's pairs after truncation
    request_parameters: tuple[str, ...]  # parameter names the server accepts
