"""The trainer: the card's loss over every head, the published layout out, and a loss that falls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmrerank.dev import task_data
from mmrerank.layout import CheckpointLayout, MatryoshkaSpec
from mmrerank.model.reranker import MatryoshkaReranker
from mmrerank.training.data import read_jsonl
from mmrerank.training.trainer import Trainer, TrainingSettings, head_weights


def test_head_weights_follow_the_published_training():
    weights = head_weights(MatryoshkaSpec(layer_indices=(3, 6, 11, 22), dim_indices=(64, 128, 256, 512, 768)))
    assert sum(weights.values()) == pytest.approx(1.0)
    # exits weigh 1/4, 1/3, 1/2, 1 and widths 1, 1/2, ..., 1/5 from widest to narrowest
    assert weights[(22, 768)] / weights[(3, 768)] == pytest.approx(4.0)
    assert weights[(11, 768)] / weights[(11, 64)] == pytest.approx(5.0)


def test_training_lowers_the_loss_and_writes_a_loadable_checkpoint(tiny_checkpoint, tmp_path):
    examples = read_jsonl(task_data.write_training_jsonl(tmp_path / "train.jsonl", 8))
    settings = TrainingSettings(batch_size=8, learning_rate=1e-3, max_length=256, max_batch_tokens=2048, epochs=6)
    trainer = Trainer(tiny_checkpoint, settings, torch.device("cpu"))
    rows, labels = trainer.pairs_of(examples)
    targets = torch.tensor(labels)

    def loss() -> float:
        with torch.no_grad():
            trainer.heads.eval()
            value = sum(float(trainer.loss([rows[i] for i in g], targets[g])) for g in trainer.micro_batches(rows))
            trainer.heads.train()
            return value / len(rows)

    before = loss()
    out = trainer.fit(examples, tmp_path / "trained", name="fine-tuned")
    assert loss() < before * 0.8
    layout = CheckpointLayout.open(out)
    assert layout.spec.model_name == "fine-tuned"
    assert {p.name for p in out.iterdir()} >= {p.name for p in tiny_checkpoint.iterdir()}
    trained = MatryoshkaReranker.from_pretrained(out, device="cpu")
    original = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cpu")
    ids = np.concatenate(rows[:3])
    lengths = [len(row) for row in rows[:3]]
    assert not np.allclose(trained.logits(ids, lengths, 6, [128] * 3), original.logits(ids, lengths, 6, [128] * 3))


def test_micro_batches_keep_the_padded_token_budget(tiny_checkpoint):
    trainer = Trainer(tiny_checkpoint, TrainingSettings(max_batch_tokens=1000), torch.device("cpu"))
    rows = [np.zeros(n, dtype=np.int32) for n in (10, 400, 30, 1500, 200, 90, 120)]
    groups = list(trainer.micro_batches(rows))
    assert sorted(i for group in groups for i in group) == list(range(len(rows)))
    for group in groups:
        longest = max(len(rows[i]) for i in group)
        assert len(group) == 1 or len(group) * longest <= 1000
