"""Validation of what a client sends: request parameters, document lists, UTF-8 text.

The tokenizer step parses a request's parameters once into `RequestOptions`, which travel to the
reranker as the `_options` tensor beside the ids. Every failure is an `RequestRefused` whose
message says what was wrong and what is allowed; the Triton models turn it into an INVALID_ARG
response for that request alone. Names, types and bounds come from the schema, `mmrerank_client.schema`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass

import numpy as np

from mmrerank.layout import MatryoshkaSpec
from mmrerank_client.schema import (
    BY_NAME,
    CASCADE_PARAMETERS,
    PARAMETER_NAMES,
    PARAMETERS,
    REASONS,
    Parameter,
    Prefilter,
    range_problem,
    tagged,
)

# At most this many characters of a client's value are quoted back in an error message.
QUOTE_LIMIT = 100


class RequestRefused(ValueError):
    """The client sent something this service cannot score; the message is safe to return.

    `reason` is one of the schema's refusal codes (`mmrerank_client.schema.REASONS`): the metrics
    count it, and the response carries it in front of the message (`wire_message`).
    """

    def __init__(self, message: str, reason: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(message)
        self.reason = reason

    def wire_message(self) -> str:
        """The message as the response carries it: `[reason] message`."""
        return tagged(self.reason, str(self))


@dataclass(frozen=True)
class RequestOptions:
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
    def from_array(cls, values: np.ndarray) -> RequestOptions:
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
        raise RequestRefused("request parameters are not valid JSON", "bad_parameters") from error
    if not isinstance(parameters, dict):
        raise RequestRefused("request parameters must be an object", "bad_parameters")
    return parameters


def _typed(parameters: Mapping[str, object], parameter: Parameter, default: int | bool) -> int | bool:
    """The parameter's value (`default` when not sent), refused when it is not of the schema's type."""
    value = parameters.get(parameter.name, default)
    given = f"{type(value).__name__} {quote(value)}"
    if parameter.kind is bool and not isinstance(value, bool):
        raise RequestRefused(
            f"parameter '{parameter.name}' must be a boolean (true or false), got {given}",
            "parameter_type",
        )
    if parameter.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RequestRefused(
            f"parameter '{parameter.name}' must be an integer, got {given}",
            "parameter_type",
        )
    return value


def _one_of(parameters: Mapping[str, object], name: str, default: int, allowed: Sequence[int], what: str = "") -> int:
    """An integer parameter that must be one of `allowed` (`what` describes them in the refusal)."""
    value = int(_typed(parameters, BY_NAME[name], default))
    if value not in allowed:
        raise RequestRefused(f"parameter '{name}' must be {what}one of {list(allowed)}, got {value}", "parameter_value")
    return value


def _within(parameters: Mapping[str, object], name: str, default: int, bounds: tuple[int, int] | None = None) -> int:
    """An integer parameter within `bounds` (low, high), or within the schema's fixed bounds when none are given."""
    value = int(_typed(parameters, BY_NAME[name], default))
    if bounds is None:
        problem = range_problem(name, value)
    else:
        low, high = bounds
        problem = None if low <= value <= high else f"parameter '{name}' must be between {low} and {high}, got {value}"
    if problem:
        raise RequestRefused(problem, "parameter_value")
    return value


def parse_options(
    parameters: Mapping[str, object], spec: MatryoshkaSpec, max_length_cap: int, min_max_length: int = 1
) -> RequestOptions:
    """Check every parameter's name, type and bounds against the schema; fill in defaults.

    The checkpoint gives the exits and their defaults; `max_length` lies between `min_max_length`
    (the pair template's special tokens and one document token) and `max_length_cap`.
    """
    unknown = sorted(set(parameters) - set(PARAMETER_NAMES))
    if unknown:
        raise RequestRefused(
            f"unknown parameter {quote(unknown[0])}; allowed parameters: {', '.join(PARAMETER_NAMES)}",
            "unknown_parameter",
        )
    for parameter in PARAMETERS:  # types and fixed bounds first, whatever the parameter
        if parameter.name in parameters:
            value = _typed(parameters, parameter, False)
            if parameter.bound == "range" and (problem := range_problem(parameter.name, int(value))):
                raise RequestRefused(problem, "parameter_value")
    layer = _one_of(parameters, "layer", spec.default_layer, spec.layer_indices)
    dim = _one_of(parameters, "dim", spec.default_dim, spec.dim_indices)
    return RequestOptions(
        layer=layer,
        dim=dim,
        normalize=bool(_typed(parameters, BY_NAME["normalize"], True)),
        max_length=_within(parameters, "max_length", max_length_cap, (min_max_length, max_length_cap)),
        truncate=bool(_typed(parameters, BY_NAME["truncate"], True)),
        prefilter=_prefilter(parameters, spec, layer, dim),
        deadline_ms=_within(parameters, "deadline_ms", 0) if "deadline_ms" in parameters else None,
    )


def _prefilter(parameters: Mapping[str, object], spec: MatryoshkaSpec, layer: int, dim: int) -> Prefilter | None:
    """The cascade parameters, all or none: a shallower exit layer, its width, how many continue."""
    given = [name for name in CASCADE_PARAMETERS if name in parameters]
    if not given:
        return None
    if "prefilter_layer" not in parameters or "prefilter_top_k" not in parameters:
        raise RequestRefused(
            f"parameter '{given[0]}' needs both 'prefilter_layer' and 'prefilter_top_k' (a cascade scores every "
            "document at prefilter_layer and continues the best prefilter_top_k to 'layer')",
            "parameter_value",
        )
    shallower = [value for value in spec.layer_indices if value < layer]
    return Prefilter(
        _one_of(parameters, "prefilter_layer", 0, shallower, f"an exit layer shallower than layer {layer}, "),
        _one_of(parameters, "prefilter_dim", dim, spec.dim_indices),
        _within(parameters, "prefilter_top_k", 0),
    )


def decode_texts(values: np.ndarray, what: str, max_bytes: int) -> list[str]:
    """UTF-8 strings from a Triton BYTES tensor, naming the first element that is too large or not UTF-8."""
    texts: list[str] = []
    for index, value in enumerate(values.reshape(-1)):
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        label = what if values.size == 1 and what == "query" else f"{what} {index}"
        if len(raw) > max_bytes:
            raise RequestRefused(f"{label} has {len(raw)} bytes; at most {max_bytes} are allowed", "text_size")
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise RequestRefused(f"{label} is not valid UTF-8 (byte {error.start})", "not_utf8") from error
    return texts


def check_document_count(count: int, max_documents: int) -> None:
    """A request carries between 1 and `max_documents` documents."""
    if count == 0:
        raise RequestRefused(f"'documents' is empty; send between 1 and {max_documents} documents", "document_count")
    if count > max_documents:
        raise RequestRefused(
            f"'documents' holds {count} documents; at most {max_documents} are allowed per request", "document_count"
        )


def check_request_tokens(total: int, max_tokens: int) -> None:
    """A request's pairs hold at most `max_tokens` tokens after truncation."""
    if total > max_tokens:
        raise RequestRefused(
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
        raise RequestRefused(
            f"the request carries {total} bytes of text; at most {max_bytes} are allowed per request "
            "(max_request_bytes)",
            "request_bytes",
        )
