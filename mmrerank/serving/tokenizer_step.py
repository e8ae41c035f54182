"""The tokenizer model's step without Triton: validate one request and encode its pairs."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mmrerank.layout import CheckpointLayout
from mmrerank.serving.contract import (
    RequestOptions,
    RequestRefused,
    check_document_count,
    check_request_bytes,
    check_request_tokens,
    decode_texts,
    parse_options,
)
from mmrerank.serving.deadlines import request_deadline
from mmrerank.serving.pair_tokenizer import EncodedPairs, PairTokenizer, PairTooLongError, QueryTooLongError
from mmrerank_client.schema import pair_token_cap


@dataclass(frozen=True)
class TokenizedRequest:
    """One request's encoded pairs, its validated options, and the monotonic instant after which nobody waits."""

    pairs: EncodedPairs
    options: RequestOptions
    deadline: float


class TokenizerStep:
    """Validates one request (parameters, documents, UTF-8) and encodes its (query, document) pairs."""

    def __init__(
        self,
        layout: CheckpointLayout,
        max_documents: int,
        max_tokens_per_pair: int,
        max_text_bytes: int,
        max_request_tokens: int,
        max_request_bytes: int,
        default_deadline_ms: int | None = None,
    ) -> None:
        self.spec = layout.spec
        self.max_documents = max_documents
        self.max_text_bytes = max_text_bytes
        self.max_request_tokens = max_request_tokens
        self.max_request_bytes = max_request_bytes
        self.default_deadline_ms = default_deadline_ms
        self.max_tokens_per_pair = pair_token_cap(max_tokens_per_pair, layout.encoder_config.max_position_embeddings)
        self.tokenizer = PairTokenizer.from_file(layout.tokenizer_file)

    def run(
        self, query: np.ndarray, documents: np.ndarray, parameters: Mapping[str, object], arrived: float | None = None
    ) -> TokenizedRequest:
        """Encode one request, or raise RequestRefused saying what is wrong with it.

        Its deadline counts from `arrived` (the monotonic clock; now by default: when this step
        started on the request, the earliest point the server's models see): the request's
        `deadline_ms`, else the server's default, else none.
        """
        arrived = time.monotonic() if arrived is None else arrived
        options = parse_options(parameters, self.spec, self.max_tokens_per_pair, self.tokenizer.min_max_length)
        if query.size != 1:
            raise RequestRefused(f"'query' must hold exactly one text, got {query.size}", "bad_tensor")
        check_document_count(documents.size, self.max_documents)
        check_request_bytes(query, documents, self.max_request_bytes)
        query_text = decode_texts(query, "query", self.max_text_bytes)[0]
        document_texts = decode_texts(documents, "document", self.max_text_bytes)
        try:
            encoded = self.tokenizer.encode(query_text, document_texts, options.max_length, options.truncate)
        except QueryTooLongError as error:
            raise RequestRefused(str(error), "query_too_long") from error
        except PairTooLongError as error:
            raise RequestRefused(str(error), "pair_too_long") from error
        check_request_tokens(int(encoded.lengths.sum()), self.max_request_tokens)
        deadline_ms = options.deadline_ms if options.deadline_ms is not None else self.default_deadline_ms
        return TokenizedRequest(encoded, options, request_deadline(arrived, deadline_ms))
