"""The model card's in-process API: its snippet runs with only the import (and the checkpoint) changed, same scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmrerank.model import Matryoshka2DReranker, in_process

# The card's "Basic Usage" and "Reranking Pipeline" code, verbatim but for the import and the model id.
CARD_SNIPPET = '''
import torch
from transformers import AutoTokenizer

from mmrerank.model import Matryoshka2DReranker

model = Matryoshka2DReranker.from_pretrained(CHECKPOINT)
tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT)

model.eval()
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
model = model.to(device)

# Score query-passage pairs
pairs = [
    ("What is machine learning?", "Machine learning is a subset of AI that enables systems to learn from data."),
    ("What is machine learning?", "The weather is sunny today."),
]

scores = model.compute_score(pairs, tokenizer, normalize=True)

def rerank(query: str, passages: list[str], top_k: int = 10) -> list[tuple[str, float]]:
    """Rerank passages by relevance to query."""
    pairs = [(query, p) for p in passages]
    scores = model.compute_score(pairs, tokenizer, normalize=True)

    # Sort by score descending
    ranked = sorted(zip(passages, scores), key=lambda x: x[1], reverse=True)
    return ranked[:top_k]

# Example
query = "How does photosynthesis work?"
passages = [
    "Photosynthesis is the process by which plants convert sunlight into energy.",
    "The stock market closed higher today.",
    "Plants use chlorophyll to absorb light during photosynthesis.",
    "Python is a popular programming language.",
]

results = rerank(query, passages, top_k=2)
'''


def test_the_card_snippet_runs_with_only_its_import_changed(tiny_checkpoint):
    namespace = {"CHECKPOINT": str(tiny_checkpoint)}
    exec(compile(CARD_SNIPPET, "model-card", "exec"), namespace)
    scores, results = namespace["scores"], namespace["results"]
    assert len(scores) == 2 and all(0.0 < score < 1.0 for score in scores)
    assert len(results) == 2 and results[0][1] >= results[1][1]


def test_compute_score_equals_the_transformers_reference_at_every_exit(tiny_checkpoint, reference):
    """Against the independent reference (transformers' ModernBERT and the card's heads), not the code it wraps."""
    model = Matryoshka2DReranker.from_pretrained(tiny_checkpoint, device="cpu")
    pairs = [("river delta", "The river reaches the sea."), ("river delta", "bread " * 300), ("other", "short")]
    for layer in model.reranker.spec.layer_indices:
        for dim in model.reranker.spec.dim_indices:
            scores = model.compute_score(pairs, layer_idx=layer, dim_idx=dim, batch_size=2, normalize=False)
            expected = [reference.logit(query, document, layer, dim) for query, document in pairs]
            np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)


def test_rerank_and_bad_exits(tiny_checkpoint):
    model = Matryoshka2DReranker.from_pretrained(tiny_checkpoint, device="cpu")
    ranked = model.rerank("river", ["a", "b", "c"], top_k=2)
    assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1]
    raw = model.compute_score([("river", "a")], normalize=False, max_length=16)
    assert raw[0] == pytest.approx(model.compute_score([("river", "a")], normalize=False)[0], abs=1e-5)
    with pytest.raises(ValueError, match="layer 3 is not one of"):
        model.compute_score([("q", "d")], layer_idx=3)
    with pytest.raises(ValueError, match="dim_idx 12 is not one of"):
        model.compute_score([("q", "d")], dim_idx=12)


def test_compute_score_keeps_each_forward_pass_within_the_token_budget(tiny_checkpoint, monkeypatch):
    model = Matryoshka2DReranker.from_pretrained(tiny_checkpoint, device="cpu")
    pairs = [("river", "water " * words) for words in (5, 300, 20, 900, 40, 60)]
    whole = model.compute_score(pairs, normalize=False)
    passes, logits = [], model.reranker.logits

    def counted(ids, lengths, layer, dims):
        passes.append(list(lengths))
        return logits(ids, lengths, layer, dims)

    monkeypatch.setattr(model.reranker, "logits", counted)
    budgeted = model.compute_score(pairs, normalize=False, max_batch_tokens=700)
    assert len(passes) > 1 and all(len(p) == 1 or len(p) * max(p) <= 700 for p in passes), passes  # padded tokens
    np.testing.assert_allclose(budgeted, whole, atol=1e-5)


def test_to_moves_fp32_weights_without_reading_the_checkpoint_again(tiny_checkpoint, monkeypatch):
    """`cpu:0` is another device to PyTorch's eyes (a GPU is not here): the weights move, nothing is read."""
    model = Matryoshka2DReranker.from_pretrained(tiny_checkpoint, device="cpu")
    pairs = [("river delta", "The river reaches the sea."), ("river", "bread " * 50)]
    before = model.compute_score(pairs, normalize=False)
    monkeypatch.setattr(in_process, "load_checkpoint", lambda *_: pytest.fail("the checkpoint was read again"))
    moved = model.to("cpu:0")
    assert moved is not model and moved.device == torch.device("cpu", 0) and model.to("cpu") is model
    np.testing.assert_allclose(moved.compute_score(pairs, normalize=False), before, atol=1e-6)
