"""Attention kernels: each equals the padded kernel on CPU for every exit, none pads past the planner's budget.

`varlen` needs a GPU: its own bookkeeping (cumulative lengths, the exit layer's one query per
sequence, the window's first keys) is checked here with a reference standing in for PyTorch's
kernel; on a GPU the real kernel is checked against the padded one (and by scripts/gpu-check).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mmrerank.model import MatryoshkaReranker
from mmrerank.model import kernels as kernels_module
from mmrerank.model.attention import local_attention
from mmrerank.model.kernels import KERNELS, PaddedKernel, VarlenKernel, choose_kernel
from mmrerank.serving.contract import RequestOptions
from mmrerank.serving.reranker_step import RerankerStep, ScoreRequest

CPU_KERNELS = sorted(name for name, kernel in KERNELS.items() if kernel.runs_on(torch.device("cpu"), torch.float32))

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


def assert_equal_for_every_exit(other: MatryoshkaReranker, padded: MatryoshkaReranker) -> None:
    """`other` scores the mixed batch as the padded kernel does, at every exit layer and a mix of widths."""
    assert isinstance(padded.kernel, PaddedKernel)
    ids, lengths = mixed_batch()
    for layer in padded.spec.layer_indices:
        dims = [padded.spec.dim_indices[i % 5] for i in range(len(lengths))]
        np.testing.assert_allclose(
            other.logits(ids, lengths, layer, dims), padded.logits(ids, lengths, layer, dims), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("name", [name for name in CPU_KERNELS if name != "padded"])  # padded: test_exits
def test_every_cpu_kernel_equals_the_padded_kernel_for_every_exit(tiny_checkpoint, reranker, name):
    assert_equal_for_every_exit(
        MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cpu", attention=name), reranker
    )


def test_auto_picks_padded_on_cpu_and_says_why_varlen_was_passed_over(caplog):
    with caplog.at_level(logging.INFO, logger="mmrerank.model.kernels"):
        assert choose_kernel("auto", torch.device("cpu"), torch.float32).name == "padded"
    assert "kernel padded on cpu float32; varlen passed over: needs a CUDA or ROCm GPU, not cpu" in caplog.text
    with pytest.raises(ValueError, match="attention 'varlen' cannot run on cpu .*needs a CUDA or ROCm GPU"):
        choose_kernel("varlen", torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match="attention 'flash' cannot run on cpu"):
        choose_kernel("flash", torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match=r"one of \['flash', 'packed-sdpa', 'padded', 'varlen'\]"):
        choose_kernel("xformers", torch.device("cpu"), torch.float32)


def reference_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_size=(-1, -1)):
    """What PyTorch's varlen_attn computes, sequence by sequence, for the calls the kernel makes.

    A window aligns queries with keys only when both have one length; the kernel must never ask otherwise.
    """
    outputs = []
    for i in range(len(cu_seq_q) - 1):
        q, k, v = (t[int(c[i]) : int(c[i + 1])].transpose(0, 1)[None]
                   for t, c in ((query, cu_seq_q), (key, cu_seq_k), (value, cu_seq_k)))  # fmt: skip
        assert q.shape[2] <= max_q and k.shape[2] <= max_k
        if window_size == (-1, -1):
            attended = F.scaled_dot_product_attention(q, k, v)
        else:
            assert q.shape[2] == k.shape[2] and window_size[0] == window_size[1]
            attended = local_attention(q, k, v, torch.ones(1, k.shape[2], dtype=torch.bool), window_size[0])
        outputs.append(attended[0].transpose(0, 1))
    return torch.cat(outputs)


def test_varlen_bookkeeping_equals_the_padded_kernel_for_every_exit(tiny_checkpoint, reranker, monkeypatch):
    monkeypatch.setattr(kernels_module, "varlen_attn", reference_varlen_attn)
    monkeypatch.setattr(VarlenKernel, "unavailable_reason", classmethod(lambda cls, device, dtype: None))
    assert_equal_for_every_exit(
        MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cpu", attention="varlen"), reranker
    )


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operation creates while active."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(tensor, torch.Tensor):
                self.elements = max(self.elements, tensor.numel())
        return result


def with_largest_tensor(call: Callable[..., np.ndarray], *args: object) -> tuple[np.ndarray, int]:
    """What `call(*args)` returns, and the element count of the largest tensor it created."""
    with LargestTensor() as mode:
        result = call(*args)
    return result, mode.elements


def rows_of(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = [rng.integers(5, 2000, size=length) for length in lengths]
    for row in rows:
        row[0] = 2
    return rows


@pytest.mark.parametrize("name", CPU_KERNELS)
def test_no_kernel_materialises_more_than_the_planner_budgeted(tiny_checkpoint, name):
    budget = 2048
    step = RerankerStep(MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cpu", attention=name), budget)
    rows = rows_of([2000] + [int(n) for n in np.random.default_rng(1).integers(4, 40, size=200)])
    config = step.reranker.config
    per_token = max(3 * config.hidden_size, 2 * config.intermediate_size)  # the widest activation per token
    for layer in step.reranker.spec.layer_indices:
        options = RequestOptions(layer=layer, dim=8, normalize=False, max_length=4096, truncate=True)
        _, largest = with_largest_tensor(step.score, [ScoreRequest(rows, options)])
        assert largest <= 4 * budget * per_token, (layer, largest)


@pytest.mark.slow
def test_a_32k_document_beside_999_short_ones_scores_as_alone_in_bounded_memory(tiny_checkpoint):
    reranker = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cpu", attention="packed-sdpa")
    lengths = [32768] + [int(n) for n in np.random.default_rng(2).integers(4, 60, size=999)]
    rows = rows_of(lengths, seed=3)
    ids = np.concatenate(rows)
    for layer in (1, 2):  # the exit layer global, then in a sliding window after a full global layer
        together, largest_together = with_largest_tensor(reranker.logits, ids, lengths, layer, [128] * 1000)
        alone, largest_alone = with_largest_tensor(reranker.logits, rows[0], lengths[:1], layer, [128])
        short = np.concatenate([reranker.logits(row, [len(row)], layer, [128]) for row in rows[1:]])
        np.testing.assert_allclose(together, np.concatenate([alone, short]), rtol=1e-4, atol=1e-5)
        # Padding the exit layer's keys would make [1000, heads, 32768, head_dim]: 250x the pair alone.
        assert largest_together <= 4 * largest_alone, (layer, largest_together, largest_alone)


def gpu_kernel_reason(name: str) -> str | None:
    """Why the GPU kernel `name` cannot be checked here, or None."""
    if not torch.cuda.is_available():
        return (
            "needs a CUDA or ROCm GPU; the bookkeeping is checked on CPU above, and scripts/gpu-check compares kernels"
        )
    return KERNELS[name].unavailable_reason(torch.device("cuda"), torch.bfloat16)


GPU_KERNELS = [
    pytest.param(name, marks=pytest.mark.skipif(bool(reason), reason=str(reason)))
    for name, reason in ((name, gpu_kernel_reason(name)) for name in ("varlen", "flash"))
]


@pytest.mark.parametrize("name", GPU_KERNELS)
def test_a_gpu_kernel_matches_the_padded_kernel_in_bf16_for_every_exit(tiny_checkpoint, name):
    kernel = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cuda", attention=name)
    padded = MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cuda", attention="padded")
    assert choose_kernel("auto", torch.device("cuda"), torch.bfloat16).name == "varlen"
    ids, lengths = mixed_batch()
    for layer in kernel.spec.layer_indices:
        np.testing.assert_allclose(
            kernel.logits(ids, lengths, layer, [64] * len(lengths)),
            padded.logits(ids, lengths, layer, [64] * len(lengths)),
            rtol=5e-2,
            atol=5e-2,
        )
