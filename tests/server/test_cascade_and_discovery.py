"""The cascade and the served checkpoint's facts, through a real tritonserver on both protocols."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import assert_close, infer
from servers import start_server
from tritonclient.utils import InferenceServerException

from mmrerank.dev.corpus import text
from mmrerank_client import RerankClient, ServedModel
from mmrerank_client.schema import PARAMETER_NAMES

QUERY = "where does the river meet the city library"


@pytest.fixture(scope="module")
def documents() -> list[str]:
    rng = random.Random(23)
    return [text(rng, n) for n in (4, 60, 15, 200, 33, 90, 8, 140, 50, 25)]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(("cheap", "deep"), [(1, 6), (2, 4), (4, 6)])
def test_a_cascade_continues_the_best_and_equals_plain_requests(server, documents, protocol, cheap, deep):
    url = server.http_url if protocol == "http" else server.grpc_url
    served = infer(
        protocol, url, QUERY, documents, layer=deep, dim=64, prefilter_layer=cheap, prefilter_dim=16, prefilter_top_k=3
    )
    cheap_scores = infer(protocol, url, QUERY, documents, layer=cheap, dim=16)["scores"]
    deep_scores = infer(protocol, url, QUERY, documents, layer=deep, dim=64)["scores"]
    best = sorted(range(len(documents)), key=lambda i: (-cheap_scores[i], i))[:3]
    continued = served["exit_layer"] == deep
    assert sorted(np.flatnonzero(continued).tolist()) == sorted(best)
    assert served["exit_layer"].dtype == np.int32 and set(served["exit_layer"].tolist()) == {cheap, deep}
    assert_close(served["scores"][continued], deep_scores[continued])
    assert_close(served["scores"][~continued], cheap_scores[~continued])


def test_plain_requests_report_their_exit_layer(server, documents):
    assert infer("grpc", server.grpc_url, QUERY, documents, layer=2)["exit_layer"].tolist() == [2] * len(documents)
    assert infer("http", server.http_url, QUERY, documents)["exit_layer"].tolist() == [6] * len(documents)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"layer": 4, "prefilter_layer": 4, "prefilter_top_k": 2}, "shallower than layer 4"),
        ({"prefilter_layer": 1, "prefilter_top_k": 0}, "'prefilter_top_k' must be at least 1"),
        ({"prefilter_layer": 5, "prefilter_top_k": 2}, r"one of \[1, 2, 4\], got 5"),
        ({"prefilter_layer": 1}, "needs both 'prefilter_layer' and 'prefilter_top_k'"),
    ],
)
def test_bad_cascades_are_refused_on_both_protocols(server, documents, protocol, parameters, message):
    url = server.http_url if protocol == "http" else server.grpc_url
    with pytest.raises(InferenceServerException, match=message) as error:
        infer(protocol, url, QUERY, documents, **parameters)
    assert str(error.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")


def test_the_client_ranks_a_cascade_deepest_first(server, documents):
    with RerankClient(f"grpc://{server.grpc_url}") as client:
        response = client.rerank(QUERY, documents, layer=6, prefilter_layer=1, prefilter_top_k=4)
    exits = [result.exit_layer for result in response]
    assert exits == [6] * 4 + [1] * (len(documents) - 4)
    scores = [result.score for result in response]
    assert scores[:4] == sorted(scores[:4], reverse=True) and scores[4:] == sorted(scores[4:], reverse=True)


@pytest.fixture(scope="module")
def narrow_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint offering only exits 2 and 6 at widths 16 and 128."""
    target = tmp_path_factory.mktemp("narrow") / "checkpoint"
    shutil.copytree(tiny_checkpoint, target)
    config = json.loads((target / "matryoshka_config.json").read_text())
    config.update(layer_indices=[6, 2], dim_indices=[128, 16], model_name_or_path="narrow-demo")
    (target / "matryoshka_config.json").write_text(json.dumps(config))
    heads = torch.load(target / "classification_heads.pt", weights_only=True)
    kept = {
        key: value
        for key, value in heads.items()
        if key.split(".")[0] in ("2", "6") and key.split(".")[1] in ("16", "128")
    }
    torch.save(kept, target / "classification_heads.pt")
    return target


def test_any_triton_client_reads_the_served_checkpoints_facts(server):
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        parameters = client.get_model_config("rerank")["parameters"]
    finally:
        client.close()
    facts = {key: value["string_value"] for key, value in parameters.items()}
    assert facts["layer_indices"] == "1,2,4,6" and facts["dim_indices"] == "8,16,32,64,128"
    assert facts["request_parameters"].split(",") == list(PARAMETER_NAMES)
    with RerankClient(f"grpc://{server.grpc_url}") as typed:
        assert typed.describe() == ServedModel(
            "demo-tiny", (1, 2, 4, 6), (8, 16, 32, 64, 128), 6, 128, 32768, 1000, 262144, PARAMETER_NAMES
        )


def test_another_checkpoint_describes_its_own_exits(narrow_checkpoint, tmp_path):
    server = start_server(narrow_checkpoint, tmp_path / "server.log")
    try:
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            config = grpc.get_model_config("rerank", as_json=True)["config"]
        finally:
            grpc.close()
        assert config["parameters"]["layer_indices"]["string_value"] == "2,6"
        with RerankClient(f"http://{server.http_url}") as client:
            served = client.describe()
            assert (served.checkpoint, served.layer_indices, served.dim_indices) == ("narrow-demo", (2, 6), (16, 128))
            assert (served.default_layer, served.default_dim) == (6, 128)
            assert [r.exit_layer for r in client.rerank(QUERY, ["a river", "bread"])] == [6, 6]
        rerank = Path(sys.executable).parent / "rerank"
        result = subprocess.run(
            [str(rerank), "--describe", "--url", f"grpc://{server.grpc_url}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "layer_indices        2, 6" in result.stdout and "checkpoint           narrow-demo" in result.stdout
    finally:
        assert server.stop() == 0
