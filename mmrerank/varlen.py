"""Packed attention: sequences concatenated without padding, delimited by cumulative lengths.

On GPUs with FlashAttention-2 installed, `flash_attn_varlen_func` runs it (its `window_size`
gives the sliding-window layers); elsewhere each sequence runs through the padded path's
SDPA functions, which is the reference the flash kernel is checked against.
"""

from __future__ import annotations

import importlib.util

import torch

from mmrerank.attention import global_attention, local_attention

BACKENDS = ("auto", "sdpa", "varlen", "flash")


def flash_attention_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether FlashAttention-2 can run here: a CUDA/ROCm device, half precision, the package installed."""
    return (
        device.type == "cuda"
        and dtype in (torch.float16, torch.bfloat16)
        and importlib.util.find_spec("flash_attn") is not None
    )


def resolve_backend(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """'auto' becomes 'flash' where FlashAttention-2 runs and 'sdpa' elsewhere; others are checked."""
    if requested not in BACKENDS:
        raise ValueError(f"attention must be one of {list(BACKENDS)}, got {requested!r}")
    if requested == "auto":
        return "flash" if flash_attention_available(device, dtype) else "sdpa"
    if requested == "flash" and not flash_attention_available(device, dtype):
        raise ValueError("attention='flash' needs a GPU, bf16 or fp16, and the flash_attn package")
    return requested


def packed_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_length: int,
    half_window: int | None,
    use_flash: bool,
) -> torch.Tensor:
    """Attention over packed [tokens, heads, head_dim] tensors; global when `half_window` is None."""
    if use_flash:
        from flash_attn import flash_attn_varlen_func

        window = (-1, -1) if half_window is None else (half_window, half_window)
        cu = cu_seqlens.to(torch.int32)
        return flash_attn_varlen_func(query, key, value, cu, cu, max_length, max_length, window_size=window)
    outputs = []
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True):
        q, k, v = (t[start:end].transpose(0, 1)[None] for t in (query, key, value))
        if half_window is None:
            attended = global_attention(q, k, v, None)
        else:
            valid = torch.ones(1, end - start, dtype=torch.bool, device=query.device)
            attended = local_attention(q, k, v, valid, half_window)
        outputs.append(attended[0].transpose(0, 1))
    return torch.cat(outputs)
