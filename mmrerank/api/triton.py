"""The front's one persistent gRPC channel to Triton's `rerank` model, with Triton's errors as HTTP statuses."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from mmrerank.serving.contract import MAX_DEADLINE_MS

MODEL = "rerank"
OUTPUTS = ("scores", "num_tokens", "truncated", "exit_layer")
# Triton checks a restricted gRPC protocol's key under this header.
GRPC_API_KEY_HEADER = "triton-grpc-protocol-x-api-key"
# Triton prefixes a step's error with the ensemble's name; the front's clients never see that layer.
ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")


class UpstreamError(Exception):
    """Triton refused or failed a request; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Ranking:
    """What the `rerank` model returned for one request, in input order."""

    scores: np.ndarray
    num_tokens: np.ndarray
    exit_layers: np.ndarray

    def order(self) -> list[int]:
        """Indices best first: the deepest exit first (a cascade's continued documents), then by score."""
        return sorted(range(len(self.scores)), key=lambda i: (-int(self.exit_layers[i]), -float(self.scores[i])))


def status_of(error: InferenceServerException) -> UpstreamError:
    """Triton's gRPC error as an HTTP status with a short message (never a traceback)."""
    status, message = str(error.status() or ""), str(error.message() or "")
    message = ENSEMBLE_PREFIX.sub("", message)
    lowered = message.lower()
    if "exceeds maximum queue size" in lowered:
        return UpstreamError(503, "the server is at capacity (its queue is full); retry shortly")
    if status == "StatusCode.INVALID_ARGUMENT":
        return UpstreamError(413 if "over max_length" in lowered else 400, message)
    if status == "StatusCode.DEADLINE_EXCEEDED" or "deadline" in lowered:
        return UpstreamError(504, "the request did not finish within its timeout")
    if status == "StatusCode.UNAVAILABLE" or "not ready" in lowered or "unavailable" in lowered:
        return UpstreamError(503, "the reranker is not available right now; retry shortly")
    return UpstreamError(500, "internal error while ranking")


class TritonReranker:
    """Sends rerank requests over one gRPC channel (opened on first use, closed by `close`)."""

    def __init__(self, address: str, api_key: str | None, timeout: float) -> None:
        self.address = address
        self.headers = {GRPC_API_KEY_HEADER: api_key} if api_key else None
        self.timeout = timeout
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The gRPC client, created inside the running event loop."""
        if self._client is None:
            self._client = grpcaio.InferenceServerClient(self.address)
        return self._client

    async def rank(self, query: str, documents: list[str], parameters: dict[str, Any]) -> Ranking:
        """Scores of `documents` against `query` with these request parameters.

        Without a `deadline_ms` of the caller's, this front's own timeout becomes the request's
        deadline, so the server stops working on it once this front stops waiting.
        """
        parameters = {"deadline_ms": min(MAX_DEADLINE_MS, math.ceil(self.timeout * 1000)), **parameters}
        inputs = [grpcaio.InferInput("query", [1], "BYTES"), grpcaio.InferInput("documents", [len(documents)], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([query.encode("utf-8")], dtype=np.object_))
        inputs[1].set_data_from_numpy(np.array([text.encode("utf-8") for text in documents], dtype=np.object_))
        try:
            result = await self.client.infer(
                MODEL, inputs, parameters=parameters, headers=self.headers, client_timeout=self.timeout
            )
        except InferenceServerException as error:
            raise status_of(error) from error
        outputs = {name: result.as_numpy(name).reshape(-1) for name in OUTPUTS}
        return Ranking(outputs["scores"], outputs["num_tokens"], outputs["exit_layer"])

    async def model_config(self) -> dict[str, Any]:
        """The `rerank` model's configuration (it carries the served checkpoint's facts)."""
        try:
            response = await self.client.get_model_config(MODEL, headers=self.headers, as_json=True)
        except InferenceServerException as error:
            raise status_of(error) from error
        config: dict[str, Any] = response["config"]
        return config

    async def ready(self) -> bool:
        """Whether Triton says the `rerank` model is ready."""
        try:
            return bool(await self.client.is_model_ready(MODEL, headers=self.headers))
        except InferenceServerException:
            return False

    async def close(self) -> None:
        """Close the channel."""
        if self._client is not None:
            await self._client.close()
            self._client = None
