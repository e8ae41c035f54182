"""The rerank API front: the routes RAG frameworks call, translated to the `rerank` ensemble over gRPC.

FastAPI on uvicorn: request shapes are pydantic models, so the OpenAPI page (`/docs`,
`/openapi.json`) documents exactly what is accepted; every error answers `{"message": ...}`.
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmrerank import __version__
from mmrerank.api.shapes import (
    CohereRequest,
    CohereResponse,
    CohereResult,
    CohereV2Request,
    Document,
    ErrorBody,
    ModelCard,
    ModelList,
    TeiRequest,
    TeiResult,
    Usage,
)
from mmrerank.api.triton import TritonReranker, UpstreamError
from mmrerank.serving.contract import quote
from mmrerank.serving.deadlines import CancelNotices
from mmrerank_client import RerankResponse, ServedModel
from mmrerank_client.schema import FRONT

RERANK_PATHS = ("/v1/rerank", "/v2/rerank", "/rerank")
# A document is a string or an object: pydantic reports a failure of each branch, and these types
# mean "the other branch" (a string where an object was tried, or the reverse).
WRONG_BRANCH = {"string_type", "model_type", "model_attributes_type"}
# Logged for a request whose client left (nginx's convention); nobody receives it.
CLIENT_CLOSED_REQUEST = 499
RETRY_AFTER_SECONDS = "1"
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 413, 422, 503, 504)
}  # fmt: skip


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413, declared or chunked, before the app sees it.

    The body is read here (at most `max_bytes`, what the app would hold anyway) and replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # the client left; the app sees the disconnect
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"the request body is over the {self.max_bytes}-byte limit")
        await response(scope, receive, send)


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


async def disconnected(http: Request) -> None:
    """Return once the client of `http` has gone away (its body is read: the next message says so)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """`{"message": ...}` with this status."""
    return JSONResponse({"message": message}, status_code=status, headers=headers)


def validation_message(errors: list[Any]) -> tuple[int, str]:
    """The status and a one-line message for pydantic's or FastAPI's validation errors.

    A document that may be a string or an object fails both ways; the object's error says more.
    """
    relevant = [error for error in errors if error.get("type") not in WRONG_BRANCH] or errors
    first = relevant[0] if relevant else {}
    if first.get("type") == "json_invalid":
        return 400, "the request body is not valid JSON"
    where = ".".join(str(part) for part in first.get("loc", ()) if not is_branch_tag(part)) or "body"
    if first.get("type") == "extra_forbidden":
        return 422, f"unknown field {quote(where)}"
    return 422, f"field {quote(where)}: {first.get('msg', 'invalid')}"


def is_branch_tag(part: object) -> bool:
    """Whether a part of a validation error's location names the body or a union's branch, not a field."""
    return isinstance(part, str) and (part in ("body", "str", "Document") or part.startswith("function-"))


def answer(content: BaseModel | list[TeiResult]) -> JSONResponse:
    """A 200 with the shape's JSON, fields that are None left out."""
    if isinstance(content, list):
        return JSONResponse([item.model_dump(exclude_none=True) for item in content])
    return JSONResponse(content.model_dump(exclude_none=True))


def key_matches(headers: dict[bytes, bytes], api_key: str) -> bool:
    """`Authorization: Bearer <key>` (what Open WebUI, Dify and RAGFlow send) or `x-api-key: <key>`."""
    authorization = headers.get(b"authorization", b"")
    offered = authorization[7:] if authorization[:7].lower() == b"bearer " else headers.get(b"x-api-key")
    return offered is not None and hmac.compare_digest(offered, api_key.encode())


