"""The tokenizer's serving step without Triton: validate a request and encode its pairs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mmrerank.checkpoint import CONFIG_FILE, MATRYOSHKA_FILE, TOKENIZER_FILE, read_encoder_config, read_matryoshka_spec
from mmrerank.requests import InvalidRequest, check_document_count, decode_texts, parse_options
from mmrerank.tokenization import EncodedPairs, PairTokenizer, PairTooLongError, QueryTooLongError


class TokenizeStep:
    """Validates one request (parameters, documents, UTF-8) and encodes its (query, document) pairs."""

    def __init__(
        self, checkpoint_dir: str | Path, max_documents: int, max_tokens_per_pair: int, max_text_bytes: int
    ) -> None:
        directory = Path(checkpoint_dir)
        config = read_encoder_config(directory / CONFIG_FILE)
        self.spec = read_matryoshka_spec(directory / MATRYOSHKA_FILE, config)
        self.max_documents = max_documents
        self.max_text_bytes = max_text_bytes
        self.max_tokens_per_pair = min(max_tokens_per_pair, config.max_position_embeddings)
        self.tokenizer = PairTokenizer.from_file(
            directory / TOKENIZER_FILE, config.bos_token_id, config.eos_token_id, config.pad_token_id
        )

    def run(self, query: np.ndarray, documents: np.ndarray, parameters: Mapping[str, object]) -> EncodedPairs:
        """Encode one request, or raise InvalidRequest saying what is wrong with it."""
        options = parse_options(parameters, self.spec, self.max_tokens_per_pair)
        if query.size != 1:
            raise InvalidRequest(f"'query' must hold exactly one text, got {query.size}", "bad_tensor")
        check_document_count(documents.size, self.max_documents)
        query_text = decode_texts(query, "query", self.max_text_bytes)[0]
        document_texts = decode_texts(documents, "document", self.max_text_bytes)
        try:
            return self.tokenizer.encode(query_text, document_texts, options.max_length, options.truncate)
        except QueryTooLongError as error:
            raise InvalidRequest(str(error), "query_too_long") from error
        except PairTooLongError as error:
            raise InvalidRequest(str(error), "pair_too_long") from error
