"""The ModernBERT encoder with a real early exit, in the published weight layout.

Module names mirror the checkpoint's keys, so `load_state_dict(strict=True)` checks the layout.
Only layers 1..L run for exit L, and layer L itself computes just the CLS position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmrerank.attention import cls_attention, global_attention, key_padding_mask, local_attention
from mmrerank.checkpoint import EncoderConfig
from mmrerank.varlen import packed_attention


def _layer_norm(hidden: int, eps: float) -> nn.LayerNorm:
    return nn.LayerNorm(hidden, eps=eps, bias=False)


class Embeddings(nn.Module):
    """Token embeddings followed by a bias-free LayerNorm."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.norm = _layer_norm(config.hidden_size, config.norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tok_embeddings(input_ids))


class Attention(nn.Module):
    """Fused-QKV multi-head attention with rotary positions."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def project(self, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Query, key and value as [batch, heads, length, head_dim], rotary applied."""
        batch, length, _ = hidden.shape
        qkv = self.Wqkv(hidden).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        cos, sin = rotary
        return apply_rotary(query, cos, sin), apply_rotary(key, cos, sin), value

    def merge(self, attended: torch.Tensor) -> torch.Tensor:
        """[batch, heads, length, head_dim] back to [batch, length, hidden], then the output projection."""
        batch, _, length, _ = attended.shape
        return self.Wo(attended.transpose(1, 2).reshape(batch, length, -1))


class GeGLU(nn.Module):
    """The gated MLP: Wo(gelu(x Wi_a) * x Wi_b)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gated, gate = self.Wi(hidden).chunk(2, dim=-1)
        return self.Wo(F.gelu(gated) * gate)


class EncoderLayer(nn.Module):
    """Pre-norm attention and GeGLU blocks with residuals (no attention norm on layer 0)."""

    def __init__(self, config: EncoderConfig, index: int) -> None:
        super().__init__()
        self.attn_norm: nn.Module = _layer_norm(config.hidden_size, config.norm_eps) if index else nn.Identity()
        self.attn = Attention(config)
        self.mlp_norm = _layer_norm(config.hidden_size, config.norm_eps)
        self.mlp = GeGLU(config)
        self.half_window = None if config.is_global_layer(index) else config.local_window // 2

    def forward(
        self,
        hidden: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        valid: torch.Tensor,
        unpadded: bool,
        cls_only: bool,
    ) -> torch.Tensor:
        query, key, value = self.attn.project(self.attn_norm(hidden), rotary)
        if cls_only:
            attended = cls_attention(query[:, :, :1], key, value, valid, self.half_window)
            hidden = hidden[:, :1]
        elif self.half_window is None:
            attended = global_attention(query, key, value, None if unpadded else valid)
        else:
            attended = local_attention(query, key, value, valid, self.half_window)
        hidden = hidden + self.attn.merge(attended)
        return hidden + self.mlp(self.mlp_norm(hidden))

    def forward_packed(
        self,
        hidden: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        cu_seqlens: torch.Tensor,
        max_length: int,
        use_flash: bool,
        cls_rows: torch.Tensor | None,
    ) -> torch.Tensor:
        """The same layer over packed sequences [1, tokens, hidden]; with `cls_rows`, only those rows come out."""
        query, key, value = self.attn.project(self.attn_norm(hidden), rotary)
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [tokens, heads, head_dim]
        attended = packed_attention(q, k, v, cu_seqlens, max_length, self.half_window, use_flash)
        attended = attended.transpose(0, 1)[None]
        if cls_rows is not None:
            attended, hidden = attended[:, :, cls_rows], hidden[:, cls_rows]
        hidden = hidden + self.attn.merge(attended)
        return hidden + self.mlp(self.mlp_norm(hidden))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dimension's halves."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, computed in fp32 and cast back to x's dtype."""
    rotated = x.float() * cos + rotate_half(x.float()) * sin
    return rotated.to(x.dtype)


def rotary_tables(
    length: int, head_dim: int, theta: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos and sin tables [length, head_dim] for positions 0..length-1, rounded to the model's dtype."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    freqs = torch.arange(length, device=device, dtype=torch.float)[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


class Encoder(nn.Module):
    """ModernBERT encoder; `cls_states(ids, lengths, exit_layer)` runs layers 1..exit_layer only."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, index) for index in range(config.num_layers))
        self.final_norm = _layer_norm(config.hidden_size, config.norm_eps)

    def cls_states(self, input_ids: torch.Tensor, lengths: torch.Tensor, exit_layer: int) -> torch.Tensor:
        """CLS vector of hidden state `exit_layer` (1-based) for right-padded [batch, length] ids."""
        self._check_exit(exit_layer)
        length = input_ids.shape[1]
        valid = key_padding_mask(lengths, length)
        unpadded = bool(valid.all())
        tables = {
            theta: rotary_tables(length, self.config.head_dim, theta, self.final_norm.weight.dtype, input_ids.device)
            for theta in {self.config.global_rope_theta, self.config.local_rope_theta}
        }
        hidden = self.embeddings(input_ids)
        for index in range(exit_layer):
            layer = self.layers[index]
            theta = self.config.global_rope_theta if layer.half_window is None else self.config.local_rope_theta
            hidden = layer(hidden, tables[theta], valid, unpadded, cls_only=index == exit_layer - 1)
        return self._exit(hidden[:, 0], exit_layer)

    def cls_states_packed(
        self, input_ids: torch.Tensor, lengths: torch.Tensor, exit_layer: int, use_flash: bool
    ) -> torch.Tensor:
        """As `cls_states`, for sequences packed end to end in a 1-D `input_ids` with their `lengths`."""
        self._check_exit(exit_layer)
        cu_seqlens = F.pad(torch.cumsum(lengths, 0), (1, 0))
        starts = cu_seqlens[:-1]
        positions = torch.arange(input_ids.numel(), device=input_ids.device) - torch.repeat_interleave(starts, lengths)
        max_length = int(lengths.max())
        dtype = self.final_norm.weight.dtype
        tables = {}
        for theta in {self.config.global_rope_theta, self.config.local_rope_theta}:
            cos, sin = rotary_tables(max_length, self.config.head_dim, theta, dtype, input_ids.device)
            tables[theta] = (cos[positions], sin[positions])
        hidden = self.embeddings(input_ids)[None]
        for index in range(exit_layer):
            layer = self.layers[index]
            theta = self.config.global_rope_theta if layer.half_window is None else self.config.local_rope_theta
            last = index == exit_layer - 1
            hidden = layer.forward_packed(
                hidden, tables[theta], cu_seqlens, max_length, use_flash, starts if last else None
            )
        return self._exit(hidden[0], exit_layer)

    def _check_exit(self, exit_layer: int) -> None:
        if not 1 <= exit_layer <= self.config.num_layers:
            raise ValueError(f"exit layer {exit_layer} is outside 1..{self.config.num_layers}")

    def _exit(self, cls: torch.Tensor, exit_layer: int) -> torch.Tensor:
        """Exits before the last layer apply `final_norm`, the last does not (as the heads were trained)."""
        return self.final_norm(cls) if exit_layer < self.config.num_layers else cls
