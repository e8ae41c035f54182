"""Validation of what a client sends: request parameters, document lists, UTF-8 text.

Every failure is an `InvalidRequestError` whose message says what was wrong and what is allowed;
the Triton models turn it into an INVALID_ARG response for that request alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mmrerank.layout import MatryoshkaSpec

PARAMETERS = ("layer", "dim", "normalize", "max_length", "truncate")


class InvalidRequestError(ValueError):
    """The client sent something this service cannot score; the message is safe to return.

    `reason` is a short category for metrics: unknown_parameter, parameter_type, parameter_value,
    document_count, text_size, not_utf8, query_too_long, pair_too_long, bad_tensor, bad_parameters.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RerankOptions:
    """The per-request knobs, defaults filled in."""

    layer: int
    dim: int
    normalize: bool
    max_length: int
    truncate: bool


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
            f"parameter '{name}' must be an integer, got {type(value).__name__} {value!r}", "parameter_type"
        )
    return value


def _boolean(parameters: Mapping[str, object], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise InvalidRequestError(
            f"parameter '{name}' must be a boolean (true or false), got {type(value).__name__} {value!r}",
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
            f"unknown parameter '{unknown[0]}'; allowed parameters: {', '.join(PARAMETERS)}", "unknown_parameter"
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
    )


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
