"""Attention kernels behind one interface, chosen once when the model loads.

The encoder always holds its tokens packed: the pairs of a micro-batch concatenated without
padding, delimited by cumulative lengths (`PackedRows`). A kernel attends over packed
[tokens, heads, head_dim] tensors; adding one means one `AttentionKernel` subclass and one
entry in `KERNELS`.

- `padded`: pads each micro-batch for attention only and runs the linear-memory SDPA functions
  of `mmrerank.model.attention` (key-padding masks, blocked sliding windows).
- `packed-sdpa`: one SDPA call per sequence, no padding at all.
- `flash`: FlashAttention-2 `flash_attn_varlen_func` with `window_size`, where `flash_attn` is
  installed on a GPU.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from mmrerank.model.attention import StopCheck, cls_attention, global_attention, key_padding_mask, local_attention


@dataclass(frozen=True)
class PackedRows:
    """Where each sequence of a packed micro-batch lies, computed once per micro-batch on its device."""

    lengths: torch.Tensor  # [sequences], int64
    cu_seqlens: torch.Tensor  # [sequences + 1], int64: start offsets, then the total
    positions: torch.Tensor  # [tokens]: position of each token within its sequence
    padded_index: torch.Tensor  # [tokens]: where each token lands in a [sequences * longest] padded layout
    host_lengths: tuple[int, ...]  # the same lengths on the host, so no kernel needs a device sync

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor, host_lengths: tuple[int, ...]) -> PackedRows:
        """Offsets, positions and padding index for sequences of these lengths."""
        total, longest = sum(host_lengths), max(host_lengths)
        cu_seqlens = F.pad(torch.cumsum(lengths, 0), (1, 0))
        positions = torch.arange(total, device=lengths.device) - torch.repeat_interleave(
            cu_seqlens[:-1], lengths, output_size=total
        )
        sequence = torch.repeat_interleave(
            torch.arange(len(host_lengths), device=lengths.device), lengths, output_size=total
        )
        return cls(lengths, cu_seqlens, positions, sequence * longest + positions, host_lengths)

    @property
    def starts(self) -> torch.Tensor:
        """Index of each sequence's first token (its CLS)."""
        return self.cu_seqlens[:-1]

    @property
    def max_length(self) -> int:
        """The longest sequence."""
        return max(self.host_lengths)

    @property
    def uniform(self) -> bool:
        """Whether every sequence has the same length (padding is then a reshape)."""
        return min(self.host_lengths) == self.max_length

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """[tokens, heads, head_dim] -> right-padded [sequences, heads, longest, head_dim], zeros after each end."""
        shape = (len(self.host_lengths), self.max_length, *packed.shape[1:])
        if self.uniform:
            return packed.view(shape).transpose(1, 2)
        padded = packed.new_zeros(shape[0] * shape[1], *packed.shape[1:])
        padded[self.padded_index] = packed
        return padded.view(shape).transpose(1, 2)

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """The inverse of `pad`: [sequences, heads, longest, head_dim] -> [tokens, heads, head_dim]."""
        flat = padded.transpose(1, 2).reshape(-1, padded.shape[1], padded.shape[3])
        return flat if self.uniform else flat[self.padded_index]


