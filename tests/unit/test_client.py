"""The client with tritonclient mocked: requests built right for each option, errors mapped, results sorted."""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

import mmrerank_client.aio as aio_module
import mmrerank_client.sync as sync_module
from mmrerank_client import (
    AsyncRerankClient,
    AuthenticationError,
    ClientConfigurationError,
    InvalidRequestError,
    ModelNotReadyError,
    RerankClient,
    RerankError,
    RerankTimeoutError,
    ServedModel,
    ServerOverloadedError,
    ServerUnavailableError,
)
from mmrerank_client._core import Endpoint
from mmrerank_client.errors import translate


class FakeResult:
    def __init__(self, outputs):
        self.outputs = outputs

    def as_numpy(self, name):
        return self.outputs[name]


class FakeServer:
    """Records every infer call; scores each document by its length, or raises `error`."""

    def __init__(self):
        self.calls = []
        self.error = None
        self.opened = 0
        self.closed = 0
        self.delay = 0.0

    def result_for(self, inputs):
        documents = inputs[1]._data
        lengths = np.array([len(d) for d in documents], dtype=np.float32)
        return FakeResult(
            {
                "scores": lengths / 100,
                "num_tokens": lengths.astype(np.int32) + 3,
                "truncated": lengths > 20,
                "exit_layer": np.full(len(documents), 6, dtype=np.int32),
            }
        )

    def client_class(self, asynchronous=False):
        server = self

        class FakeClient:
            def __init__(self, address, **kwargs):
                self.address, self.kwargs = address, kwargs
                server.opened += 1

            def _call(self, model, inputs, **kwargs):
                server.calls.append({"model": model, "inputs": inputs, **kwargs})
                time.sleep(server.delay)
                if server.error is not None:
                    raise server.error
                return server.result_for(inputs)

            def infer(self, model, inputs, **kwargs):
                if asynchronous:

                    async def run():
                        return self._call(model, inputs, **kwargs)

                    return run()
                return self._call(model, inputs, **kwargs)

            def close(self):
                server.closed += 1
                if asynchronous:

                    async def done():
                        return None

                    return done()
                return None

        return FakeClient


class FakeInput:
    def __init__(self, name, shape, datatype):
        self.name, self.shape, self.datatype = name, shape, datatype
        self._data = None

    def set_data_from_numpy(self, array):
        assert array.dtype == np.object_ and list(array.shape) == self.shape
        self._data = [item.decode("utf-8") for item in array]


@pytest.fixture()
def fake(monkeypatch):
    server = FakeServer()

    def fake_transport(protocol, asynchronous=False):
        fake_module = type(sys)(f"fake_{protocol}")
        fake_module.InferenceServerClient = server.client_class(asynchronous)
        fake_module.InferInput = FakeInput
        return fake_module

    for module in (sync_module, aio_module):
        monkeypatch.setattr(module, "transport", fake_transport)
    return server


DOCS = ["short", "a much longer document here", "medium text"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "grpc://127.0.0.1:8001"])
def test_rerank_sends_the_contract_and_sorts(fake, url):
    with RerankClient(url) as client:
        response = client.rerank("q", DOCS, layer=6, dim=256, normalize=False, max_length=512, truncate=False)
    call = fake.calls[0]
    assert call["model"] == "rerank"
    assert [(i.name, i.shape, i.datatype) for i in call["inputs"]] == [
        ("query", [1], "BYTES"),
        ("documents", [3], "BYTES"),
    ]
    assert call["inputs"][1]._data == DOCS
    assert call["parameters"] == {
        "layer": 6, "dim": 256, "normalize": False, "max_length": 512, "truncate": False, "deadline_ms": 60_000,
    }  # fmt: skip
    assert [r.index for r in response.results] == [1, 2, 0]
    assert response.results[0].truncated and response.results[0].num_tokens == len(DOCS[1]) + 3
    assert (response.layer, response.dim) == (6, 256)
    assert all(r.document is None for r in response)


