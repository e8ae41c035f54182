"""The ModernBERT encoder with a real early exit, in the published weight layout.

Module names mirror the checkpoint's keys, so `load_state_dict(strict=True)` checks the layout.
Tokens stay packed (the pairs of a micro-batch concatenated without padding); the attention
kernel chosen at load time is the only part that sees sequence boundaries. Only layers 1..L run
for exit L, and layer L itself computes just the CLS positions. A caller may pass `stop_check`, called
before each layer and between the query blocks of a long global layer: raising there abandons the work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmrerank.layout import EncoderConfig
from mmrerank.model.attention import StopCheck
from mmrerank.model.kernels import AttentionKernel, PackedRows


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
        """Query, key and value as packed [tokens, heads, head_dim], rotary applied."""
        qkv = self.Wqkv(hidden).view(hidden.shape[0], 3, self.num_heads, self.head_dim)
        query, key, value = qkv.unbind(1)
        cos, sin = (table[:, None, :] for table in rotary)
        return apply_rotary(query, cos, sin), apply_rotary(key, cos, sin), value


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
        rows: PackedRows,
        kernel: AttentionKernel,
        cls_only: bool,
        stop_check: StopCheck | None = None,
    ) -> torch.Tensor:
        """Packed [tokens, hidden] in; with `cls_only`, only each sequence's first row comes out."""
        query, key, value = self.attn.project(self.attn_norm(hidden), rotary)
        if cls_only:
            starts = rows.starts
            attended = kernel.attend_cls(query[starts], key, value, rows, self.half_window)
            hidden = hidden[starts]
        else:
            attended = kernel.attend(query, key, value, rows, self.half_window, stop_check)
        hidden = hidden + self.attn.Wo(attended.reshape(hidden.shape[0], -1))
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
    """Cos and sin tables [length, head_dim] for positions 0..length-1, in `dtype`."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    freqs = torch.arange(length, device=device, dtype=torch.float)[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


class Encoder(nn.Module):
    """ModernBERT encoder; `cls_states(ids, rows, exit_layer)` runs layers 1..exit_layer only."""

    def __init__(self, config: EncoderConfig, kernel: AttentionKernel) -> None:
        super().__init__()
        self.config = config
        self.kernel = kernel
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, index) for index in range(config.num_layers))
        self.final_norm = _layer_norm(config.hidden_size, config.norm_eps)

    def cls_states(
        self, input_ids: torch.Tensor, rows: PackedRows, exit_layer: int, stop_check: StopCheck | None = None
    ) -> torch.Tensor:
        """CLS vectors [sequences, hidden] of hidden state `exit_layer` (1-based) for packed 1-D `input_ids`."""
        return self.continue_to_cls(self.embeddings(input_ids), rows, 0, exit_layer, stop_check)

    def hidden_states(
        self, input_ids: torch.Tensor, rows: PackedRows, layer: int, stop_check: StopCheck | None = None
    ) -> torch.Tensor:
        """Every token's hidden state `layer` [tokens, hidden], raw (no final norm): where a cascade resumes."""
        return self._run(self.embeddings(input_ids), rows, 0, layer, False, stop_check)

    def continue_to_cls(
        self,
        hidden: torch.Tensor,
        rows: PackedRows,
        from_layer: int,
        exit_layer: int,
        stop_check: StopCheck | None = None,
    ) -> torch.Tensor:
        """CLS vectors of hidden state `exit_layer`, running layers from_layer+1..exit_layer on `hidden`."""
        if not 0 <= from_layer < exit_layer <= self.config.num_layers:
            raise ValueError(f"cannot continue from layer {from_layer} to layer {exit_layer}")
        return self.exit_of(self._run(hidden, rows, from_layer, exit_layer, True, stop_check), exit_layer)

    def exit_states(self, input_ids: torch.Tensor, rows: PackedRows, layers: list[int]) -> dict[int, torch.Tensor]:
        """The heads' input at every exit in `layers` from one pass to the deepest (training needs them all)."""
        hidden, done, states = self.embeddings(input_ids), 0, {}
        for layer in sorted(layers):
            hidden = self._run(hidden, rows, done, layer, False, None)
            states[layer], done = self.exit_of(hidden[rows.starts], layer), layer
        return states

    def exit_of(self, cls: torch.Tensor, layer: int) -> torch.Tensor:
        """The heads' input from raw CLS vectors of hidden state `layer`.

        Exits before the last layer apply `final_norm`, the last does not (as the heads were trained).
        """
        return self.final_norm(cls) if layer < self.config.num_layers else cls

    def _run(
        self,
        hidden: torch.Tensor,
        rows: PackedRows,
        first: int,
        last: int,
        cls_only_last: bool,
        stop_check: StopCheck | None,
    ) -> torch.Tensor:
        """Layers first+1..last (1-based) over packed `hidden`; with `cls_only_last` the last yields CLS rows only."""
        tables = {}  # in fp32 whatever the model's dtype: rotation angles of 32K positions need the precision
        for theta in {self.config.global_rope_theta, self.config.local_rope_theta}:
            cos, sin = rotary_tables(rows.max_length, self.config.head_dim, theta, torch.float32, hidden.device)
            tables[theta] = (cos[rows.positions], sin[rows.positions])
        for index in range(first, last):
            if stop_check is not None:
                stop_check()
            layer = self.layers[index]
            theta = self.config.global_rope_theta if layer.half_window is None else self.config.local_rope_theta
            cls_only = cls_only_last and index == last - 1
            hidden = layer(hidden, tables[theta], rows, self.kernel, cls_only, stop_check)
        return hidden