class AttentionKernel(ABC):
    """Bidirectional attention over packed sequences, globally or in a sliding window."""

    name: ClassVar[str]
    # Whether the kernel pads its micro-batches: the planner then budgets padded tokens, not real ones.
    pads: ClassVar[bool] = False

    @classmethod
    def runs_on(cls, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether this kernel can run on this device and dtype."""
        return True

    @abstractmethod
    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        rows: PackedRows,
        half_window: int | None,
        stop_check: StopCheck | None = None,
    ) -> torch.Tensor:
        """Attention output [tokens, heads, head_dim]; each token sees its own sequence (within the window).

        A kernel whose long layers take seconds calls `stop_check` between parts of them.
        """

    def attend_cls(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: PackedRows, half_window: int | None
    ) -> torch.Tensor:
        """Attention of each sequence's first token only: `query` is [sequences, heads, head_dim]."""
        keys, values = rows.pad(key), rows.pad(value)
        valid = key_padding_mask(rows.lengths, rows.max_length)
        return cls_attention(query[:, :, None], keys, values, valid, half_window)[:, :, 0]


class PaddedKernel(AttentionKernel):
    """Pad the micro-batch for attention only; SDPA with key masks, blocked sliding windows."""

    name = "padded"
    pads = True

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        rows: PackedRows,
        half_window: int | None,
        stop_check: StopCheck | None = None,
    ) -> torch.Tensor:
        q, k, v = rows.pad(query), rows.pad(key), rows.pad(value)
        valid = key_padding_mask(rows.lengths, rows.max_length)
        if half_window is None:
            attended = global_attention(q, k, v, None if rows.uniform else valid, stop_check)
        else:
            attended = local_attention(q, k, v, valid, half_window)
        return rows.unpad(attended)


class PackedSdpaKernel(AttentionKernel):
    """One SDPA call per sequence: no padding, a kernel launch per sequence and layer."""

    name = "packed-sdpa"

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        rows: PackedRows,
        half_window: int | None,
        stop_check: StopCheck | None = None,
    ) -> torch.Tensor:
        outputs = []
        start = 0
        for length in rows.host_lengths:
            q, k, v = (t[start : start + length].transpose(0, 1)[None] for t in (query, key, value))
            if half_window is None:
                attended = global_attention(q, k, v, None, stop_check)
            else:
                valid = torch.ones(1, length, dtype=torch.bool, device=query.device)
                attended = local_attention(q, k, v, valid, half_window)
            outputs.append(attended[0].transpose(0, 1))
            start += length
        return torch.cat(outputs)


class FlashKernel(AttentionKernel):
    """FlashAttention-2 varlen, `window_size` for the sliding-window layers (GPU, bf16/fp16, `flash_attn`)."""

    name = "flash"
    # One call per layer: a 32K-token layer takes milliseconds here, so `stop_check` runs between layers only.

    @classmethod
    def runs_on(cls, device: torch.device, dtype: torch.dtype) -> bool:
        return (
            device.type == "cuda"
            and dtype in (torch.float16, torch.bfloat16)
            and importlib.util.find_spec("flash_attn") is not None
        )

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        rows: PackedRows,
        half_window: int | None,
        stop_check: StopCheck | None = None,
    ) -> torch.Tensor:
        from flash_attn import flash_attn_varlen_func

        window = (-1, -1) if half_window is None else (half_window, half_window)
        cu = rows.cu_seqlens.to(torch.int32)
        return flash_attn_varlen_func(
            query, key, value, cu, cu, rows.max_length, rows.max_length, window_size=window
        )  # fmt: skip


KERNELS: dict[str, type[AttentionKernel]] = {
    kernel.name: kernel for kernel in (PaddedKernel, PackedSdpaKernel, FlashKernel)
}
# What "auto" picks, in order of preference: the first that runs on the device and dtype.
AUTO_ORDER = ("flash", "padded")


def choose_kernel(requested: str, device: torch.device, dtype: torch.dtype) -> AttentionKernel:
    """The kernel named (checked against the device), or for "auto" the first of AUTO_ORDER that runs here."""
    if requested == "auto":
        return next(KERNELS[name]() for name in AUTO_ORDER if KERNELS[name].runs_on(device, dtype))
    if requested not in KERNELS:
        raise ValueError(f"attention must be auto or one of {sorted(KERNELS)}, got {requested!r}")
    kernel = KERNELS[requested]
    if not kernel.runs_on(device, dtype):
        raise ValueError(f"attention {requested!r} cannot run on {device.type} with {dtype}")
    return kernel()