def test_defaults_are_left_to_the_server_and_the_timeout_is_sent_as_deadline(fake):
    RerankClient().rerank("q", DOCS)
    assert fake.calls[0]["parameters"] == {"deadline_ms": 60_000}


@pytest.mark.parametrize(("timeout", "deadline_ms"), [(2.5, 2500), (0.0001, 1), (1e9, 86_400_000), (None, None)])
def test_the_call_timeout_becomes_the_servers_deadline(fake, timeout, deadline_ms):
    """The server stops working on a request once the client has stopped waiting for it."""
    RerankClient(timeout=timeout).rerank("q", DOCS)
    assert fake.calls[-1]["parameters"].get("deadline_ms") == deadline_ms


def test_top_n_and_return_documents(fake):
    response = RerankClient().rerank("q", DOCS, top_n=2, return_documents=True)
    assert [(r.index, r.document) for r in response] == [(1, DOCS[1]), (2, DOCS[2])]


def test_score_keeps_input_order(fake):
    assert RerankClient().score("q", DOCS) == pytest.approx([len(d) / 100 for d in DOCS])


def test_score_pairs_sends_one_request_per_query(fake):
    pairs = [("q1", "aa"), ("q2", "bbbb"), ("q1", "c")]
    assert RerankClient("grpc://h").score_pairs(pairs) == pytest.approx([0.02, 0.04, 0.01])
    assert sorted(len(call["inputs"][1]._data) for call in fake.calls) == [1, 2]


def test_grpc_timeout_is_passed_per_call(fake):
    client = RerankClient("grpc://h", timeout=5)
    client.rerank("q", DOCS)
    client.rerank("q", DOCS, timeout=0.5)
    assert [call["client_timeout"] for call in fake.calls] == [5, 0.5]


@pytest.mark.parametrize(
    ("documents", "top_n", "message"),
    [([], None, "'documents' is empty"), ("one string", None, "not one string"), (DOCS, 0, "top_n must be")],
)
def test_cheap_checks_fail_before_sending(fake, documents, top_n, message):
    with pytest.raises(InvalidRequestError, match=message):
        RerankClient().rerank("q", documents, top_n=top_n)
    assert fake.calls == []


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (InferenceServerException("parameter 'layer' must be one of [3]", status="400"), InvalidRequestError),
        (InferenceServerException("bad", status="StatusCode.INVALID_ARGUMENT"), InvalidRequestError),
        (InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"), RerankTimeoutError),
        (InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE"), ServerUnavailableError),
        (ConnectionRefusedError(111, "Connection refused"), ServerUnavailableError),
        (TimeoutError("timed out"), RerankTimeoutError),
        (InferenceServerException("Request for unknown model: 'x' is not found", status="400"), InvalidRequestError),
        (InferenceServerException("Request for unknown model: 'x' is not found"), ModelNotReadyError),
        (InferenceServerException("something else", status="500"), RerankError),
        (
            InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE"),
            ServerOverloadedError,
        ),
    ],
)
def test_server_errors_map_to_the_hierarchy(fake, error, expected):
    fake.error = error
    with pytest.raises(expected) as raised:
        RerankClient("grpc://h").rerank("q", DOCS)
    assert type(raised.value) is expected
    assert raised.value.__cause__ is error


def test_translation_keeps_the_servers_message_without_the_ensembles_prefix():
    error = translate(InferenceServerException("in ensemble 'rerank', 'documents' is empty", status="400"))
    assert str(error) == "'documents' is empty"


def test_a_restricted_protocol_is_an_authentication_error_with_status_401():
    from mmrerank_client import AuthenticationError
    from mmrerank_client.errors import http_status

    message = "This API is restricted, expecting header 'triton-grpc-protocol-x-api-key'"
    error = translate(InferenceServerException(message, status="StatusCode.UNAVAILABLE"))
    assert isinstance(error, AuthenticationError) and http_status(error) == 401


