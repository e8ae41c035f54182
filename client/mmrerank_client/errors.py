"""The client's exception hierarchy, translated from tritonclient's and the network's errors.

A refusal of this service's own carries a reason code (`mmrerank_client.schema.REASONS`), which
decides its class; Triton's and the network's errors are classified by their status.
"""

from __future__ import annotations

import re

from mmrerank_client.schema import untagged

# Triton prefixes a step's error with the ensemble's name; callers never see that layer.
ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")


class RerankError(Exception):
    """Base class of every error this client raises; `str()` carries the server's message.

    `reason` is the server's reason code when it refused the request itself (schema.REASONS), else None.
    """

    def __init__(self, message: str = "", reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidRequestError(RerankError):
    """The server (or a cheap client-side check) refused the request: HTTP 400 / INVALID_ARGUMENT."""


class PairTooLongError(InvalidRequestError):
    """A pair is longer than `max_length` and the request asked not to truncate (`truncate=False`)."""


class ServerUnavailableError(RerankError):
    """The server could not be reached or is shutting down."""


class ServerOverloadedError(ServerUnavailableError):
    """The server's queue is full and it refused the request at once; retry later or elsewhere."""


class ClientConfigurationError(RerankError, ValueError):
    """The client itself was set up wrongly, e.g. a URL that is not http:// or grpc://."""


class RerankTimeoutError(RerankError, TimeoutError):
    """The call did not finish within its timeout."""


class ModelNotReadyError(RerankError):
    """The server answers, but the model is not loaded or not ready."""


class AuthenticationError(RerankError):
    """The server requires an API key (the x-api-key header) and none or a wrong one was sent."""


def translate(error: BaseException) -> RerankError:
    """Map a tritonclient or network exception onto this hierarchy (the caller raises it `from` error)."""
    if isinstance(error, RerankError):
        return error
    status = ""
    message = str(error)
    status_of = getattr(error, "status", None)
    if callable(status_of):
        status = str(status_of() or "")
        message_of = getattr(error, "message", None)
        message = str(message_of()) if callable(message_of) else message
    reason, message = untagged(ENSEMBLE_PREFIX.sub("", message))
    if reason is not None:
        return REASON_CLASSES.get(reason, InvalidRequestError)(message, reason)
    lowered = f"{status} {message}".lower()
    if status in ("400", "StatusCode.INVALID_ARGUMENT"):
        return InvalidRequestError(message)
    if (
        status in ("401", "403", "StatusCode.UNAUTHENTICATED", "StatusCode.PERMISSION_DENIED")
        or "restricted" in lowered
    ):
        return AuthenticationError(message)
    if isinstance(error, TimeoutError) or "deadline" in lowered or "timed out" in lowered or "timeout" in lowered:
        return RerankTimeoutError(message or "the request timed out")
    if "exceeds maximum queue size" in lowered:
        return ServerOverloadedError(message)
    if "not ready" in lowered or "unknown model" in lowered or "is not found" in lowered or status == "404":
        return ModelNotReadyError(message)
    if (
        isinstance(error, (ConnectionError, OSError))
        or status in ("StatusCode.UNAVAILABLE", "503")
        or "unavailable" in lowered
        or "connect" in lowered
    ):
        return ServerUnavailableError(message or "the server is unavailable")
    return RerankError(message)


# The class of each refusal reason that is not a plain InvalidRequestError.
REASON_CLASSES: dict[str, type[RerankError]] = {
    "pair_too_long": PairTooLongError,
    "deadline": RerankTimeoutError,
    "shutdown": ServerUnavailableError,
    "cancelled": RerankError,
}

# The HTTP status a gateway answers each error with (the rerank API front does); others get 500.
HTTP_STATUS: dict[type[RerankError], int] = {
    InvalidRequestError: 400,
    PairTooLongError: 413,
    AuthenticationError: 401,
    ServerUnavailableError: 503,
    ModelNotReadyError: 503,
    RerankTimeoutError: 504,
}


def http_status(error: RerankError) -> int:
    """The HTTP status for `error`: its class's entry in HTTP_STATUS, or the nearest base class's, else 500."""
    return next((HTTP_STATUS[kind] for kind in type(error).__mro__ if kind in HTTP_STATUS), 500)
