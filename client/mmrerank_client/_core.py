"""What the sync and async clients share: URL parsing, request building, response parsing."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import urlsplit

import numpy as np
from numpy.typing import NDArray

from mmrerank_client.errors import ClientConfigurationError, InvalidRequestError, RerankError
from mmrerank_client.schema import MODEL, PARAMETERS, deadline_ms
from mmrerank_client.types import RerankResponse, RerankResult, ServedModel

API_KEY_HEADER = "x-api-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"


@dataclass(frozen=True)
class Endpoint:
    """Protocol ('http' or 'grpc') and host:port, from a URL such as grpc://host:8001."""

    protocol: str
    address: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """`http://host:port` (default 8000) or `grpc://host:port` (default 8001); bare host:port means HTTP."""
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "grpc"):
            raise ClientConfigurationError(f"URL scheme must be http or grpc, got {parts.scheme!r} in {url!r}")
        if not parts.hostname:
            raise ClientConfigurationError(f"URL {url!r} names no host")
        try:
            port = parts.port or (8000 if parts.scheme == "http" else 8001)
        except ValueError as error:  # a port that is not a number in 0..65535
            raise ClientConfigurationError(f"URL {url!r} has an invalid port") from error
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(parts.scheme, f"{host}:{port}")


@dataclass(frozen=True)
class RerankRequest:
    """A validated call: texts as BYTES arrays and the request parameters to send."""

    query: NDArray[Any]
    documents: NDArray[Any]
    parameters: dict[str, int | bool]


# The schema's parameters a call passes by keyword; the deadline comes from the call's `timeout`.
CALL_PARAMETERS = tuple(parameter for parameter in PARAMETERS if parameter.name != "deadline_ms")


def build_request(query: str, documents: Sequence[str], options: Mapping[str, object]) -> RerankRequest:
    """Check what is cheap to check here (types, as the schema gives them) and encode the texts.

    Parameters left out or None are not sent: the server fills in its defaults and stays the authority.
    """
    if isinstance(documents, str):
        raise InvalidRequestError("'documents' must be a sequence of texts, not one string")
    if len(documents) == 0:
        raise InvalidRequestError("'documents' is empty; send at least 1 document")
    texts = [query, *documents]
    if not all(isinstance(item, str) for item in texts):
        raise InvalidRequestError("the query and every document must be str")
    parameters: dict[str, int | bool] = {}
    for parameter in CALL_PARAMETERS:
        value = options.get(parameter.name)
        if value is None:
            continue
        if parameter.kind is bool and isinstance(value, bool):
            parameters[parameter.name] = value
        elif parameter.kind is int and isinstance(value, int) and not isinstance(value, bool):
            parameters[parameter.name] = value
        else:
            kind = "a boolean" if parameter.kind is bool else "an integer"
            raise InvalidRequestError(f"parameter '{parameter.name}' must be {kind}, got {value!r}")
    return RerankRequest(
        query=np.array([query.encode("utf-8")], dtype=np.object_),
        documents=np.array([doc.encode("utf-8") for doc in documents], dtype=np.object_),
        parameters=parameters,
    )


def parameters_within(request: RerankRequest, timeout: float | None) -> dict[str, int | bool]:
    """The request's parameters plus `deadline_ms` from the call's timeout.

    The server stops working on the request once the client no longer waits for it, so a call that
    timed out costs the server at most one more encoder layer.
    """
    if timeout is None:
        return request.parameters
    return {**request.parameters, "deadline_ms": deadline_ms(timeout)}


def transport(protocol: str, asynchronous: bool = False) -> Any:
    """The tritonclient module for `protocol` ("http" or "grpc"), imported on first use.

    A gRPC caller then needs none of the HTTP transport's packages (gevent, aiohttp), and the reverse.
    """
    return importlib.import_module(f"tritonclient.{protocol}{'.aio' if asynchronous else ''}")


def make_inputs(module: Any, request: RerankRequest) -> list[Any]:
    """Tritonclient InferInput objects for a request; `module` is tritonclient's http, grpc or their aio flavour."""
    query = module.InferInput("query", [1], "BYTES")
    query.set_data_from_numpy(request.query)
    documents = module.InferInput("documents", [len(request.documents)], "BYTES")
    documents.set_data_from_numpy(request.documents)
    return [query, documents]


class ScoreOptions(TypedDict, total=False):
    """Keyword options of `score` and `score_pairs`, sync and async alike (rerank takes them too).

    The request parameters among them are the schema's (`mmrerank_client.schema.PARAMETERS`, a test
    holds the two together), typed here for type checkers. None means the server's default.
    `timeout` (seconds) bounds the call and is sent as its deadline, the client's own when not given.
    """

    layer: int | None
    dim: int | None
    normalize: bool
    max_length: int | None
    truncate: bool
    timeout: float | None


class RerankOptions(ScoreOptions, total=False):
    """Keyword options of `rerank`: the score options, how many results, the texts back, and a cascade."""

    top_n: int | None
    return_documents: bool
    request_id: str  # Triton's request id (in its logs and traces); the rerank API front cancels by it
    prefilter_layer: int | None
    prefilter_dim: int | None
    prefilter_top_k: int | None


