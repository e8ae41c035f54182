"""The rerank API front in-process (Triton faked): shapes, pass-through, auth, and every error status."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from mmrerank.api.app import create_app
from mmrerank.api.triton import TritonReranker, UpstreamError
from mmrerank_client import RerankResponse, RerankResult, ServedModel
from mmrerank_client.errors import translate

SERVED = ServedModel("demo-tiny", (1, 2, 4, 6), (8, 16, 32, 64, 128), 6, 128, 32768, 1000, 262144, ("layer", "dim"))


class FakeTriton:
    """Scores each document by its length (longer is better) and records the parameters sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], dict]] = []
        self.error: Exception | None = None

    async def rank(self, query, documents, parameters, request_id=""):
        self.calls.append((query, documents, parameters))
        if self.error is not None:
            raise self.error
        results = [RerankResult(i, len(d) / 100, 7, False, 6) for i, d in enumerate(documents)]
        return RerankResponse(tuple(sorted(results, key=lambda r: -r.score)), None, None)

    async def describe(self):
        return SERVED

    async def ready(self):
        return self.error is None

    async def close(self):
        pass


@pytest.fixture()
def triton():
    return FakeTriton()


@pytest.fixture()
def api(triton):
    with TestClient(create_app(triton, api_key=None, max_body_bytes=10_000)) as client:
        yield client


DOCS = ["short one", "the longest document of all", "a medium text"]


def test_cohere_v1_sorts_cuts_to_top_n_and_echoes_documents(api, triton):
    body = {"model": "m", "query": "q", "documents": [DOCS[0], {"text": DOCS[1]}, DOCS[2]], "top_n": 2,
            "return_documents": True}  # fmt: skip
    answer = api.post("/v1/rerank", json=body).json()
    assert [r["index"] for r in answer["results"]] == [1, 2]
    assert answer["results"][0]["document"] == {"text": DOCS[1]} and answer["model"] == "m"
    assert answer["usage"] == {"total_tokens": 21} and answer["meta"]["api_version"] == {"version": "1"}
    assert triton.calls[-1] == ("q", DOCS, {"max_length": 4096})  # Cohere's own per-document default


def test_cohere_v2_returns_no_documents_and_refuses_return_documents(api):
    answer = api.post("/v2/rerank", json={"model": "m", "query": "q", "documents": DOCS}).json()
    assert [set(r) for r in answer["results"]] == [{"index", "relevance_score"}] * 3
    assert answer["meta"]["tokens"] == {"input_tokens": 21}
    refused = api.post("/v2/rerank", json={"query": "q", "documents": DOCS, "return_documents": True})
    assert refused.status_code == 422 and refused.json() == {"message": "unknown field 'return_documents'"}


def test_max_tokens_per_doc_becomes_the_pair_limit_within_the_servers_cap(api, triton):
    api.post("/v2/rerank", json={"query": "q", "documents": DOCS, "max_tokens_per_doc": 512})
    assert triton.calls[-1][2] == {"max_length": 512}
    api.post("/v2/rerank", json={"query": "q", "documents": DOCS, "max_tokens_per_doc": 10**6})
    assert triton.calls[-1][2] == {"max_length": 32768}


def test_tei_shape_on_rerank_with_raw_scores_and_text(api, triton):
    answer = api.post("/rerank", json={"query": "q", "texts": DOCS, "raw_scores": True, "return_text": True}).json()
    assert [r["index"] for r in answer] == [1, 2, 0] and answer[0]["text"] == DOCS[1]
    assert triton.calls[-1][2] == {"truncate": False, "normalize": False}
    cohere = api.post("/rerank", json={"query": "q", "documents": DOCS}).json()
    assert [r["index"] for r in cohere["results"]] == [1, 2, 0]


