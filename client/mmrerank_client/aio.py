"""The asyncio client: `AsyncRerankClient("http://host:8000")` or `AsyncRerankClient("grpc://host:8001")`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

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


class AsyncRerankClient(ClientBase):
    """asyncio client of the served reranker; the URL scheme picks HTTP or gRPC.

    `timeout` (seconds, None for none) bounds each call unless the call gives its own; `api_key`
    is sent as the `x-api-key` header when the server restricts inference to a key.
    """

    def _connect(self) -> None:
        self._module: Any = transport(self.endpoint.protocol, asynchronous=True)
        self._client: Any = self._module.InferenceServerClient(self.endpoint.address)

    async def _infer(
        self, request: RerankRequest, timeout: float | None, request_id: str = ""
    ) -> dict[str, NDArray[Any]]:
        call = self._client.infer(
            self.model,
            make_inputs(self._module, request),
            request_id=request_id,
            parameters=parameters_within(request, timeout),
            headers=self._headers,
        )
        try:
            result = await asyncio.wait_for(call, timeout)
        except asyncio.TimeoutError as error:
            raise RerankTimeoutError(f"no answer within {timeout} s") from error
        except Exception as error:
            raise translate(error) from error
        return {name: result.as_numpy(name) for name in OUTPUTS}

    async def rerank(self, query: str, documents: Sequence[str], **options: Unpack[RerankOptions]) -> RerankResponse:
        """Rank `documents` against `query`, best first (options: `RerankOptions`).

        With `prefilter_layer` and `prefilter_top_k` the server runs a cascade: every document at
        the cheap exit (`prefilter_layer`, `prefilter_dim` or `dim`), the best `prefilter_top_k`
        continued to `layer`; each result's `exit_layer` says which exit scored it.
        """
        call = rerank_call(query, documents, options, self.timeout)
        return call.response(await self._infer(call.request, call.timeout, call.request_id))

    async def score(self, query: str, documents: Sequence[str], **options: Unpack[ScoreOptions]) -> list[float]:
        """One score per document, in input order (options: `ScoreOptions`)."""
        check_keywords("score", options, ScoreOptions)
        return scores_in_input_order(await self.rerank(query, documents, **options))

    async def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, max_concurrency: int = 8, **options: Unpack[ScoreOptions]
    ) -> list[float]:
        """Scores of (query, document) pairs in input order; one request per distinct query.

        At most `max_concurrency` requests are in flight at once, so one call cannot fill the
        server's queue on its own.
        """
        groups = group_pairs(pairs)
        slots = asyncio.Semaphore(max(1, max_concurrency))

        async def one(query: str) -> list[float]:
            async with slots:
                return await self.score(query, [pairs[i][1] for i in groups[query]], **options)

        per_query = await asyncio.gather(*(one(query) for query in groups))
        scores = [0.0] * len(pairs)
        for indices, values in zip(groups.values(), per_query, strict=True):
            for index, score in zip(indices, values, strict=True):
                scores[index] = score
        return scores

    async def describe(self, timeout: float | None = None) -> ServedModel:
        """The served checkpoint: its exits, defaults, caps and name (from the model's configuration)."""
        seconds = self._call_timeout(timeout)
        try:
            if self.endpoint.protocol == "grpc":
                call = self._client.get_model_config(self.model, headers=self._headers, as_json=True)
                config = (await asyncio.wait_for(call, seconds))["config"]
            else:
                call = self._client.get_model_config(self.model, headers=self._headers)
                config = await asyncio.wait_for(call, seconds)
        except asyncio.TimeoutError as error:
            raise RerankTimeoutError(f"no answer within {seconds} s") from error
        except Exception as error:
            raise translate(error) from error
        return served_model(config)

    async def is_ready(self) -> bool:
        """Whether the server is live and the model ready now."""
        try:
            return bool(await self._client.is_server_ready() and await self._client.is_model_ready(self.model))
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False

    async def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.5) -> None:
        """Wait until the model is ready; raise ServerUnavailableError or ModelNotReadyError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if await self.is_ready():
                return
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(interval)
        try:
            live = bool(await self._client.is_server_live())
        except Exception:  # noqa: BLE001
            live = False
        if live:
            raise ModelNotReadyError(f"model {self.model!r} not ready after {timeout:.0f} s")
        raise ServerUnavailableError(f"no server at {self.endpoint.address} after {timeout:.0f} s")

    async def close(self) -> None:
        """Close the connection."""
        await self._client.close()

    async def __aenter__(self) -> AsyncRerankClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()