@pytest.mark.parametrize("url", ["http://h:1", "grpc://h:2"])
def test_async_client_matches_sync(fake, url):
    async def run():
        async with AsyncRerankClient(url) as client:
            response = await client.rerank("q", DOCS, top_n=2, layer=3)
            pairs = await client.score_pairs([("a", "xx"), ("b", "y")])
        return response, pairs

    response, pairs = asyncio.run(run())
    assert [r.index for r in response] == [1, 2] and response.layer == 3
    assert pairs == pytest.approx([0.02, 0.01])
    assert fake.calls[0]["parameters"]["deadline_ms"] == 60_000


def test_async_timeout_raises_the_timeout_error(monkeypatch, fake):
    async def slow(*args, **kwargs):
        await asyncio.sleep(5)

    client = AsyncRerankClient("grpc://h", timeout=0.05)
    monkeypatch.setattr(client._client, "infer", slow)
    with pytest.raises(RerankTimeoutError):
        asyncio.run(client.rerank("q", DOCS))


@pytest.mark.parametrize(
    ("url", "protocol", "address"),
    [
        ("http://example:9000", "http", "example:9000"),
        ("grpc://example", "grpc", "example:8001"),
        ("example", "http", "example:8000"),
        ("grpc://[::1]:7000", "grpc", "[::1]:7000"),
    ],
)
def test_endpoint_parsing(url, protocol, address):
    assert Endpoint.parse(url) == Endpoint(protocol, address)


@pytest.mark.parametrize(
    ("url", "message"),
    [("ftp://host", "scheme must be http or grpc"), ("http://", "names no host"), ("http://h:99999", "invalid port")],
)
def test_a_bad_url_raises_the_clients_own_error(url, message):
    with pytest.raises(ClientConfigurationError, match=message) as raised:
        RerankClient(url)
    assert isinstance(raised.value, RerankError) and isinstance(raised.value, ValueError)


def test_an_overloaded_server_is_a_kind_of_unavailable_server(fake):
    fake.error = InferenceServerException("Exceeds maximum queue size", status="503")
    with pytest.raises(ServerUnavailableError) as raised:
        RerankClient().rerank("q", DOCS)
    assert isinstance(raised.value, ServerOverloadedError)


def test_score_takes_typed_options_and_refuses_rerank_only_ones(fake):
    client = RerankClient()
    assert client.score("q", DOCS, layer=3, dim=64, max_length=128) == pytest.approx([0.05, 0.27, 0.11])
    assert fake.calls[-1]["parameters"] == {
        "layer": 3,
        "dim": 64,
        "max_length": 128,
        "deadline_ms": 60_000,
    }
    with pytest.raises(TypeError, match="top_n"):
        client.score("q", DOCS, top_n=2)


def test_close_closes_the_connections_of_score_pairs_worker_threads(fake):
    fake.delay = 0.1  # long enough that every worker thread takes a query and opens its own connection
    client = RerankClient("http://h")
    client.score_pairs([(f"q{i}", "doc") for i in range(6)], max_concurrency=3)
    assert fake.opened == 3
    client.close()
    assert fake.closed == fake.opened


@pytest.mark.parametrize(
    "error",
    [
        InferenceServerException("This API is restricted, expecting header 'x-api-key'", status="403"),
        InferenceServerException("This protocol is restricted", status="StatusCode.UNAVAILABLE"),
    ],
)
def test_a_missing_api_key_is_an_authentication_error(fake, error):
    fake.error = error
    with pytest.raises(AuthenticationError):
        RerankClient().rerank("q", DOCS)


def test_the_api_key_travels_as_a_header(fake):
    RerankClient("grpc://h", api_key="secret").rerank("q", DOCS)
    RerankClient("http://h").rerank("q", DOCS)
    RerankClient("http://h", api_key="secret").rerank("q", DOCS)
    assert [call["headers"] for call in fake.calls] == [
        {"triton-grpc-protocol-x-api-key": "secret"},
        None,
        {"x-api-key": "secret"},
    ]