def test_the_models_own_parameters_pass_through(api, triton):
    body = {"query": "q", "documents": DOCS, "layer": 6, "dim": 64, "prefilter_layer": 1, "prefilter_top_k": 2}
    api.post("/v1/rerank", json=body)
    assert triton.calls[-1][2] == {"layer": 6, "dim": 64, "prefilter_layer": 1, "prefilter_top_k": 2,
                                   "max_length": 4096}  # fmt: skip
    api.post("/v1/rerank", json={**body, "max_length": 20000})
    assert triton.calls[-1][2]["max_length"] == 20000


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/rerank", {"query": "q", "documents": DOCS, "bogus": 1}, 422, "unknown field 'bogus'"),
        ("/v1/rerank", {"query": "q", "documents": []}, 422, "field 'documents': List should have at least 1 item"),
        ("/v1/rerank", {"documents": DOCS}, 422, "field 'query': Field required"),
        ("/v1/rerank", {"query": "q", "documents": DOCS, "top_n": 0}, 422, "field 'top_n'"),
        ("/rerank", {"query": "q"}, 422, "send 'texts' (the TEI shape) or 'documents' (the Cohere shape)"),
        ("/rerank", {"query": "q", "texts": DOCS, "truncation_direction": "left"}, 422, "only 'right' is supported"),
        ("/rerank", {"query": "q", "texts": DOCS, "x" * 5000: 1}, 422, "unknown field 'xxxxxxxx"),
        ("/v1/rerank", {"query": "q", "documents": DOCS, "layer": 2**64}, 422, "field 'layer': Input should be less"),
        ("/v1/rerank", {"query": "q", "documents": DOCS, "dim": -(2**70)}, 422, "field 'dim'"),
        ("/v1/rerank", {"query": "q", "documents": DOCS, "max_length": 10**30}, 422, "field 'max_length'"),
        ("/v1/rerank", {"query": "q", "documents": DOCS, "deadline_ms": 2**64}, 422, "field 'deadline_ms'"),
        ("/v1/rerank", {"query": "q", "documents": DOCS, "prefilter_top_k": 2**64}, 422, "field 'prefilter_top_k'"),
        ("/v1/rerank", {"query": "q", "documents": DOCS, "top_n": "2"}, 422, "field 'top_n': Input should be a valid"),
        ("/v1/rerank", {"query": "q", "documents": DOCS, "return_documents": "yes"}, 422, "field 'return_documents'"),
        ("/v1/rerank", {"query": "q", "documents": DOCS, "layer": "2"}, 422, "field 'layer'"),
        ("/rerank", {"query": "q", "texts": DOCS, "normalize": "no"}, 422, "field 'normalize'"),
        ("/v1/rerank", {"query": "q", "documents": [{"title": "t"}]}, 422, "field 'documents.0.text': Field required"),
        ("/v1/rerank", {"query": "q", "documents": DOCS, "normalize": False}, 422, "relevance_score in [0, 1]"),
    ],
)
def test_client_mistakes_get_a_json_message(api, path, body, status, message):
    answer = api.post(path, json=body)
    assert answer.status_code == status and message in answer.json()["message"]
    assert len(answer.json()["message"]) < 300


@pytest.mark.parametrize(
    ("path", "field", "body"),
    [
        ("/v1/rerank", "query", '{"query": "a\\ud800b", "documents": ["x"]}'),
        ("/v1/rerank", "documents.0", '{"query": "q", "documents": ["a\\udfffb"]}'),
        ("/v1/rerank", "documents.0.text", '{"query": "q", "documents": [{"text": "\\ud800"}]}'),
        ("/rerank", "texts.1", '{"query": "q", "texts": ["fine", "a\\ud800b"]}'),
        ("/v2/rerank", "model", '{"model": "m\\ud800", "query": "q", "documents": ["x"]}'),
    ],
)
def test_text_that_is_not_valid_unicode_is_refused_before_scoring(api, triton, path, field, body):
    answer = api.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["message"].startswith(f"field '{field}'") and "lone surrogate" in answer.json()["message"]
    assert triton.calls == []


def test_cohere_document_objects_may_carry_other_fields(api, triton):
    body = {"query": "q", "documents": [{"text": DOCS[0], "title": "a title", "id": 7}, DOCS[1]]}
    assert api.post("/v1/rerank", json=body).status_code == 200
    assert triton.calls[-1][1] == DOCS[:2]


def test_no_redirect_is_built_from_the_host_header_and_health_answers_head(api):
    answer = api.post("/v1/rerank/", json={"query": "q", "documents": DOCS}, headers={"Host": "evil.example"},
                      follow_redirects=False)  # fmt: skip
    assert answer.status_code == 404 and "location" not in answer.headers
    assert api.head("/health").status_code == 200


def test_a_chunked_body_over_the_limit_is_a_413(api, triton):
    def chunks():
        yield b'{"query": "q", "documents": ["'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"]}'

    answer = api.post("/v1/rerank", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "10000-byte limit" in answer.json()["message"]
    assert triton.calls == []


def test_malformed_json_is_a_400_not_a_500(api):
    answer = api.post(
        "/v1/rerank", content=b'{"query": "q", "documents": [', headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400 and answer.json() == {"message": "the request body is not valid JSON"}


def test_a_body_over_the_cap_is_refused_with_413(api, triton):
    answer = api.post("/v1/rerank", json={"query": "q", "documents": ["x" * 20_000]})
    assert answer.status_code == 413 and "10000-byte limit" in answer.json()["message"]
    assert triton.calls == []


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (UpstreamError(400, "parameter 'layer' must be one of [1, 2, 4, 6], got 3"), 400, None),
        (UpstreamError(413, "document 0 makes a pair of 40005 tokens, over max_length=32768"), 413, None),
        (UpstreamError(503, "the server is at capacity (its queue is full); retry shortly"), 503, "1"),
        (UpstreamError(504, "the request did not finish within its timeout"), 504, None),
        (RuntimeError("CUDA error: device-side assert at /src/kernel.cu:12"), 500, None),
    ],
)
def test_upstream_errors_map_to_statuses_without_tracebacks(triton, error, status, retry_after):
    triton.error = error
    with TestClient(create_app(triton), raise_server_exceptions=False) as api:
        answer = api.post("/v2/rerank", json={"query": "q", "documents": DOCS})
    assert answer.status_code == status and answer.headers.get("retry-after") == retry_after
    assert "Traceback" not in answer.text and "kernel.cu" not in answer.text


