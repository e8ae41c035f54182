"""Attention whose memory grows linearly with sequence length: no length x length tensor, ever.

Global layers use SDPA with a per-key padding mask (or none when no row is padded); sliding-window
layers attend block by block, each block of `half_window` queries seeing only its own and its two
neighbouring key blocks. Padded query rows may see padded keys so that no softmax row is empty.
Given a stop check, a long global layer on the CPU runs its queries in blocks and calls it between
them, so abandoned work stops within a fraction of a layer (a 32K-token global layer takes seconds there).
At the exit layer only each sequence's first token is queried: a softmax per sequence over its
ragged keys, with no padding at all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# Called where work may stop: before each encoder layer and between query blocks of global attention.
# It returns nothing; to stop, it raises.
StopCheck = Callable[[], None]

# Up to this length a sliding-window layer uses one dense banded mask; beyond it, blocks.
DENSE_LOCAL_MAX_LENGTH = 256
# Queries per block of a global layer run with a stop check.
GLOBAL_QUERY_BLOCK = 1024


def key_padding_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Boolean [batch, length]: True where the position holds a real token."""
    positions = torch.arange(length, device=lengths.device)
    return positions[None, :] < lengths[:, None]


def global_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    valid: torch.Tensor | None,
    stop_check: StopCheck | None = None,
) -> torch.Tensor:
    """Full bidirectional attention over [batch, heads, length, head_dim] tensors.

    `valid` is the [batch, length] key mask, or None when no row is padded. With `stop_check` on
    the CPU, queries run in blocks of GLOBAL_QUERY_BLOCK and the check is called between blocks (a
    GPU runs a whole 32K-token layer in milliseconds: blocks would only add kernel launches there).
    """
    mask = None if valid is None else valid[:, None, None, :]
    length = query.shape[2]
    if stop_check is None or length <= GLOBAL_QUERY_BLOCK or query.device.type != "cpu":
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    blocks = []
    for start in range(0, length, GLOBAL_QUERY_BLOCK):
        if start:
            stop_check()
        queries = query[:, :, start : start + GLOBAL_QUERY_BLOCK]
        blocks.append(F.scaled_dot_product_attention(queries, key, value, attn_mask=mask))
    return torch.cat(blocks, dim=2)


def _dense_local_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, valid: torch.Tensor, half_window: int
) -> torch.Tensor:
    length = key.shape[2]
    positions = torch.arange(length, device=key.device)
    band = (positions[:, None] - positions[None, :]).abs() <= half_window
    allowed = band[None] & (valid[:, None, :] | ~valid[:, :, None])
    return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed[:, None])


def _blocked_local_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, valid: torch.Tensor, half_window: int
) -> torch.Tensor:
    batch, heads, length, head_dim = query.shape
    block = half_window
    num_blocks = -(-length // block)
    padded = num_blocks * block

    def blocks_of(tensor: torch.Tensor) -> torch.Tensor:
        # [B, H, T, D] -> zero-pad one block before and after -> [B, nb, H, 3*block, D] windows
        tensor = F.pad(tensor, (0, 0, block, padded - length + block))
        windows = tensor.unfold(2, 3 * block, block)  # [B, H, nb, D, 3*block]
        return windows.permute(0, 2, 1, 4, 3).reshape(batch * num_blocks, heads, 3 * block, head_dim)

    q = F.pad(query, (0, 0, 0, padded - length))
    q = q.view(batch, heads, num_blocks, block, head_dim).transpose(1, 2)
    q = q.reshape(batch * num_blocks, heads, block, head_dim)
    k, v = blocks_of(key), blocks_of(value)

    valid_padded = F.pad(valid, (block, padded - length + block), value=False)
    key_valid = valid_padded.unfold(1, 3 * block, block)  # [B, nb, 3*block]
    query_valid = F.pad(valid, (0, padded - length), value=False).view(batch, num_blocks, block)
    offsets = torch.arange(3 * block, device=query.device)[None, :] - torch.arange(block, device=query.device)[:, None]
    band = (offsets >= 0) & (offsets <= 2 * half_window)  # |query - key| <= half_window
    # Keys outside [0, length) are zero padding: real queries never see them; padded queries
    # may, which keeps every softmax row non-empty and finite.
    allowed = band[None, None] & (key_valid[:, :, None, :] | ~query_valid[:, :, :, None])
    allowed = allowed.reshape(batch * num_blocks, 1, block, 3 * block)

    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    out = out.view(batch, num_blocks, heads, block, head_dim).transpose(1, 2)
    return out.reshape(batch, heads, padded, head_dim)[:, :, :length]


def local_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, valid: torch.Tensor, half_window: int
) -> torch.Tensor:
    """Sliding-window attention (|query - key| <= half_window) over [batch, heads, length, head_dim]."""
    if key.shape[2] <= DENSE_LOCAL_MAX_LENGTH:
        return _dense_local_attention(query, key, value, valid, half_window)
    return _blocked_local_attention(query, key, value, valid, half_window)


def ragged_cls_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sequence: torch.Tensor
) -> torch.Tensor:
    """Attention of one query per sequence over that sequence's keys, with no padding.

    `query` is [sequences, heads, head_dim]; `key` and `value` are packed [keys, heads, head_dim],
    key i belonging to sequence `sequence[i]`. A softmax per sequence (segment maxima and sums),
    in fp32: memory grows with the keys given, never with sequences x longest.
    """
    count, heads, head_dim = query.shape
    scores = (key.float() * query.float()[sequence]).sum(-1) * head_dim**-0.5  # [keys, heads]
    by_sequence = sequence[:, None].expand_as(scores)
    maxima = scores.new_full((count, heads), float("-inf")).scatter_reduce(0, by_sequence, scores, "amax")
    weights = (scores - maxima[sequence]).exp()
    totals = weights.new_zeros(count, heads).index_add_(0, sequence, weights)
    weighted = value.new_zeros(count, heads, head_dim, dtype=torch.float32)
    weighted.index_add_(0, sequence, weights[..., None] * value.float())
    return (weighted / totals[..., None]).to(query.dtype)
