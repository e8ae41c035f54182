"""Attention kernels behind one interface, chosen once when the model loads.

The encoder always holds its tokens packed: the pairs of a micro-batch concatenated without
padding, delimited by cumulative lengths (`PackedRows`). A kernel attends over packed
[tokens, heads, head_dim] tensors; adding one means one `AttentionKernel` subclass and one
entry in `KERNELS`.

- `padded`: pads each micro-batch for attention only and runs the linear-memory SDPA functions
  of `mmrerank.model.attention` (key-padding masks, blocked sliding windows).
- `packed-sdpa`: one SDPA call per sequence, no padding at all.
- `varlen`: PyTorch's own variable-length FlashAttention (`torch.nn.attention.varlen`, torch 2.11
  or later for `window_size`), on a GPU in bf16/fp16; no extra package.
- `flash`: FlashAttention-2 `flash_attn_varlen_func` with `window_size`, where `flash_attn` is
  installed on a GPU.

No kernel pads more than the planner budgets: the exit layer, where only each sequence's first
token (its CLS) is queried, attends over the ragged keys for every kernel.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mmrerank.model.attention import (
    StopCheck,
    global_attention,
    key_padding_mask,
    local_attention,
    ragged_cls_attention,
)

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackedRows:
    """Where each sequence of a packed micro-batch lies, computed once per micro-batch on its device."""

    lengths: torch.Tensor  # [sequences], int64
    cu_seqlens: torch.Tensor  # [sequences + 1], int64: start offsets, then the total
    positions: torch.Tensor  # [tokens]: position of each token within its sequence
    sequence: torch.Tensor  # [tokens]: the sequence each token belongs to
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
        return cls(lengths, cu_seqlens, positions, sequence, sequence * longest + positions, host_lengths)

    @property
    def starts(self) -> torch.Tensor:
        """Index of each sequence's first token (its CLS)."""
        return self.cu_seqlens[:-1]

    @functools.cached_property
    def cu_seqlens_int32(self) -> torch.Tensor:
        """`cu_seqlens` as FlashAttention takes it."""
        return self.cu_seqlens.to(torch.int32)

    def prefixes(self, reach: int) -> tuple[torch.Tensor, PackedRows]:
        """The first `reach` tokens of every sequence: their indices in the packed tokens, and the rows they form."""
        host_lengths = tuple(min(length, reach) for length in self.host_lengths)
        rows = PackedRows.from_lengths(self.lengths.clamp(max=reach), host_lengths)
        return self.starts[rows.sequence] + rows.positions, rows

    def groups_by_length(self) -> dict[int, torch.Tensor]:
        """For each sequence length, the packed indices of the tokens of every sequence that long, in order."""
        starts: dict[int, list[int]] = {}
        offset = 0
        for length in self.host_lengths:
            starts.setdefault(length, []).append(offset)
            offset += length
        device = self.lengths.device
        return {
            length: (torch.tensor(firsts, device=device)[:, None] + torch.arange(length, device=device)).reshape(-1)
            for length, firsts in starts.items()
        }

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
    def unavailable_reason(cls, device: torch.device, dtype: torch.dtype) -> str | None:
        """Why this kernel cannot run on this device and dtype, or None when it can."""
        return None

    @classmethod
    def runs_on(cls, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether this kernel can run on this device and dtype."""
        return cls.unavailable_reason(device, dtype) is None

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
        """Attention of each sequence's first token only: `query` is [sequences, heads, head_dim].

        Over the ragged keys, never padded: a sliding-window layer's first token sees only the first
        `half_window + 1` keys of its sequence, a global layer's all of them.
        """
        if half_window is not None:
            index, rows = rows.prefixes(half_window + 1)
            key, value = key[index], value[index]
        return ragged_cls_attention(query, key, value, rows.sequence)


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
    """One SDPA call per sequence length: no padding, and a sequence's result never depends on the others.

    Sequences of the same length share a call (each is computed as if alone); a sliding window wider
    than a sequence is global attention for it.
    """

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
        attended = torch.empty_like(query)
        for length, index in rows.groups_by_length().items():
            count = len(index) // length
            q, k, v = (t[index].view(count, length, *t.shape[1:]).transpose(1, 2) for t in (query, key, value))
            if half_window is None or length <= half_window + 1:
                out = global_attention(q, k, v, None, stop_check)
            else:
                out = local_attention(
                    q, k, v, torch.ones(count, length, dtype=torch.bool, device=q.device), half_window
                )
            attended[index] = out.transpose(1, 2).reshape(-1, *query.shape[1:])
        return attended


def _gpu_half_precision_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cuda":
        return f"needs a CUDA or ROCm GPU, not {device.type}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"needs bfloat16 or float16, not {str(dtype).removeprefix('torch.')}"
    return None


def varlen_attn(*args: Any, **kwargs: Any) -> torch.Tensor:
    """PyTorch's `torch.nn.attention.varlen.varlen_attn` (looked up per call, so tests can stand in for it)."""
    from torch.nn.attention.varlen import varlen_attn as attention

    return attention(*args, **kwargs)


@functools.cache
def _varlen_probe(device: torch.device, dtype: torch.dtype) -> str | None:
    """Run a small windowed varlen call once per device and dtype; None when it matches a dense reference."""
    try:
        from torch.nn.attention.varlen import varlen_attn as attention
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (2.10 or later)"
    if "window_size" not in inspect.signature(attention).parameters:
        return f"torch {torch.__version__}'s varlen_attn takes no window_size (2.11 or later)"
    generator = torch.Generator().manual_seed(0)
    lengths = (150, 7)
    query, key, value = (torch.randn(sum(lengths), 2, 64, generator=generator) for _ in range(3))
    cu = torch.tensor([0, lengths[0], sum(lengths)], dtype=torch.int32)
    expected = local_attention(*(t[: lengths[0]].transpose(0, 1)[None] for t in (query, key, value)),
                               torch.ones(1, lengths[0], dtype=torch.bool), 16)[0].transpose(0, 1)  # fmt: skip
    try:
        got = attention(*(t.to(device, dtype) for t in (query, key, value)), cu.to(device), cu.to(device),
                        max(lengths), max(lengths), window_size=(16, 16))  # fmt: skip
    except Exception as error:  # noqa: BLE001 - any failure means the kernel cannot serve here
        return f"varlen_attn failed on {device.type} {str(dtype).removeprefix('torch.')}: {error}"
    difference = float((got[: lengths[0]].float().cpu() - expected).abs().max())
    if difference > 0.05:
        return f"varlen_attn ignores window_size here (largest difference {difference:.3f} from a windowed reference)"
    return None


class VarlenKernel(AttentionKernel):
    """PyTorch's own varlen FlashAttention: `cu_seqlens`, `window_size` for the sliding-window layers.

    The exit layer queries one token per sequence (`cu_seq_q` = 0, 1, ..., n) against its ragged keys.
    One call per layer: a 32K-token layer takes milliseconds on a GPU, so `stop_check` runs between layers.
    """

    name = "varlen"

    @classmethod
    def unavailable_reason(cls, device: torch.device, dtype: torch.dtype) -> str | None:
        return _gpu_half_precision_reason(device, dtype) or _varlen_probe(device, dtype)

    def varlen(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        cu_seq_q: torch.Tensor,
        cu_seq_k: torch.Tensor,
        max_q: int,
        max_k: int,
        window: tuple[int, int],
    ) -> torch.Tensor:
        """The variable-length attention call itself (the one thing FlashAttention-2's kernel does differently)."""
        return varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_size=window)

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        rows: PackedRows,
        half_window: int | None,
        stop_check: StopCheck | None = None,
    ) -> torch.Tensor:
        window = (-1, -1) if half_window is None else (half_window, half_window)
        cu, longest = rows.cu_seqlens_int32, rows.max_length
        return self.varlen(query, key, value.contiguous(), cu, cu, longest, longest, window)

    def attend_cls(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: PackedRows, half_window: int | None
    ) -> torch.Tensor:
        # A windowed call would align the single query with the last key; the first token's window
        # is the first half_window + 1 keys, so those are gathered and attended globally instead.
        if half_window is not None:
            index, rows = rows.prefixes(half_window + 1)
            key, value = key[index], value[index]
        one_each = torch.arange(len(rows.host_lengths) + 1, dtype=torch.int32, device=query.device)
        cu = rows.cu_seqlens_int32
        return self.varlen(query.contiguous(), key, value.contiguous(), one_each, cu, 1, rows.max_length, (-1, -1))


