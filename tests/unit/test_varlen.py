"""Packed (unpadded) attention: equal to the padded path on CPU; FlashAttention-2 where a GPU has it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from mmrerank.model import MatryoshkaReranker
from mmrerank.scoring import pad_rows
from mmrerank.varlen import resolve_backend

LENGTHS = [5, 63, 64, 65, 129, 300, 700]


def mixed_batch(vocab: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    rows = []
    for length in LENGTHS:
        row = rng.integers(5, vocab, size=length)
        row[0] = 2
        rows.append(row)
    return pad_rows(rows, 0)


def test_packed_path_equals_the_padded_path_for_every_exit(tiny_checkpoint, reranker):
    packed = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cpu", attention="varlen")
    ids, lengths = mixed_batch()
    for layer in reranker.spec.layer_indices:
        dims = [reranker.spec.dim_indices[i % 5] for i in range(len(LENGTHS))]
        np.testing.assert_allclose(
            packed.logits(ids, lengths, layer, dims), reranker.logits(ids, lengths, layer, dims), rtol=1e-4, atol=1e-5
        )


def test_auto_picks_sdpa_without_flash_attention_and_flash_is_refused_on_cpu():
    assert resolve_backend("auto", torch.device("cpu"), torch.float32) == "sdpa"
    with pytest.raises(ValueError, match="needs a GPU, bf16 or fp16, and the flash_attn package"):
        resolve_backend("flash", torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match="attention must be one of"):
        resolve_backend("xformers", torch.device("cpu"), torch.float32)


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
    reason="needs a CUDA/ROCm GPU with flash_attn installed; the packed path is checked on CPU above",
)
def test_flash_attention_matches_sdpa_in_bf16(tiny_checkpoint):
    flash = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cuda", attention="flash")
    sdpa = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cuda", attention="sdpa")
    ids, lengths = mixed_batch()
    for layer in flash.spec.layer_indices:
        np.testing.assert_allclose(
            flash.logits(ids, lengths, layer, [64] * len(LENGTHS)),
            sdpa.logits(ids, lengths, layer, [64] * len(LENGTHS)),
            rtol=5e-2,
            atol=5e-2,
        )
