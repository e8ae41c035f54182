"""Validation of what a client sends: request parameters, document lists, UTF-8 text.

The tokenizer step parses a request's parameters once into `RerankOptions`, which travel to the
reranker as the `_options` tensor beside the ids. Every failure is an `InvalidRequestError` whose
message says what was wrong and what is allowed; the Triton models turn it into an INVALID_ARG
response for that request alone. Names and limits shared with clients live in `mmrerank_client.contract`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import astuple, dataclass

import numpy as np

from mmrerank.layout import MatryoshkaSpec
from mmrerank_client.contract import PARAMETERS, PREFILTER_PARAMETERS, deadline_ms_problem

# At most this many characters of a client's value are quoted back in an error message.
QUOTE_LIMIT = 100


class InvalidRequestError(ValueError):
    """The client sent something this service cannot score; the message is safe to return.

    `reason` is a short category for metrics: unknown_parameter, parameter_type, parameter_value,
    document_count, text_size, request_bytes, request_tokens, not_utf8, query_too_long, pair_too_long,
    bad_tensor, bad_parameters.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Prefilter:
    """A cascade: score every document at (layer, dim), continue the best `top_k` to the request's exit."""

    layer: int
    dim: int
    top_k: int


@dataclass(frozen=True)
class RerankOptions:
    """The per-request knobs, defaults filled in."""

    layer: int
    dim: int
    normalize: bool
    max_length: int
    truncate: bool
    prefilter: Prefilter | None = None
    deadline_ms: int | None = None  # counted from the tokenizer step; past it the server stops working on it

    def to_array(self) -> np.ndarray:
        """The options as the `_options` tensor between the steps (the deadline travels as `_deadline`)."""
        prefilter = self.prefilter or Prefilter(0, 0, 0)
        values = (self.layer, self.dim, self.normalize, self.max_length, self.truncate, *astuple(prefilter))
        return np.array(values, dtype=np.int32)

    @classmethod
    def from_array(cls, values: np.ndarray) -> RerankOptions:
        """The inverse of `to_array`, trusted: the tokenizer step validated the request."""
        layer, dim, normalize, max_length, truncate, prefilter_layer, prefilter_dim, top_k = (int(v) for v in values)
        prefilter = Prefilter(prefilter_layer, prefilter_dim, top_k) if top_k else None
        return cls(layer, dim, bool(normalize), max_length, bool(truncate), prefilter)


def quote(value: object) -> str:
    """A client's value for an error message: its repr, cut to QUOTE_LIMIT characters."""
    text = repr(value)
    return text if len(text) <= QUOTE_LIMIT else f"{text[:QUOTE_LIMIT]}... ({len(text)} characters)"


def parse_parameters(text: str) -> dict[str, object]:
    """Decode the JSON object Triton hands over as a request's parameters."""
    try:
        parameters = json.loads(text or "{}")
    except json.JSONDecodeError as error:
        raise InvalidRequestError("request parameters are not valid JSON", "bad_parameters") from error
    if not isinstance(parameters, dict):
        raise InvalidRequestError("request parameters must be an object", "bad_parameters")
    return parameters


def _integer(parameters: Mapping[str, object], name: str, default: int) -> int:
    value = parameters.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(
            f"parameter '{name}' must be an integer, got {type(value).__name__} {quote(value)}", "parameter_type"
        )
    return value