class FlashKernel(VarlenKernel):
    """FlashAttention-2's `flash_attn_varlen_func` in place of PyTorch's (GPU, bf16/fp16, `flash_attn` installed)."""

    name = "flash"

    @classmethod
    def unavailable_reason(cls, device: torch.device, dtype: torch.dtype) -> str | None:
        if importlib.util.find_spec("flash_attn") is None:
            return "the flash_attn package is not installed"
        return _gpu_half_precision_reason(device, dtype)

    def varlen(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        cu_seq_q: torch.Tensor,
        cu_seq_k: torch.Tensor,
        max_q: int,
        max_k: int,
        window: tuple[int, int],
    ) -> torch.Tensor:
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_size=window)


KERNELS: dict[str, type[AttentionKernel]] = {
    kernel.name: kernel for kernel in (PaddedKernel, PackedSdpaKernel, VarlenKernel, FlashKernel)
}
# What "auto" picks, in order of preference: the first that runs on the device and dtype. Where a
# sequence's result must be bit for bit the same whatever shares its micro-batch (int8: a last-bit
# change before a per-token quantisation can move a rounding, and the score with it), `padded` is
# replaced by `packed-sdpa`, which attends each sequence as if alone.
AUTO_ORDER = ("varlen", "flash", "padded")
BATCH_INVARIANT_AUTO_ORDER = ("varlen", "flash", "packed-sdpa")


def choose_kernel(
    requested: str, device: torch.device, dtype: torch.dtype, batch_invariant: bool = False
) -> AttentionKernel:
    """The kernel named (checked against the device), or for "auto" the first of AUTO_ORDER that runs here.

    With `batch_invariant`, "auto" picks only kernels whose result for a sequence is the same in any
    company (BATCH_INVARIANT_AUTO_ORDER); a named kernel is taken as named. For "auto", one log line
    says what was chosen and why each kernel before it was passed over.
    """
    if requested == "auto":
        passed_over = []
        for name in BATCH_INVARIANT_AUTO_ORDER if batch_invariant else AUTO_ORDER:
            reason = KERNELS[name].unavailable_reason(device, dtype)
            if reason is None:
                LOGGER.info("attention kernel %s on %s %s%s", name, device.type, str(dtype).removeprefix("torch."),
                            "".join(f"; {other} passed over: {why}" for other, why in passed_over))  # fmt: skip
                return KERNELS[name]()
            passed_over.append((name, reason))
    if requested not in KERNELS:
        raise ValueError(f"attention must be auto or one of {sorted(KERNELS)}, got {requested!r}")
    reason = KERNELS[requested].unavailable_reason(device, dtype)
    if reason is not None:
        raise ValueError(f"attention {requested!r} cannot run on {device.type} with {dtype}: {reason}")
    return KERNELS[requested]()
