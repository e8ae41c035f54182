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
    document: str | None = None  # the text, when return_documents=True


@dataclass(frozen=True)
class RerankResponse:
    """Results sorted by score, best first, and the exit asked for (None: the server's default)."""

    results: tuple[RerankResult, ...]
    layer: int | None
    dim: int | None

    def __iter__(self) -> Iterator[RerankResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)