@dataclass(frozen=True)
class RerankCall:
    """One `rerank` call, checked and encoded: what to send, how long to wait, how to shape the answer."""

    request: RerankRequest
    documents: Sequence[str]
    options: RerankOptions
    timeout: float | None

    @property
    def request_id(self) -> str:
        """The request id to send ("" for none)."""
        return self.options.get("request_id", "")

    def response(self, outputs: dict[str, NDArray[Any]]) -> RerankResponse:
        """The server's outputs as the call's response."""
        return build_response(
            outputs, self.documents, top_n=self.options.get("top_n"),
            return_documents=self.options.get("return_documents", False),
            layer=self.options.get("layer"), dim=self.options.get("dim"),
        )  # fmt: skip


def check_keywords(method: str, options: Mapping[str, object], allowed: Any) -> None:
    """Refuse a keyword the TypedDict `allowed` does not name, as Python refuses an unknown argument."""
    unknown = sorted(set(options) - allowed.__required_keys__ - allowed.__optional_keys__)
    if unknown:
        raise TypeError(f"{method}() got an unexpected keyword argument {unknown[0]!r}")


def rerank_call(
    query: str, documents: Sequence[str], options: RerankOptions, default_timeout: float | None
) -> RerankCall:
    """Check a call's options, encode its texts, and settle its timeout."""
    check_keywords("rerank", options, RerankOptions)
    check_top_n(options.get("top_n"))
    request = build_request(query, documents, options)
    timeout = options.get("timeout")
    return RerankCall(request, documents, options, default_timeout if timeout is None else timeout)


def check_top_n(top_n: int | None) -> None:
    """top_n is None (all) or a positive integer."""
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise InvalidRequestError(f"top_n must be a positive integer or None, got {top_n!r}")


def build_response(
    outputs: dict[str, NDArray[Any]],
    documents: Sequence[str],
    *,
    top_n: int | None,
    return_documents: bool,
    layer: int | None,
    dim: int | None,
) -> RerankResponse:
    """Deepest exit first, then by score (ties keep input order); keep the best `top_n`."""
    scores = outputs["scores"].reshape(-1)
    num_tokens = outputs["num_tokens"].reshape(-1)
    truncated = outputs["truncated"].reshape(-1)
    exit_layers = outputs["exit_layer"].reshape(-1)
    order = sorted(range(len(scores)), key=lambda i: (-int(exit_layers[i]), -float(scores[i])))
    results = tuple(
        RerankResult(
            index=i,
            score=float(scores[i]),
            num_tokens=int(num_tokens[i]),
            truncated=bool(truncated[i]),
            exit_layer=int(exit_layers[i]),
            document=documents[i] if return_documents else None,
        )
        for i in order[:top_n]
    )
    return RerankResponse(results=results, layer=layer, dim=dim)


def scores_in_input_order(response: RerankResponse) -> list[float]:
    """The scores of a full response, back in the order the documents were sent."""
    scores = [0.0] * len(response.results)
    for result in response.results:
        scores[result.index] = result.score
    return scores


def served_model(config: dict[str, Any]) -> ServedModel:
    """The served checkpoint's facts from the `rerank` model's configuration (as Triton returns it in JSON)."""
    parameters = {key: str(value.get("string_value", "")) for key, value in config.get("parameters", {}).items()}
    try:
        return ServedModel(
            checkpoint=parameters["checkpoint"],
            layer_indices=tuple(int(v) for v in parameters["layer_indices"].split(",")),
            dim_indices=tuple(int(v) for v in parameters["dim_indices"].split(",")),
            default_layer=int(parameters["default_layer"]),
            default_dim=int(parameters["default_dim"]),
            max_tokens_per_pair=int(parameters["max_tokens_per_pair"]),
            max_documents=int(parameters["max_documents"]),
            max_request_tokens=int(parameters["max_request_tokens"]),
            request_parameters=tuple(parameters["request_parameters"].split(",")),
        )
    except (KeyError, ValueError) as error:
        raise RerankError(
            f"the server's model configuration does not describe its checkpoint ({type(error).__name__}: {error}); "
            "was it started by the mmrerank launcher?"
        ) from error


def auth_headers(api_key: str | None, protocol: str) -> dict[str, str] | None:
    """The header carrying the API key, or None when there is no key.

    Triton checks a restricted gRPC protocol's header under a `triton-grpc-protocol-` prefix.
    """
    if not api_key:
        return None
    return {(GRPC_HEADER_PREFIX if protocol == "grpc" else "") + API_KEY_HEADER: api_key}


def group_pairs(pairs: Sequence[tuple[str, str]]) -> dict[str, list[int]]:
    """Indices of the pairs that share each query, so each query is sent once."""
    groups: dict[str, list[int]] = {}
    for index, (query, _document) in enumerate(pairs):
        groups.setdefault(query, []).append(index)
    return groups


class ClientBase:
    """What both clients hold: the endpoint, the model, the default timeout and the auth header."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        model: str = MODEL,
        timeout: float | None = 60.0,
        api_key: str | None = None,
    ) -> None:
        self.endpoint = Endpoint.parse(url)
        self.model = model
        self.timeout = timeout
        self._headers = auth_headers(api_key, self.endpoint.protocol)
        self._connect()

    def _connect(self) -> None:
        """Open the protocol client (each client class provides it)."""
        raise NotImplementedError

    def _call_timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout
