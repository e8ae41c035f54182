"""The blocking client: `RerankClient("http://host:8000")` or `RerankClient("grpc://host:8001")`."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from numpy.typing import NDArray

from mmrerank_client._core import (
    ClientBase,
    RerankRequest,
    build_request,
    build_response,
    check_top_n,
    group_pairs,
    make_inputs,
    parameters_within,
    scores_in_input_order,
    served_model,
    transport,
)
from mmrerank_client.contract import OUTPUTS
from mmrerank_client.errors import ModelNotReadyError, ServerUnavailableError, translate
from mmrerank_client.types import RerankResponse, ServedModel

NO_TIMEOUT = 24 * 3600.0


class RerankClient(ClientBase):
    """Blocking client of the served reranker; the URL scheme picks HTTP or gRPC.

    `timeout` (seconds, None for none) bounds each call unless the call gives its own; `api_key`
    is sent as the `x-api-key` header when the server restricts inference to a key.
    """

    def _connect(self) -> None:
        self._local = threading.local()
        self._opened: list[Any] = []  # every HTTP connection of every thread, closed by close()
        self._opened_lock = threading.Lock()
        self._module: Any = transport(self.endpoint.protocol)
        self._grpc = (
            self._module.InferenceServerClient(self.endpoint.address) if self.endpoint.protocol == "grpc" else None
        )

    def _http(self, timeout: float | None) -> Any:
        """One HTTP connection per thread and timeout (the HTTP client is not thread-safe)."""
        clients: dict[float | None, Any] = self._local.__dict__.setdefault("clients", {})
        if timeout not in clients:
            seconds = NO_TIMEOUT if timeout is None else timeout
            clients[timeout] = self._module.InferenceServerClient(
                self.endpoint.address, connection_timeout=seconds, network_timeout=seconds
            )
            with self._opened_lock:
                self._opened.append(clients[timeout])
        return clients[timeout]

    def _infer(self, request: RerankRequest, timeout: float | None) -> dict[str, NDArray[Any]]:
        try:
            if self._grpc is not None:
                result = self._grpc.infer(
                    self.model,
                    make_inputs(self._module, request),
                    parameters=parameters_within(request, timeout),
                    headers=self._headers,
                    client_timeout=timeout,
                )
            else:
                result = self._http(timeout).infer(
                    self.model,
                    make_inputs(self._module, request),
                    parameters=parameters_within(request, timeout),
                    headers=self._headers,
                )
        except Exception as error:
            raise translate(error) from error
        return {name: result.as_numpy(name) for name in OUTPUTS}

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        layer: int | None = None,
        dim: int | None = None,
        normalize: bool = True,
        return_documents: bool = False,
        max_length: int | None = None,
        truncate: bool = True,
        prefilter_layer: int | None = None,
        prefilter_dim: int | None = None,
        prefilter_top_k: int | None = None,
        timeout: float | None = None,
    ) -> RerankResponse:
        """Rank `documents` against `query`, best first; layer/dim None mean the server's defaults.

        With `prefilter_layer` and `prefilter_top_k` the server runs a cascade: every document at
        the cheap exit (`prefilter_layer`, `prefilter_dim` or `dim`), the best `prefilter_top_k`
        continued to `layer`; each result's `exit_layer` says which exit scored it.
        """
        check_top_n(top_n)
        request = build_request(
            query, documents, layer=layer, dim=dim, normalize=normalize, max_length=max_length, truncate=truncate,
            prefilter_layer=prefilter_layer, prefilter_dim=prefilter_dim, prefilter_top_k=prefilter_top_k,
        )  # fmt: skip
        outputs = self._infer(request, self._call_timeout(timeout))
        return build_response(outputs, documents, top_n=top_n, return_documents=return_documents, layer=layer, dim=dim)

    def score(
        self,
        query: str,
        documents: Sequence[str],
        *,
        layer: int | None = None,
        dim: int | None = None,
        normalize: bool = True,
        max_length: int | None = None,
        truncate: bool = True,
        timeout: float | None = None,
    ) -> list[float]:
        """One score per document, in input order (rerank's options but top_n and return_documents)."""
        response = self.rerank(
            query, documents, layer=layer, dim=dim, normalize=normalize, max_length=max_length, truncate=truncate,
            timeout=timeout,
        )  # fmt: skip
        return scores_in_input_order(response)

    def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        max_concurrency: int = 8,
        layer: int | None = None,
        dim: int | None = None,
        normalize: bool = True,
        max_length: int | None = None,
        truncate: bool = True,
        timeout: float | None = None,
    ) -> list[float]:
        """Scores of (query, document) pairs in input order; one request per distinct query, sent concurrently."""
        groups = group_pairs(pairs)
        scores = [0.0] * len(pairs)

        def run(query: str) -> None:
            indices = groups[query]
            values = self.score(
                query, [pairs[i][1] for i in indices], layer=layer, dim=dim, normalize=normalize,
                max_length=max_length, truncate=truncate, timeout=timeout,
            )  # fmt: skip
            for index, score in zip(indices, values, strict=True):
                scores[index] = score

        with ThreadPoolExecutor(max(1, min(max_concurrency, len(groups)))) as pool:
            for future in [pool.submit(run, query) for query in groups]:
                future.result()
        return scores

    def describe(self, timeout: float | None = None) -> ServedModel:
        """The served checkpoint: its exits, defaults, caps and name (from the model's configuration)."""
        try:
            if self._grpc is not None:
                config = self._grpc.get_model_config(
                    self.model, headers=self._headers, as_json=True, client_timeout=self._call_timeout(timeout)
                )["config"]
            else:
                config = self._http(self._call_timeout(timeout)).get_model_config(self.model, headers=self._headers)
        except Exception as error:
            raise translate(error) from error
        return served_model(config)

    def is_ready(self) -> bool:
        """Whether the server is live and the model ready now."""
        try:
            client = self._grpc if self._grpc is not None else self._http(self.timeout)
            return bool(client.is_server_ready() and client.is_model_ready(self.model))
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.5) -> None:
        """Block until the model is ready; raise ServerUnavailableError or ModelNotReadyError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if self.is_ready():
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        try:
            client = self._grpc if self._grpc is not None else self._http(self.timeout)
            live = bool(client.is_server_live())
        except Exception:  # noqa: BLE001
            live = False
        if live:
            raise ModelNotReadyError(f"model {self.model!r} not ready after {timeout:.0f} s")
        raise ServerUnavailableError(f"no server at {self.endpoint.address} after {timeout:.0f} s")

    def close(self) -> None:
        """Close every connection this client opened, in any thread."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for client in opened:
            client.close()
        self._local = threading.local()
        if self._grpc is not None:
            self._grpc.close()

    def __enter__(self) -> RerankClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
