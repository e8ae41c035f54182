"""Pair encoding: the template, truncation of the document only, flags and errors."""

from __future__ import annotations

import pytest

from mmrerank.tokenization import PairTooLongError, QueryTooLongError

QUERY = "what is the history of the river"
LONG_DOCUMENT = "the river library holds the history of the city and its water " * 40


def test_pairs_follow_the_template(pair_tokenizer):
    encoded = pair_tokenizer.encode(QUERY, ["water", "mji maji"], max_length=512)
    query_ids = pair_tokenizer.token_ids([QUERY])[0]
    for row, doc in enumerate(["water", "mji maji"]):
        doc_ids = pair_tokenizer.token_ids([doc])[0]
        expected = [2, *query_ids, 1, *doc_ids, 1]
        assert encoded.input_ids[row, : encoded.lengths[row]].tolist() == expected
    assert encoded.input_ids[0, encoded.lengths[0] :].tolist() == [0] * (encoded.lengths[1] - encoded.lengths[0])


def test_truncation_cuts_only_the_document(pair_tokenizer):
    query_ids = pair_tokenizer.token_ids([QUERY])[0]
    encoded = pair_tokenizer.encode(QUERY, [LONG_DOCUMENT, "water"], max_length=64)
    assert encoded.lengths[0] == 64
    assert encoded.truncated.tolist() == [True, False]
    row = encoded.input_ids[0].tolist()
    assert row[: len(query_ids) + 2] == [2, *query_ids, 1]
    assert row[-1] == 1
    full_doc = pair_tokenizer.token_ids([LONG_DOCUMENT])[0]
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
    query_tokens = len(pair_tokenizer.token_ids([QUERY])[0])
    with pytest.raises(QueryTooLongError, match=f"the query has {query_tokens} tokens"):
        pair_tokenizer.encode(QUERY, ["water"], max_length=query_tokens + 3)
    assert pair_tokenizer.encode(QUERY, ["water"], max_length=query_tokens + 4).lengths.tolist() == [query_tokens + 4]


def test_special_token_text_in_a_document_tokenizes_as_the_reference_does(pair_tokenizer, reference):
    encoded = pair_tokenizer.encode(QUERY, ["<bos> water <eos>"], max_length=512)
    assert encoded.input_ids[0, : encoded.lengths[0]].tolist() == reference.token_ids(QUERY, "<bos> water <eos>")
