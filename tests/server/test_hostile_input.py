"""Malformed and hostile requests over raw HTTP and raw gRPC: each gets a clear error, the server stays correct."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import assert_close, infer, library_scores
from tritonclient.utils import InferenceServerException

GOOD_DOCS = ["the river flows", "a library of water"]


def body(query=("river",), documents=("a", "b"), parameters=None, **overrides) -> dict:
    inputs = [
        {"name": "query", "shape": [len(query)], "datatype": "BYTES", "data": list(query)},
        {"name": "documents", "shape": [len(documents)], "datatype": "BYTES", "data": list(documents)},
    ]
    request = {"inputs": inputs, **({"parameters": parameters} if parameters is not None else {})}
    request.update(overrides)
    return request


def post(server, payload: bytes | dict, model: str = "rerank") -> tuple[int, str]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{model}/infer", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def renamed(name):
    payload = body()
    payload["inputs"][1]["name"] = name
    return payload


def retyped(datatype, data):
    payload = body()
    payload["inputs"][1].update(datatype=datatype, data=data, shape=[len(data)])
    return payload


HTTP_CASES = {
    "wrong input name": (renamed("docs"), "unexpected inference input 'docs'"),
    "missing input": ({"inputs": body()["inputs"][:1]}, "expected 2 inputs but got 1"),
    "documents as INT32": (retyped("INT32", [1, 2]), "data-type is 'INT32', but model 'rerank' expects 'BYTES'"),
    "query with two texts": (body(query=("a", "b")), "unexpected shape for input 'query'"),
    "shape and data disagree": (
        {"inputs": [body()["inputs"][0], {**body()["inputs"][1], "shape": [5]}]},
        "expected 5 string elements for inference input 'documents' for model 'rerank', got 2",
    ),
    "no inputs at all": ({"inputs": []}, "expected 2 inputs but got 0"),
    "layer negative": (body(parameters={"layer": -1}), r"'layer' must be one of \[1, 2, 4, 6\], got -1"),
    "layer absurd": (body(parameters={"layer": 10**18}), "'layer' must be one of"),
    "dim zero": (body(parameters={"dim": 0}), "'dim' must be one of"),
    "dim as float": (body(parameters={"dim": 16.5}), "'dim'|parameter"),
    "max_length negative": (body(parameters={"max_length": -5}), "'max_length' must be between 4 and 32768, got -5"),
    "max_length absurd": (body(parameters={"max_length": 2**62}), "'max_length' must be between"),
    "truncate as string": (body(parameters={"truncate": "false"}), "'truncate' must be a boolean"),
    "normalize as string": (body(parameters={"normalize": "yes"}), "'normalize' must be a boolean"),
    "unknown parameter": (body(parameters={"temperature": 1}), "unknown parameter 'temperature'"),
    "empty document list": (body(documents=()), "'documents' is empty"),
    "1001 documents": (body(documents=("x",) * 1001), "at most 1000 are allowed"),
    "over-long pair, no truncation": (
        body(documents=("ok", "word " * 5000), parameters={"truncate": False, "max_length": 512}),
        "document 1 makes a pair of .* over max_length=512",
    ),
    "query too long": (body(query=("word " * 40000,), documents=("x",)), "leaves no room for a document"),
}


# Triton itself answers JSON it cannot parse with HTTP 500 (not 400); the message is still clear.
UNPARSABLE = {
    "body is not JSON": (b"{not json", "failed to parse the request JSON buffer"),
    "body is a JSON list": (b"[1, 2, 3]", "Unable to parse 'inputs'"),
}


@pytest.mark.parametrize("case", sorted(UNPARSABLE))
def test_unparsable_json_gets_a_clear_error(server, case):
    payload, message = UNPARSABLE[case]
    status, text = post(server, payload)
    assert status == 500 and message in json.loads(text)["error"], (status, text)
    assert infer("http", server.http_url, "river", GOOD_DOCS)["scores"].shape == (2,)


@pytest.mark.parametrize("case", sorted(HTTP_CASES))
def test_raw_http_bad_request_gets_a_clear_400(server, reranker, pair_tokenizer, case):
    payload, message = HTTP_CASES[case]
    status, text = post(server, payload)
    assert status == 400, (status, text)
    error = json.loads(text)["error"]
    assert re.search(message, error), error
    assert "Traceback" not in error and 'File "' not in error
    served = infer("http", server.http_url, "river", GOOD_DOCS, layer=2, dim=16)
    assert_close(served["scores"], library_scores(reranker, pair_tokenizer, "river", GOOD_DOCS, 2, 16))


@pytest.mark.parametrize(
    ("documents", "expected_truncated"),
    [(["x" * 150_000], [True]), (["", "river"], [False, False]), (["\u0000\u200b🙂 مرحبا ሰላም"], [False])],
    ids=["150k characters", "empty document", "control and astral characters"],
)
def test_odd_but_valid_documents_are_scored(server, reranker, pair_tokenizer, documents, expected_truncated):
    served = infer("grpc", server.grpc_url, "river", documents, layer=1)
    assert served["truncated"].tolist() == expected_truncated
    assert_close(served["scores"], library_scores(reranker, pair_tokenizer, "river", documents, layer=1))


@pytest.mark.parametrize("payload", [b"\x00\x01\x02\xff" * 10, bytes(range(256))], ids=["binary", "all bytes"])
def test_binary_documents_are_rejected_as_not_utf8(server, payload):
    with pytest.raises(InferenceServerException, match="document 0 is not valid UTF-8") as error:
        infer("grpc", server.grpc_url, "river", [payload])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_an_oversized_document_is_refused(server):
    status, text = post(server, body(documents=("fine", "x" * (5 * 2**20))))
    assert status == 400, (status, text[:300])
    assert "document 1 has 5242880 bytes; at most 4194304 are allowed" in json.loads(text)["error"]
    status, text = post(server, body(documents=("fine", "x" * (70 * 2**20))))
    assert status == 400, (status, text[:300])
    assert "carries 73400329 bytes of text; at most 33554432" in json.loads(text)["error"]
    assert len(text) < 1000
    assert infer("http", server.http_url, "river", GOOD_DOCS)["scores"].shape == (2,)


def _reranker_request(url: str, ids: np.ndarray, lengths: np.ndarray, layer: int, **parameters):
    """One raw request to the internal reranker model, bypassing the tokenizer: one ragged row."""
    inputs = [grpcclient.InferInput("_input_ids", [1, ids.size], "INT32"),
              grpcclient.InferInput("_lengths", [1, lengths.size], "INT32")]  # fmt: skip
    inputs[0].set_data_from_numpy(ids.reshape(1, -1).astype(np.int32))
    inputs[1].set_data_from_numpy(lengths.reshape(1, -1).astype(np.int32))
    client = grpcclient.InferenceServerClient(url)
    try:
        return client.infer("reranker", inputs, parameters={"layer": layer, "dim": 8, "normalize": False, **parameters})
    finally:
        client.close()


def test_a_reranker_batch_mixing_bad_and_good_requests_answers_every_good_one(server, reranker, pair_tokenizer):
    encoded = pair_tokenizer.encode("river", ["the river flows", "water " * 50], 32768)
    good = (encoded.input_ids, encoded.lengths)
    bad_ids = encoded.input_ids.copy()
    bad_ids[1] = 10**6  # beyond the vocabulary
    jobs = [(good, 2), ((bad_ids, encoded.lengths), 2), ((encoded.input_ids, encoded.lengths + 500), 4)] * 6

    def run(job):
        (ids, lengths), layer = job
        try:
            return _reranker_request(server.grpc_url, ids, lengths, layer).as_numpy("scores")
        except InferenceServerException as error:
            return error

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    expected = reranker.logits(encoded.input_ids, encoded.lengths, 2, [8, 8])
    for index, result in enumerate(results):
        if index % 3 == 0:
            assert not isinstance(result, Exception), result
            assert_close(result.reshape(-1), expected)
        else:
            assert isinstance(result, InferenceServerException)
            assert result.status() == "StatusCode.INVALID_ARGUMENT"
            expected_message = "token ids must lie between" if index % 3 == 1 else "'_lengths' must add up to the"
            assert expected_message in result.message()


@pytest.mark.parametrize(
    ("length", "parameters", "message"),
    [
        (33_000, {}, "every pair must hold between 1 and max_length=32768 tokens, got 33000 to 33000"),
        (300, {"max_length": 256}, "every pair must hold between 1 and max_length=256 tokens, got 300 to 300"),
        # The tokenizer step's bounds hold here too: the pair template's 3 special tokens and one more, the pair cap.
        (300, {"max_length": 2}, r"\[parameter_value\] parameter 'max_length' must be between 4 and 32768, got 2"),
        (300, {"max_length": 40_000}, r"parameter 'max_length' must be between 4 and 32768, got 40000"),
    ],
)
def test_the_internal_reranker_refuses_rows_over_its_limits(server, length, parameters, message):
    ids = np.full(length, 7, dtype=np.int32)
    ids[0] = 2
    with pytest.raises(InferenceServerException, match=message) as error:
        _reranker_request(server.grpc_url, ids, np.array([length]), 2, **parameters)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        ([3] * 1001, "'documents' holds 1001 documents; at most 1000 are allowed per request"),
        ([30_000] * 9, "hold 270000 tokens after truncation; at most 262144 are allowed per request"),
    ],
)
def test_the_internal_reranker_called_directly_enforces_the_request_caps(server, lengths, message):
    ids = np.full(sum(lengths), 7, dtype=np.int32)
    ids[np.cumsum([0, *lengths[:-1]])] = 2
    with pytest.raises(InferenceServerException, match=message) as error:
        _reranker_request(server.grpc_url, ids, np.array(lengths), 2)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