def test_a_cascade_ranks_continued_documents_first_and_sends_its_parameters(fake):
    fake.result_for = lambda inputs: FakeResult(
        {
            "scores": np.array([0.9, 0.2, 0.6, 0.4], dtype=np.float32),
            "num_tokens": np.array([5, 6, 7, 8], dtype=np.int32),
            "truncated": np.zeros(4, dtype=bool),
            "exit_layer": np.array([3, 22, 3, 22], dtype=np.int32),
        }
    )
    response = RerankClient("grpc://h").rerank(
        "q", ["a", "b", "c", "d"], layer=22, prefilter_layer=3, prefilter_dim=64, prefilter_top_k=2
    )
    assert [(r.index, r.exit_layer) for r in response] == [(3, 22), (1, 22), (0, 3), (2, 3)]
    assert fake.calls[-1]["parameters"] == {
        "layer": 22, "prefilter_layer": 3, "prefilter_dim": 64,
        "prefilter_top_k": 2, "deadline_ms": 60_000,
    }  # fmt: skip


def test_describe_reads_the_served_checkpoint_from_the_model_config(monkeypatch):
    parameters = {
        "checkpoint": "demo-tiny", "layer_indices": "1,2,4,6", "dim_indices": "8,16,32,64,128",
        "default_layer": "6", "default_dim": "128", "max_tokens_per_pair": "32768", "max_documents": "1000",
        "max_request_tokens": "262144",
        "request_parameters": "layer,dim",
    }  # fmt: skip
    config = {"name": "rerank", "parameters": {key: {"string_value": value} for key, value in parameters.items()}}

    class Grpc:
        def __init__(self, address, **kwargs):
            pass

        def get_model_config(self, model, headers=None, as_json=False, client_timeout=None):
            assert model == "rerank" and as_json
            return {"config": config}

    monkeypatch.setattr("tritonclient.grpc.InferenceServerClient", Grpc)
    served = RerankClient("grpc://h").describe()
    assert served == ServedModel(
        "demo-tiny", (1, 2, 4, 6), (8, 16, 32, 64, 128), 6, 128, 32768, 1000, 262144, ("layer", "dim")
    )
    config["parameters"] = {}
    with pytest.raises(RerankError, match="does not describe its checkpoint.*mmrerank launcher"):
        RerankClient("grpc://h").describe()


def test_one_http_connection_per_thread_whatever_the_timeouts(fake):
    client = RerankClient("http://h")
    for timeout in (0.5, 1.0, 1.5, 2.0, None, 7.25):
        client.rerank("q", DOCS, timeout=timeout)
    assert fake.opened == 1
    assert [call["parameters"]["deadline_ms"] for call in fake.calls] == [500, 1000, 1500, 2000, 60_000, 7250]
    client.close()
    assert fake.closed == 1


def test_an_http_call_cut_off_by_its_timeout_drops_only_its_connection(fake):
    import gevent

    client = RerankClient("http://h")
    client.rerank("q", DOCS)
    with pytest.raises(RerankTimeoutError, match="no answer within 0.05 s"):
        client._within(lambda: gevent.sleep(5), 0.05)
    assert fake.closed == 1
    client.rerank("q", DOCS)
    assert fake.opened == 2


def test_score_pairs_reuses_one_pool_and_keeps_to_its_concurrency(fake):
    fake.delay = 0.05
    client = RerankClient("http://h")
    pairs = [(f"q{i}", "doc") for i in range(8)]
    for _ in range(3):
        client.score_pairs(pairs, max_concurrency=2)
    assert fake.opened <= 3  # the pool's threads and their connections outlive each call
    client.close()


def test_async_score_pairs_keeps_to_its_concurrency(fake):
    in_flight, most = 0, 0

    async def run():
        async with AsyncRerankClient("grpc://h") as client:
            original = client._infer

            async def counted(request, timeout, request_id=""):
                nonlocal in_flight, most
                in_flight += 1
                most = max(most, in_flight)
                await asyncio.sleep(0.01)
                try:
                    return await original(request, timeout, request_id)
                finally:
                    in_flight -= 1

            client._infer = counted
            return await client.score_pairs([(f"q{i}", "doc") for i in range(20)], max_concurrency=3)

    assert len(asyncio.run(run())) == 20
    assert most == 3
