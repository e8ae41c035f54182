"""Typed Python client of the served mmBERT 2D-Matryoshka reranker (HTTP and gRPC, sync and asyncio).

from mmrerank_client import RerankClient

with RerankClient("http://127.0.0.1:8000") as client:
    for result in client.rerank("query", ["doc a", "doc b"], top_n=1, layer=6, dim=256):
        print(result.index, result.score)
"""

from mmrerank_client.aio import AsyncRerankClient
from mmrerank_client.errors import (
    AuthenticationError,
    ClientConfigurationError,
    InvalidRequestError,
    ModelNotReadyError,
    PairTooLongError,
    RerankError,
    RerankTimeoutError,
    ServerOverloadedError,
    ServerUnavailableError,
)
from mmrerank_client.sync import RerankClient
from mmrerank_client.types import RerankResponse, RerankResult, ServedModel

__all__ = [
    "AuthenticationError",
    "AsyncRerankClient",
    "ClientConfigurationError",
    "InvalidRequestError",
    "ModelNotReadyError",
    "PairTooLongError",
    "RerankClient",
    "RerankError",
    "RerankResponse",
    "RerankResult",
    "RerankTimeoutError",
    "ServerOverloadedError",
    "ServerUnavailableError",
    "ServedModel",
]
