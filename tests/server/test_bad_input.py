"""Bad requests get a 400 naming the problem, and a good request sent alongside is answered correctly."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import assert_close, infer, library_scores
from tritonclient.utils import InferenceServerException

QUERY = "river library"
GOOD_DOCS = ["the river flows", "a library of water"]
LONG_DOC = "the river library holds the history of the city " * 30

CASES = {
    "unknown layer": (QUERY, ["x"], {"layer": 5}, r"'layer' must be one of \[1, 2, 4, 6\], got 5"),
    "unknown dim": (QUERY, ["x"], {"dim": 100}, r"'dim' must be one of \[8, 16, 32, 64, 128\], got 100"),
    "unknown parameter": (QUERY, ["x"], {"top_k": 3}, "unknown parameter 'top_k'; allowed parameters: layer, dim"),
    "layer as text": (QUERY, ["x"], {"layer": "2"}, "'layer' must be an integer, got str '2'"),
    "normalize as number": (QUERY, ["x"], {"normalize": 1}, "'normalize' must be a boolean"),
    "max_length too small": (QUERY, ["x"], {"max_length": 2}, "'max_length' must be between 4 and 32768, got 2"),
    "max_length too large": (QUERY, ["x"], {"max_length": 10**9}, "'max_length' must be between 4 and 32768"),
    "empty documents": (QUERY, [], {}, "'documents' is empty; send between 1 and 1000 documents"),
    "too many documents": (QUERY, ["x"] * 1001, {}, "holds 1001 documents; at most 1000 are allowed"),
    "document not utf-8": (QUERY, ["fine", b"\xff\xfebad"], {}, "document 1 is not valid UTF-8"),
    "query not utf-8": (b"\xc3\x28", ["fine"], {}, "query is not valid UTF-8"),
    "over-long pair without truncation": (
        QUERY,
        ["short", LONG_DOC],
        {"max_length": 32, "truncate": False},
        "document 1 makes a pair of .* over max_length=32",
    ),
    "query too long": (LONG_DOC, ["x"], {"max_length": 16}, "leaves no room for a document within max_length=16"),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_is_rejected_alone(server, reranker, pair_tokenizer, case, protocol):
    query, documents, parameters, message = CASES[case]
    url = server.http_url if protocol == "http" else server.grpc_url

    def bad():
        with pytest.raises(InferenceServerException, match=message) as error:
            infer(protocol, url, query, documents, **parameters)
        return error.value

    with ThreadPoolExecutor(2) as pool:
        bad_future = pool.submit(bad)
        good_future = pool.submit(infer, protocol, url, QUERY, GOOD_DOCS, layer=2, dim=16)
        error, good = bad_future.result(), good_future.result()
    expected_status = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    assert error.status() == expected_status
    assert "Traceback" not in error.message()
    assert_close(good["scores"], library_scores(reranker, pair_tokenizer, QUERY, GOOD_DOCS, 2, 16))
