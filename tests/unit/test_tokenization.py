"""Pair encoding: the template, truncation of the document only, flags and errors."""

from __future__ import annotations

import random

import pytest

from mmrerank.dev.corpus import text
from mmrerank.serving.pair_tokenizer import PairTokenizer, PairTooLongError, QueryTooLongError

QUERY = "what is the history of the river"
LONG_DOCUMENT = "the river library holds the history of the city and its water " * 40


def token_ids(pair_tokenizer, text: str) -> list[int]:
    return pair_tokenizer.tokenizer.encode(text, add_special_tokens=False).ids


def test_pairs_follow_the_template_end_to_end_without_padding(pair_tokenizer):
    encoded = pair_tokenizer.encode(QUERY, ["water", "mji maji"], max_length=512)
    query_ids = token_ids(pair_tokenizer, QUERY)
    expected = [[2, *query_ids, 1, *token_ids(pair_tokenizer, doc), 1] for doc in ["water", "mji maji"]]
    assert [row.tolist() for row in encoded.rows()] == expected
    assert encoded.input_ids.tolist() == expected[0] + expected[1]
    assert encoded.lengths.tolist() == [len(expected[0]), len(expected[1])]


def test_truncation_cuts_only_the_document(pair_tokenizer):
    query_ids = token_ids(pair_tokenizer, QUERY)
    encoded = pair_tokenizer.encode(QUERY, [LONG_DOCUMENT, "water"], max_length=64)
    assert encoded.lengths[0] == 64
    assert encoded.truncated.tolist() == [True, False]
    row = encoded.rows()[0].tolist()
    assert row[: len(query_ids) + 2] == [2, *query_ids, 1]
    assert row[-1] == 1
    full_doc = token_ids(pair_tokenizer, LONG_DOCUMENT)
    assert row[len(query_ids) + 2 : -1] == full_doc[: 64 - len(query_ids) - 3]


def test_a_pair_exactly_at_the_limit_is_not_flagged(pair_tokenizer):
    natural = pair_tokenizer.encode(QUERY, ["water river"], max_length=512).lengths[0]
    exact = pair_tokenizer.encode(QUERY, ["water river"], max_length=int(natural))
    assert exact.lengths.tolist() == [natural] and exact.truncated.tolist() == [False]


def test_no_truncation_names_the_over_long_document(pair_tokenizer):
    with pytest.raises(PairTooLongError, match="document 1 makes a pair of .* over max_length=64") as error:
        pair_tokenizer.encode(QUERY, ["water", LONG_DOCUMENT], max_length=64, truncate=False)
    assert error.value.index == 1


def test_a_query_with_no_room_for_a_document_is_an_error(pair_tokenizer):
    query_tokens = len(token_ids(pair_tokenizer, QUERY))
    with pytest.raises(QueryTooLongError, match=f"the query has {query_tokens} tokens"):
        pair_tokenizer.encode(QUERY, ["water"], max_length=query_tokens + 3)
    assert pair_tokenizer.encode(QUERY, ["water"], max_length=query_tokens + 4).lengths.tolist() == [query_tokens + 4]


def test_special_token_text_in_a_document_tokenizes_as_the_reference_does(pair_tokenizer, reference):
    encoded = pair_tokenizer.encode(QUERY, ["<bos> water <eos>"], max_length=512)
    assert encoded.rows()[0].tolist() == reference.token_ids(QUERY, "<bos> water <eos>")


def test_long_documents_are_cut_before_tokenizing_without_changing_the_kept_tokens(pair_tokenizer, monkeypatch):
    document = text(random.Random(4), 60_000)
    full = token_ids(pair_tokenizer, document)
    seen: list[int] = []
    original = pair_tokenizer.tokenizer.encode_batch

    def spy(texts, **kwargs):
        seen.extend(len(t) for t in texts)
        return original(texts, **kwargs)

    monkeypatch.setattr(pair_tokenizer.tokenizer, "encode_batch", spy)
    encoded = pair_tokenizer.encode(QUERY, [document], max_length=512)
    query_tokens = len(token_ids(pair_tokenizer, QUERY))
    room = 512 - query_tokens - 3
    assert max(seen) <= pair_tokenizer.character_budget(room) < len(document)
    assert encoded.input_ids[query_tokens + 2 : -1].tolist() == full[:room]
    assert encoded.truncated.tolist() == [True]


def test_a_giant_single_word_document_is_cheap_and_truncated(pair_tokenizer):
    encoded = pair_tokenizer.encode(QUERY, ["x" * 20_000_000], max_length=300)
    assert encoded.lengths.tolist() == [300] and encoded.truncated.tolist() == [True]
    with pytest.raises(PairTooLongError, match="makes a pair of at least .* tokens, over max_length=300"):
        pair_tokenizer.encode(QUERY, ["x" * 20_000_000], max_length=300, truncate=False)


def test_a_giant_query_is_refused_without_tokenizing_it_whole(pair_tokenizer):
    with pytest.raises(QueryTooLongError, match="leaves no room"):
        pair_tokenizer.encode("y" * 20_000_000, ["water"], max_length=512)


def test_a_roberta_style_template_is_followed_and_only_the_document_is_cut(roberta_checkpoint):
    from transformers import PreTrainedTokenizerFast

    pair_tokenizer = PairTokenizer.from_file(roberta_checkpoint / "tokenizer.json")
    reference = PreTrainedTokenizerFast(tokenizer_file=str(roberta_checkpoint / "tokenizer.json"))
    assert pair_tokenizer.special_tokens_per_pair == 4
    assert (pair_tokenizer.prefix, pair_tokenizer.middle, pair_tokenizer.suffix) == ([2], [1, 1], [1])
    encoded = pair_tokenizer.encode(QUERY, ["water", LONG_DOCUMENT], max_length=64)
    assert encoded.rows()[0].tolist() == reference(QUERY, "water")["input_ids"]
    query_ids = token_ids(pair_tokenizer, QUERY)
    cut = encoded.rows()[1].tolist()
    assert len(cut) == 64 and encoded.truncated.tolist() == [False, True]
    assert cut[: len(query_ids) + 3] == [2, *query_ids, 1, 1] and cut[-1] == 1
    assert cut[len(query_ids) + 3 : -1] == token_ids(pair_tokenizer, LONG_DOCUMENT)[: 64 - len(query_ids) - 4]
