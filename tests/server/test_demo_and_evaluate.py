"""The trained demo served: the README's example ranks right, `rerank evaluate` agrees with ir-measures,
the card's API agrees with the server, and a checkpoint the trainer writes is served with parity."""

from __future__ import annotations

import json
import subprocess
import sys

import ir_measures
import numpy as np
import pytest
import torch
from helpers import assert_close, infer, library_scores
from servers import start_server

from mmrerank.dev import task_data
from mmrerank.launch.launcher import DEFAULT_DEMO_CHECKPOINT
from mmrerank.launch.supervisor import LaunchError
from mmrerank.model import Matryoshka2DReranker
from mmrerank.model.reranker import MatryoshkaReranker
from mmrerank.serving.pair_tokenizer import PairTokenizer
from mmrerank.training.data import read_jsonl
from mmrerank.training.trainer import Trainer, TrainingSettings
from mmrerank_client import RerankClient
from mmrerank_client.datasets import load_beir
from mmrerank_client.evaluate import MEASURES, bm25_candidates


def started(checkpoint, log_dir):
    try:
        return start_server(checkpoint, log_dir / "tritonserver.log", api_front=False)
    except LaunchError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    running = started(DEFAULT_DEMO_CHECKPOINT, tmp_path_factory.mktemp("demo-server"))
    yield running
    running.stop()


def test_the_readme_example_ranks_the_river_first(demo_server):
    query = "where does the river meet the sea?"
    documents = ["The river reaches the sea at the delta.", "A recipe for bread."]
    for parameters in ({"layer": 2, "dim": 64}, {}):
        scores = infer("http", demo_server.http_url, query, documents, **parameters)["scores"]
        assert scores[0] > scores[1] + 0.05, parameters  # in-process: 0.239 vs 0.032 at (2, 64)


def test_the_card_api_scores_as_the_server_does(demo_server):
    model = Matryoshka2DReranker.from_pretrained(DEFAULT_DEMO_CHECKPOINT, device="cpu", precision="auto")  # as served
    query, documents = "wie hoch ist der Berg Kamora?", ["Der Berg Kamora ist 4200 Meter hoch.", "Brot. " * 400]
    with RerankClient(f"grpc://{demo_server.grpc_url}") as client:
        for layer in model.reranker.spec.layer_indices:
            served = client.score(query, documents, layer=layer, dim=32)
            local = model.compute_score([(query, d) for d in documents], layer_idx=layer, dim_idx=32)
            np.testing.assert_allclose(served, local, atol=1e-4)


def test_rerank_evaluate_equals_ir_measures_on_independently_fetched_scores(demo_server, tmp_path):
    data = task_data.write_beir(tmp_path / "beir", num_queries=10)
    out = tmp_path / "report"
    command = [sys.executable, "-m", "mmrerank_client.cli", "evaluate", str(data), "--url", f"http://{demo_server.http_url}",
               "--exits", "1:8,6:128", "--cascade", "1:32:2>6:128", "--depth", "3", "--output", str(out)]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    report = json.loads((out / "evaluation.json").read_text())
    assert (out / "evaluation.png").stat().st_size > 1000 and "| L6 D128 |" in (out / "evaluation.md").read_text()
    assert [(s["layer"], s["dim"], s["cascade"]) for s in report["settings"]] == [
        (1, 8, None), (6, 128, None), (6, 128, {"layer": 1, "dim": 32, "top_k": 2})
    ]  # fmt: skip
    dataset = load_beir(data)
    candidates = bm25_candidates(dataset, 3)
    measures = [ir_measures.parse_measure(name) for name in MEASURES]
    with RerankClient(f"grpc://{demo_server.grpc_url}") as client:
        for setting in report["settings"][:2]:
            run = {}
            for qid, docids in candidates.items():
                scores = client.score(dataset.queries[qid], [dataset.corpus[d] for d in docids],
                                      layer=setting["layer"], dim=setting["dim"])  # fmt: skip
                run[qid] = dict(zip(docids, scores, strict=True))
            expected = {str(k): v for k, v in ir_measures.calc_aggregate(measures, dataset.qrels, run).items()}
            assert setting["metrics"] == pytest.approx(expected, abs=1e-9)
            assert setting["docs_per_second"] > 0
    assert set(report["baselines"]) == {"first_stage", "random"}
    first_stage = {qid: {d: float(-rank) for rank, d in enumerate(docids)} for qid, docids in candidates.items()}
    ceiling = ir_measures.calc_aggregate([ir_measures.R @ 3], dataset.qrels, first_stage)[ir_measures.R @ 3]
    assert report["recall_ceiling"] == pytest.approx(ceiling, abs=1e-9) and 0 < ceiling <= 1


def test_a_checkpoint_the_trainer_writes_is_served_with_parity(tiny_checkpoint, tmp_path):
    examples = read_jsonl(task_data.write_training_jsonl(tmp_path / "train.jsonl", 4))
    settings = TrainingSettings(batch_size=4, learning_rate=1e-3, max_length=256, max_batch_tokens=4096)
    trained = Trainer(tiny_checkpoint, settings, torch.device("cpu")).fit(examples, tmp_path / "trained", "fine-tuned")
    running = started(trained, tmp_path)
    try:
        reranker = MatryoshkaReranker.from_pretrained(trained, device="cpu", precision="auto")  # as served
        tokenizer = PairTokenizer.from_file(trained / "tokenizer.json")
        documents = [examples[0].positive, *examples[0].negatives]
        with RerankClient(f"http://{running.http_url}") as client:
            assert client.describe().checkpoint == "fine-tuned"
            for layer in reranker.spec.layer_indices:
                for dim in reranker.spec.dim_indices:
                    served = np.array(client.score(examples[0].query, documents, layer=layer, dim=dim))
                    expected = library_scores(reranker, tokenizer, examples[0].query, documents, layer, dim)
                    assert_close(served, expected)
    finally:
        running.stop()
