"""Raw tritonclient calls and library-side expectations shared by the server tests."""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from mmrerank.model.heads import sigmoid

MODEL = "rerank"


def rerank_inputs(module, query: str | bytes, documents):
    """The `rerank` model's two BYTES inputs for tritonclient's http or grpc `module`."""
    query_array = np.array([query.encode() if isinstance(query, str) else query], dtype=np.object_)
    docs_array = np.array([d.encode() if isinstance(d, str) else d for d in documents], dtype=np.object_)
    tensors = [module.InferInput("query", [1], "BYTES"), module.InferInput("documents", [len(documents)], "BYTES")]
    tensors[0].set_data_from_numpy(query_array)
    tensors[1].set_data_from_numpy(docs_array.reshape(len(documents)))
    return tensors


def infer(protocol: str, url: str, query, documents, **parameters) -> dict[str, np.ndarray]:
    """One raw request to the ensemble; returns its outputs as numpy arrays."""
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(url)
    try:
        result = client.infer(MODEL, rerank_inputs(module, query, documents), parameters=parameters or None)
    finally:
        client.close()
    return {name: result.as_numpy(name) for name in ("scores", "num_tokens", "truncated", "exit_layer")}


def library_scores(reranker, pair_tokenizer, query, documents, layer=None, dim=None, normalize=True, max_length=32768):
    """What the library computes in-process for the same request."""
    layer = layer or reranker.spec.default_layer
    dim = dim or reranker.spec.default_dim
    encoded = pair_tokenizer.encode(query, documents, max_length)
    logits = reranker.logits(encoded.input_ids, encoded.lengths, layer, [dim] * len(documents))
    return sigmoid(logits) if normalize else logits


def assert_close(served: np.ndarray, expected: np.ndarray) -> None:
    assert served.shape == expected.shape
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)


SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")


def scrape(server) -> dict[tuple[str, frozenset], float]:
    """Every sample on a server's metrics page, keyed by name and label set."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as response:
        body = response.read().decode()
    samples = {}
    for line in body.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            samples[(match["name"], labels)] = float(match["value"])
    return samples
