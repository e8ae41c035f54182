"""Pair encoding `<bos> query <eos> document <eos>` that truncates the document, never the query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

# <bos>, <eos> after the query, <eos> after the document.
SPECIAL_TOKENS_PER_PAIR = 3
# Tokens kept beyond the cut when a document is pre-cut (see PairTokenizer.character_budget).
PRE_CUT_MARGIN_TOKENS = 64


class QueryTooLongError(ValueError):
    """The query leaves no room for a document within the token limit."""


class PairTooLongError(ValueError):
    """A pair exceeds the token limit and truncation was switched off."""

    def __init__(self, index: int, num_tokens: int, max_length: int, at_least: bool = False) -> None:
        count = f"at least {num_tokens}" if at_least else str(num_tokens)
        super().__init__(
            f"document {index} makes a pair of {count} tokens, over max_length={max_length}; "
            "shorten it or allow truncation"
        )
        self.index = index


@dataclass(frozen=True)
class EncodedPairs:
    """Token ids of each (query, document) pair, right-padded, with per-pair facts."""

    input_ids: np.ndarray  # int32 [pairs, longest pair], padded with the pad id
    lengths: np.ndarray  # int32 [pairs]: tokens per pair, special tokens included
    truncated: np.ndarray  # bool [pairs]: whether the document was cut


class PairTokenizer:
    """Encodes one query against many documents under a per-pair token cap."""

    def __init__(self, tokenizer: Tokenizer, bos_id: int, eos_id: int, pad_id: int) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.longest_token_chars = max(len(token) for token in tokenizer.get_vocab())

    @classmethod
    def from_file(cls, path: str | Path, bos_id: int, eos_id: int, pad_id: int) -> PairTokenizer:
        """Load a `tokenizer.json`."""
        return cls(Tokenizer.from_file(str(path)), bos_id, eos_id, pad_id)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text without special tokens."""
        return [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def character_budget(self, tokens: int) -> int:
        """Characters that surely hold more than `tokens` tokens (no token is longer than the longest vocab entry).

        Documents longer than this are cut before tokenizing, so a 100 MB document costs what a
        32K-token one does. The margin keeps the cut far from the tokens that are kept, where BPE
        or Unigram segmentation could differ from that of the whole text.
        """
        return (tokens + PRE_CUT_MARGIN_TOKENS) * self.longest_token_chars

    def encode(self, query: str, documents: Sequence[str], max_length: int, truncate: bool = True) -> EncodedPairs:
        """Encode every (query, document) pair to at most `max_length` tokens.

        Raises QueryTooLongError when not even one document token fits, and PairTooLongError
        (naming the document's index) for an over-long pair when `truncate` is False.
        """
        query_ids = self.token_ids([query[: self.character_budget(max_length)]])[0]
        room = max_length - len(query_ids) - SPECIAL_TOKENS_PER_PAIR
        if room < 1:
            raise QueryTooLongError(
                f"the query has {len(query_ids)} tokens, which leaves no room for a document "
                f"within max_length={max_length}"
            )
        budget = self.character_budget(room)
        document_ids = self.token_ids([document[:budget] for document in documents])
        if not truncate:
            for index, ids in enumerate(document_ids):
                if len(ids) > room:
                    pair_tokens = len(ids) + len(query_ids) + SPECIAL_TOKENS_PER_PAIR
                    raise PairTooLongError(index, pair_tokens, max_length, at_least=len(documents[index]) > budget)
        head = [self.bos_id, *query_ids, self.eos_id]
        kept = [min(len(ids), room) for ids in document_ids]
        lengths = np.array([len(head) + n + 1 for n in kept], dtype=np.int32)
        input_ids = np.full((len(documents), int(lengths.max(initial=0))), self.pad_id, dtype=np.int32)
        for row, (ids, n) in enumerate(zip(document_ids, kept, strict=True)):
            pair = head + ids[:n] + [self.eos_id]
            input_ids[row, : len(pair)] = pair
        truncated = np.array([len(ids) > n for ids, n in zip(document_ids, kept, strict=True)], dtype=bool)
        return EncodedPairs(input_ids=input_ids, lengths=lengths, truncated=truncated)
