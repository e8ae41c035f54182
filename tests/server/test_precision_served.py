"""Each precision served: fp32 equals the fp32 reference at every exit, and the log says what `auto` chose and why.

The suite's default server (the CPU config, `precision: auto`) is held to the library at the same
precision by every other served test; here fp32 is asked for explicitly.
"""

from __future__ import annotations

import os
import re

import pytest
from helpers import assert_close, infer, library_scores
from servers import start_server

from mmrerank.launch.supervisor import LaunchError
from mmrerank.model import MatryoshkaReranker

QUERY = "where does the river meet the sea"
DOCUMENTS = ["The river meets the sea at the delta.", "bread " * 40, "the sea", "A harbour city by the river mouth."]


def test_fp32_serves_the_reference_scores_at_every_exit(tiny_checkpoint, tmp_path, pair_tokenizer):
    fp32 = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cpu", precision="fp32")
    try:
        server = start_server(tiny_checkpoint, tmp_path / "tritonserver.log", "--precision", "fp32", api_front=False)
    except LaunchError as error:
        pytest.fail(str(error))
    try:
        for layer in fp32.spec.layer_indices:
            for dim in fp32.spec.dim_indices:
                served = infer("http", server.http_url, QUERY, DOCUMENTS, layer=layer, dim=dim)
                assert_close(served["scores"], library_scores(fp32, pair_tokenizer, QUERY, DOCUMENTS, layer, dim))
        assert "precision fp32 (asked for)" in server.log_path.read_text()
    finally:
        server.stop()


def test_the_default_config_says_which_precision_auto_chose_and_why(server):
    log = server.log_path.read_text()
    chosen = re.findall(r"precision (fp32|bf16|int8) \(auto: [^)]+\)", log)
    assert len(chosen) == 2, log[-3000:]  # one line per CPU instance
    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # the CPU config's two instances share the cores
    assert f"reranker ready on cpu ({threads} threads)" in log