def _boolean(parameters: Mapping[str, object], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise InvalidRequestError(
            f"parameter '{name}' must be a boolean (true or false), got {type(value).__name__} {quote(value)}",
            "parameter_type",
        )
    return value


def parse_options(
    parameters: Mapping[str, object], spec: MatryoshkaSpec, max_length_cap: int, min_max_length: int = 1
) -> RerankOptions:
    """Check every parameter's name, type and value; fill in defaults."""
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise InvalidRequestError(
            f"unknown parameter {quote(unknown[0])}; allowed parameters: {', '.join(PARAMETERS)}", "unknown_parameter"
        )
    layer = _integer(parameters, "layer", spec.default_layer)
    if layer not in spec.layer_indices:
        raise InvalidRequestError(
            f"parameter 'layer' must be one of {list(spec.layer_indices)}, got {layer}", "parameter_value"
        )
    dim = _integer(parameters, "dim", spec.default_dim)
    if dim not in spec.dim_indices:
        raise InvalidRequestError(
            f"parameter 'dim' must be one of {list(spec.dim_indices)}, got {dim}", "parameter_value"
        )
    max_length = _integer(parameters, "max_length", max_length_cap)
    if not min_max_length <= max_length <= max_length_cap:
        raise InvalidRequestError(
            f"parameter 'max_length' must be between {min_max_length} and {max_length_cap}, got {max_length}",
            "parameter_value",
        )
    return RerankOptions(
        layer=layer,
        dim=dim,
        normalize=_boolean(parameters, "normalize", True),
        max_length=max_length,
        truncate=_boolean(parameters, "truncate", True),
        prefilter=_prefilter(parameters, spec, layer, dim),
        deadline_ms=_deadline_ms(parameters),
    )


def _deadline_ms(parameters: Mapping[str, object]) -> int | None:
    """Milliseconds the client waits for its answer; the server abandons the request after that."""
    if "deadline_ms" not in parameters:
        return None
    value = _integer(parameters, "deadline_ms", 0)
    problem = deadline_ms_problem(value)
    if problem:
        raise InvalidRequestError(problem, "parameter_value")
    return value


def _prefilter(parameters: Mapping[str, object], spec: MatryoshkaSpec, layer: int, dim: int) -> Prefilter | None:
    """The cascade parameters, all or none: a shallower exit layer, its width, how many continue."""
    given = [name for name in PREFILTER_PARAMETERS if name in parameters]
    if not given:
        return None
    if "prefilter_layer" not in parameters or "prefilter_top_k" not in parameters:
        raise InvalidRequestError(
            f"parameter '{given[0]}' needs both 'prefilter_layer' and 'prefilter_top_k' (a cascade scores every "
            "document at prefilter_layer and continues the best prefilter_top_k to 'layer')",
            "parameter_value",
        )
    shallower = [value for value in spec.layer_indices if value < layer]
    prefilter_layer = _integer(parameters, "prefilter_layer", 0)
    if prefilter_layer not in shallower:
        raise InvalidRequestError(
            f"parameter 'prefilter_layer' must be an exit layer shallower than layer {layer}, one of {shallower}, "
            f"got {prefilter_layer}",
            "parameter_value",
        )
    prefilter_dim = _integer(parameters, "prefilter_dim", dim)
    if prefilter_dim not in spec.dim_indices:
        raise InvalidRequestError(
            f"parameter 'prefilter_dim' must be one of {list(spec.dim_indices)}, got {prefilter_dim}", "parameter_value"
        )
    top_k = _integer(parameters, "prefilter_top_k", 1)
    if top_k < 1:
        raise InvalidRequestError(f"parameter 'prefilter_top_k' must be at least 1, got {top_k}", "parameter_value")
    return Prefilter(prefilter_layer, prefilter_dim, top_k)


def decode_texts(values: np.ndarray, what: str, max_bytes: int) -> list[str]:
    """UTF-8 strings from a Triton BYTES tensor, naming the first element that is too large or not UTF-8."""
    texts: list[str] = []
    for index, value in enumerate(values.reshape(-1)):
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        label = what if values.size == 1 and what == "query" else f"{what} {index}"
        if len(raw) > max_bytes:
            raise InvalidRequestError(f"{label} has {len(raw)} bytes; at most {max_bytes} are allowed", "text_size")
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise InvalidRequestError(f"{label} is not valid UTF-8 (byte {error.start})", "not_utf8") from error
    return texts


def check_document_count(count: int, max_documents: int) -> None:
    """A request carries between 1 and `max_documents` documents."""
    if count == 0:
        raise InvalidRequestError(
            f"'documents' is empty; send between 1 and {max_documents} documents", "document_count"
        )
    if count > max_documents:
        raise InvalidRequestError(
            f"'documents' holds {count} documents; at most {max_documents} are allowed per request", "document_count"
        )


def check_request_tokens(total: int, max_tokens: int) -> None:
    """A request's pairs hold at most `max_tokens` tokens after truncation."""
    if total > max_tokens:
        raise InvalidRequestError(
            f"the request's pairs hold {total} tokens after truncation; at most {max_tokens} are "
            "allowed per request (max_request_tokens): send fewer or shorter documents, or a lower max_length",
            "request_tokens",
        )


def check_request_bytes(query: np.ndarray, documents: np.ndarray, max_bytes: int) -> None:
    """The query and documents together carry at most `max_bytes` bytes of text."""
    total = sum(len(value) if isinstance(value, bytes) else len(str(value).encode()) for value in query.reshape(-1))
    total += sum(
        len(value) if isinstance(value, bytes) else len(str(value).encode()) for value in documents.reshape(-1)
    )
    if total > max_bytes:
        raise InvalidRequestError(
            f"the request carries {total} bytes of text; at most {max_bytes} are allowed per request "
            "(max_request_bytes)",
            "request_bytes",
        )
