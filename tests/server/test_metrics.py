"""The custom Prometheus counters on Triton's metrics endpoint move as requests are served."""

from __future__ import annotations

import pytest
from helpers import infer, scrape
from tritonclient.utils import InferenceServerException


def delta(before, after, name, **labels) -> float:
    key = (name, frozenset((k, str(v)) for k, v in labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_counters_follow_the_traffic(server):
    before = scrape(server)
    documents = ["the river", "a city of water", "history " * 200]
    served = infer("http", server.http_url, "river", documents, layer=2, dim=16, max_length=64)
    with pytest.raises(InferenceServerException):
        infer("http", server.http_url, "river", ["x"], layer=3)
    after = scrape(server)
    assert delta(before, after, "mmrerank_pairs_scored_total", layer=2, dim=16) == 3
    assert delta(before, after, "mmrerank_tokens_scored_total", layer=2, dim=16) == served["num_tokens"].sum()
    assert delta(before, after, "mmrerank_documents_truncated_total") == 1
    assert delta(before, after, "mmrerank_requests_rejected_total", step="tokenizer", reason="parameter_value") == 1
    processed = delta(before, after, "mmrerank_tokens_processed_total")
    assert served["num_tokens"].sum() <= processed <= 3 * served["num_tokens"].max()
    assert delta(before, after, "mmrerank_micro_batches_total", layer=2) >= 1
    assert delta(before, after, "nv_inference_request_success", model="rerank", version="1") == 1