def test_the_api_key_is_required_as_bearer_or_x_api_key(triton):
    with TestClient(create_app(triton, api_key="s3cret")) as api:
        body = {"query": "q", "documents": DOCS}
        assert api.post("/v2/rerank", json=body).status_code == 401
        wrong = api.post("/v2/rerank", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "s3cret" not in wrong.text and wrong.headers["www-authenticate"] == "Bearer"
        assert api.post("/v2/rerank", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert (
            api.post("/rerank", json={"query": "q", "texts": DOCS}, headers={"x-api-key": "s3cret"}).status_code == 200
        )
        assert api.get("/health").status_code == 200 and api.get("/v1/models").status_code == 200


def test_health_models_and_the_openapi_page(api, triton):
    models = api.get("/v1/models").json()
    assert models["data"][0]["id"] == "demo-tiny" and models["data"][0]["layer_indices"] == [1, 2, 4, 6]
    assert api.get("/health").json() == {"status": "ready"}
    schema = api.get("/openapi.json").json()
    assert {"/v1/rerank", "/v2/rerank", "/rerank", "/health", "/v1/models"} <= set(schema["paths"])
    assert api.get("/docs").status_code == 200
    triton.error = UpstreamError(503, "down")
    answer = api.get("/health")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"


class RecordingClient:
    """Stands in for the typed asyncio client: records what `rerank` was asked."""

    def __init__(self) -> None:
        self.sent: dict = {}

    async def rerank(self, query, documents, **options):
        self.sent = options
        return RerankResponse((), None, None)


@pytest.mark.parametrize(("given", "timeout"), [({}, 30.0), ({"deadline_ms": 500}, 0.5), ({"layer": 2}, 30.0)])
def test_the_fronts_timeout_is_the_requests_deadline_unless_the_caller_set_one(given, timeout):
    reranker = TritonReranker("127.0.0.1:1", None, timeout=30.0)
    reranker._client = recording = RecordingClient()
    asyncio.run(reranker.rank("q", ["a"], dict(given)))
    expected = {key: value for key, value in given.items() if key != "deadline_ms"}
    assert recording.sent == {**expected, "timeout": timeout, "request_id": ""}


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.UNAVAILABLE", "This API is restricted, expecting header 'triton-grpc-protocol-x-api-key'", 401),
        ("StatusCode.INVALID_ARGUMENT", "in ensemble 'rerank', [parameter_value] 'layer' must be 1 or 2", 400),
        ("StatusCode.INVALID_ARGUMENT", "[pair_too_long] document 0 makes a pair of 40005 tokens", 413),
        ("StatusCode.INVALID_ARGUMENT", "in ensemble 'rerank', [pair_too_long] any wording at all", 413),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", 503),
        ("StatusCode.CANCELLED", "[deadline] the request passed its deadline (deadline_ms) before it was scored", 504),
        ("StatusCode.UNAVAILABLE", "[shutdown] any wording", 503),
        ("StatusCode.INTERNAL", "Stub process 'reranker_0_0' is not healthy.", 500),
    ],
)
def test_tritons_errors_reach_the_front_through_the_clients_classification(status, message, expected):
    error = UpstreamError.of(translate(InferenceServerException(message, status=status)))
    assert error.status == expected
    assert "in ensemble" not in error.message and "Stub process" not in error.message
    assert not error.message.startswith("[")


def test_a_deadline_out_of_bounds_is_refused_before_triton_is_asked():
    reranker = TritonReranker("127.0.0.1:1", None, timeout=30.0)
    reranker._client = recording = RecordingClient()
    with pytest.raises(UpstreamError, match="'deadline_ms' must be between 1 and 86400000, got 0") as raised:
        asyncio.run(reranker.rank("q", ["a"], {"deadline_ms": 0}))
    assert raised.value.status == 400 and recording.sent == {}