class RequireKey:
    """ASGI middleware: the rerank routes answer 401 without the API key; health, models and docs stay open."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in RERANK_PATHS:
            if not key_matches(dict(scope.get("headers", [])), self.api_key):
                response = error_response(401, "missing or wrong API key", {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    triton: TritonReranker,
    api_key: str | None = None,
    max_body_bytes: int = FRONT.max_body_bytes,
    cancels: CancelNotices | None = None,
) -> FastAPI:
    """The ASGI app; `api_key` (from MMRERANK_API_KEY) guards the rerank routes when set.

    `cancels` is where the front names requests whose clients went away, so the models stop them.
    """
    notices = cancels or CancelNotices(None)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await triton.close()

    app = FastAPI(
        title="mmrerank rerank API",
        version=__version__,
        description="Cohere/Jina- and TEI-shaped rerank routes in front of the Triton `rerank` model.",
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would be built from the Host header, and skip the key check
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    served: list[ServedModel] = []

    if api_key:
        app.add_middleware(RequireKey, api_key=api_key)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(*validation_message(list(error.errors())))

    @app.exception_handler(UpstreamError)
    async def upstream(_request: Request, error: UpstreamError) -> JSONResponse:
        headers = {"Retry-After": RETRY_AFTER_SECONDS} if error.status == 503 else None
        return error_response(error.status, error.message, headers)

    @app.exception_handler(ClientGone)
    async def client_gone(_request: Request, _error: ClientGone) -> JSONResponse:
        return error_response(CLIENT_CLOSED_REQUEST, "the client closed the connection")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, _error: Exception) -> JSONResponse:
        return error_response(500, "internal error")

    async def served_model() -> ServedModel:
        """The served checkpoint's facts, read once."""
        if not served:
            served.append(await triton.describe())
        return served[0]

    async def ranked(http: Request, query: str, texts: list[str], parameters: dict[str, Any]) -> RerankResponse:
        """Rank through Triton; when the client goes away first, cancel the call and tell the models to stop."""
        request_id = uuid.uuid4().hex
        ranking = asyncio.ensure_future(triton.rank(query, texts, parameters, request_id))
        gone = asyncio.ensure_future(disconnected(http))
        try:
            await asyncio.wait({ranking, gone}, return_when=asyncio.FIRST_COMPLETED)
            if ranking.done():
                return ranking.result()
            ranking.cancel()  # first: the call stops between the steps whatever the file system does
            await asyncio.to_thread(notices.cancel, request_id)
            raise ClientGone
        finally:
            gone.cancel()

    async def cohere(http: Request, request: CohereV2Request, version: str, return_documents: bool) -> CohereResponse:
        parameters = request.parameters()
        if parameters.get("normalize") is False:
            raise HTTPException(422, "the Cohere routes return relevance_score in [0, 1]; for raw logits use "
                                "POST /rerank with 'texts' and 'raw_scores': true")  # fmt: skip
        if request.truncate is not None:
            parameters["truncate"] = request.truncate
        if "max_length" not in parameters:
            # The server's limit counts the whole pair; it never cuts the query.
            cap = (await served_model()).max_tokens_per_pair
            parameters["max_length"] = min(request.max_tokens_per_doc or FRONT.cohere_max_tokens_per_doc, cap)
        texts = request.texts()
        ranking = await ranked(http, request.query, texts, parameters)
        results = [
            CohereResult(
                index=result.index,
                relevance_score=result.score,
                document=Document(text=texts[result.index]) if return_documents else None,
            )
            for result in ranking.results[: request.top_n]
        ]
        total = sum(result.num_tokens for result in ranking.results)
        meta: dict[str, Any] = {"api_version": {"version": version}, "billed_units": {"search_units": 1}}
        if version == "2":
            meta["tokens"] = {"input_tokens": total}
        model = request.model or (await served_model()).checkpoint
        return CohereResponse(id=str(uuid.uuid4()), model=model, results=results, usage=Usage(total_tokens=total),
                              meta=meta)  # fmt: skip

    async def tei(http: Request, request: TeiRequest) -> list[TeiResult]:
        parameters = {**request.parameters(), "truncate": request.truncate}
        if request.raw_scores and "normalize" not in parameters:
            parameters["normalize"] = False
        ranking = await ranked(http, request.query, request.texts, parameters)
        return [
            TeiResult(index=result.index, score=result.score, text=request.texts[result.index] if request.return_text
                      else None)
            for result in ranking.results
        ]  # fmt: skip

    # The answers are built from the shapes above and sent as they are; the shapes document them.
    cohere_answer = {200: {"model": CohereResponse}, **ERRORS}

    @app.post("/v1/rerank", response_class=JSONResponse, responses=cohere_answer)
    async def rerank_v1(http: Request, request: CohereRequest) -> JSONResponse:
        """Cohere v1 / Jina shape; `relevance_score` is the sigmoid score, results best first."""
        return answer(await cohere(http, request, "1", request.return_documents))

    @app.post("/v2/rerank", response_class=JSONResponse, responses=cohere_answer)
    async def rerank_v2(http: Request, request: CohereV2Request) -> JSONResponse:
        """Cohere v2 shape (what `cohere.ClientV2.rerank` calls): no documents echoed back."""
        return answer(await cohere(http, request, "2", False))

    @app.post(
        "/rerank",
        response_class=JSONResponse,
        responses={200: {"model": list[TeiResult] | CohereResponse}, **ERRORS},
    )
    async def rerank_by_shape(http: Request, body: Annotated[dict[str, Any], Body()]) -> JSONResponse:
        """TEI's shape when the body has `texts`, Cohere v1's when it has `documents`."""
        try:
            if "texts" in body:
                return answer(await tei(http, TeiRequest.model_validate(body)))
            if "documents" in body:
                request = CohereRequest.model_validate(body)
                return answer(await cohere(http, request, "1", request.return_documents))
        except ValidationError as error:
            status, message = validation_message(list(error.errors()))
            raise HTTPException(status, message) from error
        raise HTTPException(422, "send 'texts' (the TEI shape) or 'documents' (the Cohere shape)")

    @app.head("/health", include_in_schema=False)
    async def health_head() -> JSONResponse:
        """HEAD /health: the status of GET /health (load balancers probe with HEAD)."""
        return await health()

    @app.get("/health", responses={503: {"model": ErrorBody}})
    async def health() -> JSONResponse:
        """200 when Triton's `rerank` model is ready, else 503."""
        if await triton.ready():
            return JSONResponse({"status": "ready"})
        return error_response(503, "the reranker is not ready", {"Retry-After": RETRY_AFTER_SECONDS})

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        """The served checkpoint, with its exits and caps."""
        facts = await served_model()
        card = ModelCard(
            id=facts.checkpoint,
            layer_indices=list(facts.layer_indices),
            dim_indices=list(facts.dim_indices),
            max_tokens_per_pair=facts.max_tokens_per_pair,
            max_documents=facts.max_documents,
        )
        return ModelList(data=[card])

    return app
