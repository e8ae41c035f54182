"""The front's way to Triton: the project's typed asyncio client over gRPC, its errors as HTTP statuses.

One client of Triton for the whole project: the outputs, the result order, the default deadline
and the error classification (`mmrerank_client.errors.http_status`) are the client's.
"""

from __future__ import annotations

from typing import Any

from mmrerank_client import AsyncRerankClient, RerankError, RerankResponse, ServedModel, ServerOverloadedError
from mmrerank_client.errors import http_status
from mmrerank_client.schema import range_problem

# What the front says for statuses whose server message is not the caller's business.
PUBLIC_MESSAGES = {
    503: "the reranker is not available right now; retry shortly",
    504: "the request did not finish within its timeout",
    500: "internal error while ranking",
}


class UpstreamError(Exception):
    """Triton refused or failed a request; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @classmethod
    def of(cls, error: RerankError) -> UpstreamError:
        """The client's error as the front's answer: the server's message for client faults, a short one otherwise."""
        status = http_status(error)
        if isinstance(error, ServerOverloadedError):
            return cls(status, "the server is at capacity (its queue is full); retry shortly")
        return cls(status, PUBLIC_MESSAGES.get(status, str(error)))


class TritonReranker:
    """Sends rerank requests through one `AsyncRerankClient` (opened on first use, closed by `close`)."""

    def __init__(self, address: str, api_key: str | None, timeout: float) -> None:
        self.address = address
        self.api_key = api_key
        self.timeout = timeout
        self._client: AsyncRerankClient | None = None

    @property
    def client(self) -> AsyncRerankClient:
        """The typed client, created inside the running event loop."""
        if self._client is None:
            self._client = AsyncRerankClient(f"grpc://{self.address}", timeout=self.timeout, api_key=self.api_key)
        return self._client

    async def rank(
        self, query: str, documents: list[str], parameters: dict[str, Any], request_id: str = ""
    ) -> RerankResponse:
        """Every document ranked against `query` with these request parameters, best first.

        The call's timeout, which the client sends as the request's deadline, is the caller's
        `deadline_ms` when given, else this front's own timeout: the server stops working on a
        request once this front stops waiting for it.
        """
        options = dict(parameters)
        deadline = options.pop("deadline_ms", None)
        if deadline is not None and (problem := range_problem("deadline_ms", deadline)):
            raise UpstreamError(400, problem)
        timeout = self.timeout if deadline is None else deadline / 1000
        try:
            return await self.client.rerank(query, documents, timeout=timeout, request_id=request_id, **options)
        except RerankError as error:
            raise UpstreamError.of(error) from error

    async def describe(self) -> ServedModel:
        """The served checkpoint's facts."""
        try:
            return await self.client.describe()
        except RerankError as error:
            raise UpstreamError.of(error) from error

    async def ready(self) -> bool:
        """Whether Triton says the `rerank` model is ready."""
        return await self.client.is_ready()

    async def close(self) -> None:
        """Close the connection."""
        if self._client is not None:
            await self._client.close()
            self._client = None
