"""Attention kernels: each equals the padded kernel on CPU for every exit; FlashAttention-2 where a GPU has it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from mmrerank.model import MatryoshkaReranker
from mmrerank.model.kernels import KERNELS, PaddedKernel, choose_kernel

# Around the sliding window's edges (half window 64, window 128), and one row beyond a blocked layer's threshold.
LENGTHS = [5, 63, 64, 65, 127, 128, 129, 300, 700]


def mixed_batch(vocab: int = 2000) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(1)
    rows = []
    for length in LENGTHS:
        row = rng.integers(5, vocab, size=length)
        row[0] = 2
        rows.append(row)
    return np.concatenate(rows), LENGTHS


@pytest.mark.parametrize("name", sorted(name for name, kernel in KERNELS.items() if kernel.runs_on(
    torch.device("cpu"), torch.float32)))  # fmt: skip
def test_every_cpu_kernel_equals_the_padded_kernel_for_every_exit(tiny_checkpoint, reranker, name):
    assert isinstance(reranker.kernel, PaddedKernel)
    other = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cpu", attention=name)
    ids, lengths = mixed_batch()
    for layer in reranker.spec.layer_indices:
        dims = [reranker.spec.dim_indices[i % 5] for i in range(len(lengths))]
        np.testing.assert_allclose(
            other.logits(ids, lengths, layer, dims), reranker.logits(ids, lengths, layer, dims), rtol=1e-4, atol=1e-5
        )


def test_auto_picks_padded_without_flash_attention_and_flash_is_refused_on_cpu():
    assert choose_kernel("auto", torch.device("cpu"), torch.float32).name == "padded"
    with pytest.raises(ValueError, match="attention 'flash' cannot run on cpu"):
        choose_kernel("flash", torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match=r"attention must be auto or one of \['flash', 'packed-sdpa', 'padded'\]"):
        choose_kernel("xformers", torch.device("cpu"), torch.float32)


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
    reason="needs a CUDA/ROCm GPU with flash_attn installed; the other kernels are checked on CPU above",
)
def test_flash_attention_matches_the_padded_kernel_in_bf16(tiny_checkpoint):
    flash = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cuda", attention="flash")
    padded = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cuda", attention="padded")
    ids, lengths = mixed_batch()
    for layer in flash.spec.layer_indices:
        np.testing.assert_allclose(
            flash.logits(ids, lengths, layer, [64] * len(lengths)),
            padded.logits(ids, lengths, layer, [64] * len(lengths)),
            rtol=5e-2,
            atol=5e-2,
        )
