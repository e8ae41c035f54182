"""Pair encoding that follows the checkpoint's own template and cuts the document, never the query.

transformers builds a pair from the `post_processor` in `tokenizer.json` (mmBERT's is
`<bos> query <eos> document <eos>`, RoBERTa's `<s> query </s></s> document </s>`); so does this,
after cutting the document so that the whole pair fits the token limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

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
    """Token ids of every (query, document) pair of a request, concatenated without padding."""

    input_ids: np.ndarray  # int32 [total tokens]: pair 0, then pair 1, ...
    lengths: np.ndarray  # int32 [pairs]: tokens per pair, special tokens included
    truncated: np.ndarray  # bool [pairs]: whether the document was cut

    def rows(self) -> list[np.ndarray]:
        """Each pair's ids as its own array (views into `input_ids`)."""
        return np.split(self.input_ids, np.cumsum(self.lengths)[:-1]) if self.lengths.size else []


class PairTokenizer:
    """Encodes one query against many documents under a per-pair token cap."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.prefix, self.middle, self.suffix = pair_template(tokenizer)
        self.special_tokens_per_pair = len(self.prefix) + len(self.middle) + len(self.suffix)
        self.longest_token_chars = max(len(token) for token in tokenizer.get_vocab())

    @classmethod
    def from_file(cls, path: str | Path) -> PairTokenizer:
        """Load a `tokenizer.json` (vocabulary, normalizer and pair template)."""
        return cls(Tokenizer.from_file(str(path)))

    @property
    def min_max_length(self) -> int:
        """The smallest token limit that leaves room for one document token (and an empty query)."""
        return self.special_tokens_per_pair + 1

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
        query_encoding = self.tokenizer.encode(query[: self.character_budget(max_length)], add_special_tokens=False)
        room = max_length - len(query_encoding.ids) - self.special_tokens_per_pair
        if room < 1:
            raise QueryTooLongError(
                f"the query has {len(query_encoding.ids)} tokens, which leaves no room for a document "
                f"within max_length={max_length}"
            )
        budget = self.character_budget(room)
        encodings = self.tokenizer.encode_batch([document[:budget] for document in documents], add_special_tokens=False)
        truncated = np.array([len(encoding.ids) > room for encoding in encodings], dtype=bool)
        if not truncate and truncated.any():
            index = int(np.flatnonzero(truncated)[0])
            pair_tokens = len(encodings[index].ids) + len(query_encoding.ids) + self.special_tokens_per_pair
            raise PairTooLongError(index, pair_tokens, max_length, at_least=len(documents[index]) > budget)
        head = [*self.prefix, *query_encoding.ids, *self.middle]
        kept = [encoding.ids[:room] for encoding in encodings]
        lengths = np.array([len(head) + len(ids) + len(self.suffix) for ids in kept], dtype=np.int32)
        pieces = (part for ids in kept for part in (head, ids, self.suffix))
        input_ids = np.fromiter((i for part in pieces for i in part), dtype=np.int32, count=int(lengths.sum()))
        return EncodedPairs(input_ids=input_ids, lengths=lengths, truncated=truncated)


def pair_template(tokenizer: Tokenizer) -> tuple[list[int], list[int], list[int]]:
    """The special tokens the post-processor puts before, between and after the two texts of a pair.

    Read once from a probe pair through `post_process`: mmBERT's template gives ([<bos>], [<eos>],
    [<eos>]), RoBERTa's ([<s>], [</s>, </s>], [</s>]).
    """
    probes = [tokenizer.encode(text, add_special_tokens=False) for text in ("a", "b")]
    first, second = probes[0].ids, probes[1].ids
    pair = tokenizer.post_process(probes[0], probes[1]).ids
    for start in range(len(pair) - len(first) + 1):
        after = start + len(first)
        if first and pair[start:after] == first:
            for middle_end in range(after, len(pair) - len(second) + 1):
                if second and pair[middle_end : middle_end + len(second)] == second:
                    return pair[:start], pair[after:middle_end], pair[middle_end + len(second) :]
    raise ValueError("the tokenizer's pair template does not put the query, then the document, each in one piece")
