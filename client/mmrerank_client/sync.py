"""The blocking client: `RerankClient("http://host:8000")` or `RerankClient("grpc://host:8001")`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from numpy.typing import NDArray

if TYPE_CHECKING:
    from typing_extensions import Unpack

from mmrerank_client._core import (
    ClientBase,
    RerankOptions,
    RerankRequest,
    ScoreOptions,
    check_keywords,
    group_pairs,
    make_inputs,
    parameters_within,
    rerank_call,
    scores_in_input_order,
    served_model,
    transport,
)
from mmrerank_client.errors import ModelNotReadyError, RerankTimeoutError, ServerUnavailableError, translate
from mmrerank_client.schema import OUTPUTS
from mmrerank_client.types import RerankResponse, ServedModel

NO_TIMEOUT = 24 * 3600.0
# Threads of the pool `score_pairs` reuses (each call still keeps to its own max_concurrency).
POOL_THREADS = 32
T = TypeVar("T")


class RerankClient(ClientBase):
    """Blocking client of the served reranker; the URL scheme picks HTTP or gRPC.

    `timeout` (seconds, None for none) bounds each call unless the call gives its own; `api_key`
    is sent as the `x-api-key` header when the server restricts inference to a key.
    """

    def _connect(self) -> None:
        self._local = threading.local()
        self._opened: list[Any] = []  # every thread's HTTP connection, closed by close()
        self._opened_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._module: Any = transport(self.endpoint.protocol)
        self._grpc = (
            self._module.InferenceServerClient(self.endpoint.address) if self.endpoint.protocol == "grpc" else None
        )

    def _http(self) -> Any:
        """The calling thread's HTTP connection, one per thread whatever the timeout (it is not thread-safe)."""
        client = getattr(self._local, "http", None)
        if client is None:
            client = self._module.InferenceServerClient(
                self.endpoint.address, connection_timeout=NO_TIMEOUT, network_timeout=NO_TIMEOUT
            )
            self._local.http = client
            with self._opened_lock:
                self._opened.append(client)
        return client

    def _within(self, call: Callable[[], T], timeout: float | None) -> T:
        """Run an HTTP call within `timeout` seconds; a call cut off closes this thread's connection.

        The HTTP transport is gevent's: a gevent timeout bounds the one call without changing the
        connection's own timeouts, so no connection is opened per distinct timeout.
        """
        if timeout is None:
            return call()
        import gevent

        try:
            with gevent.Timeout(timeout):
                return call()
        except gevent.Timeout as error:
            self._drop_http()
            raise RerankTimeoutError(f"no answer within {timeout} s") from error

    def _drop_http(self) -> None:
        """Close this thread's connection (a request cut off mid-answer leaves it unusable)."""
        client = getattr(self._local, "http", None)
        if client is not None:
            self._local.http = None
            with self._opened_lock:
                self._opened.remove(client)
            client.close()

    def _infer(self, request: RerankRequest, timeout: float | None, request_id: str = "") -> dict[str, NDArray[Any]]:
        parameters = parameters_within(request, timeout)
        inputs = make_inputs(self._module, request)
        try:
            if self._grpc is not None:
                result = self._grpc.infer(
                    self.model, inputs, request_id=request_id, parameters=parameters, headers=self._headers,
                    client_timeout=timeout,
                )  # fmt: skip
            else:
                http = self._http()
                call = lambda: http.infer(  # noqa: E731
                    self.model, inputs, request_id=request_id, parameters=parameters, headers=self._headers
                )
                result = self._within(call, timeout)
        except Exception as error:
            raise translate(error) from error
        return {name: result.as_numpy(name) for name in OUTPUTS}

    def rerank(self, query: str, documents: Sequence[str], **options: Unpack[RerankOptions]) -> RerankResponse:
        """Rank `documents` against `query`, best first (options: `RerankOptions`).

        With `prefilter_layer` and `prefilter_top_k` the server runs a cascade: every document at
        the cheap exit (`prefilter_layer`, `prefilter_dim` or `dim`), the best `prefilter_top_k`
        continued to `layer`; each result's `exit_layer` says which exit scored it.
        """
        call = rerank_call(query, documents, options, self.timeout)
        return call.response(self._infer(call.request, call.timeout, call.request_id))

    def score(self, query: str, documents: Sequence[str], **options: Unpack[ScoreOptions]) -> list[float]:
        """One score per document, in input order (options: `ScoreOptions`)."""
        check_keywords("score", options, ScoreOptions)
        return scores_in_input_order(self.rerank(query, documents, **options))

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, max_concurrency: int = 8, **options: Unpack[ScoreOptions]
    ) -> list[float]:
        """Scores of (query, document) pairs in input order; one request per distinct query.

        At most `max_concurrency` requests are in flight at once, on this client's one thread pool
        (each of its threads keeps one connection across calls).
        """
        groups = group_pairs(pairs)
        scores = [0.0] * len(pairs)
        slots = threading.BoundedSemaphore(max(1, max_concurrency))

        def run(query: str) -> None:
            try:
                indices = groups[query]
                values = self.score(query, [pairs[i][1] for i in indices], **options)
                for index, score in zip(indices, values, strict=True):
                    scores[index] = score
            finally:
                slots.release()

        futures = []
        for query in groups:
            slots.acquire()
            futures.append(self._workers().submit(run, query))
        for future in futures:
            future.result()
        return scores

    def _workers(self) -> ThreadPoolExecutor:
        """The thread pool `score_pairs` reuses, started on first use."""
        with self._opened_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="mmrerank-client")
            return self._pool

    def describe(self, timeout: float | None = None) -> ServedModel:
        """The served checkpoint: its exits, defaults, caps and name (from the model's configuration)."""
        try:
            if self._grpc is not None:
                config = self._grpc.get_model_config(
                    self.model, headers=self._headers, as_json=True, client_timeout=self._call_timeout(timeout)
                )["config"]
            else:
                http = self._http()
                call = lambda: http.get_model_config(self.model, headers=self._headers)  # noqa: E731
                config = self._within(call, self._call_timeout(timeout))
        except Exception as error:
            raise translate(error) from error
        return served_model(config)

    def is_ready(self) -> bool:
        """Whether the server is live and the model ready now."""
        try:
            client = self._grpc if self._grpc is not None else self._http()
            return bool(self._within(lambda: client.is_server_ready() and client.is_model_ready(self.model),
                                     self.timeout))  # fmt: skip
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
            client = self._grpc if self._grpc is not None else self._http()
            live = bool(self._within(client.is_server_live, self.timeout))
        except Exception:  # noqa: BLE001
            live = False
        if live:
            raise ModelNotReadyError(f"model {self.model!r} not ready after {timeout:.0f} s")
        raise ServerUnavailableError(f"no server at {self.endpoint.address} after {timeout:.0f} s")

    def close(self) -> None:
        """Close every connection this client opened, in any thread, and its thread pool."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
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
