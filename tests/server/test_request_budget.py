"""What one request may bring: a token and a byte budget, and short errors whatever the client sent."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import infer
from tritonclient.utils import InferenceServerException

QUERY = "river"


def url_of(server, protocol):
    return server.http_url if protocol == "http" else server.grpc_url


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_request_over_the_token_budget_is_refused_naming_the_limit(server, protocol):
    documents = ["water " * 33_000] * 9  # about 9 x 32K tokens after truncation, over 262,144
    with pytest.raises(InferenceServerException, match=r"hold \d+ tokens after truncation; at most 262144 .*"
                       r"\(max_request_tokens\)") as error:  # fmt: skip
        infer(protocol, url_of(server, protocol), QUERY, documents)
    assert str(error.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    # The budget counts tokens after truncation: the same documents cut to 64 tokens each are fine.
    assert infer(protocol, url_of(server, protocol), QUERY, documents, max_length=64)["num_tokens"].tolist() == [64] * 9


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_request_over_the_byte_budget_is_refused_naming_the_limit(server, protocol):
    documents = ["w" * 1_000_000] * 40  # 40 MB of text, over 32 MiB; each text is under the 4 MiB cap
    with pytest.raises(InferenceServerException, match=r"carries 40000005 bytes of text; at most 33554432 .*"
                       r"\(max_request_bytes\)") as error:  # fmt: skip
        infer(protocol, url_of(server, protocol), QUERY, documents)
    assert str(error.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_huge_parameter_value_is_quoted_short(server, protocol):
    value = "x" * 20_000
    with pytest.raises(InferenceServerException) as error:
        infer(protocol, url_of(server, protocol), QUERY, ["water"], layer=value)
    assert str(error.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    message = error.value.message()
    assert "'layer' must be an integer" in message and "(20002 characters)" in message and len(message) < 400


def test_a_huge_unknown_parameter_name_is_quoted_short(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inputs = [grpcclient.InferInput("query", [1], "BYTES"), grpcclient.InferInput("documents", [1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([b"river"], dtype=np.object_))
        inputs[1].set_data_from_numpy(np.array([b"water"], dtype=np.object_))
        with pytest.raises(InferenceServerException) as error:
            client.infer("rerank", inputs, parameters={"y" * 5000: 1})
    finally:
        client.close()
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT" and len(error.value.message()) < 500
