"""The 2D-Matryoshka reranker: encoder plus heads, on a chosen device, precision and attention kernel."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from mmrerank.layout import CheckpointLayout, EncoderConfig, MatryoshkaSpec
from mmrerank.model.attention import StopCheck
from mmrerank.model.encoder import Encoder
from mmrerank.model.heads import MatryoshkaHeads
from mmrerank.model.kernels import AttentionKernel, PackedRows, choose_kernel
from mmrerank.model.precision import Precision, choose_precision, quantize_linears
from mmrerank.model.weights import Checkpoint, load_checkpoint


def default_device() -> torch.device:
    """The first GPU when PyTorch sees one (CUDA or ROCm), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_precision(device: torch.device) -> str:
    """The library's default: bf16 on GPUs, fp32 (the reference) on the CPU."""
    return "bf16" if device.type == "cuda" else "fp32"


class MatryoshkaReranker:
    """Scores token-id rows at any (exit layer, head width) of the checkpoint."""

    def __init__(
        self, checkpoint: Checkpoint, device: torch.device, precision: Precision, attention: str = "auto"
    ) -> None:
        self.spec: MatryoshkaSpec = checkpoint.spec
        self.config: EncoderConfig = checkpoint.encoder_config
        self.device = device
        self.precision = precision
        self.dtype = precision.dtype
        # int8 rounds every token's activations: only a kernel that computes each sequence alone keeps
        # a pair's score independent of its micro-batch.
        self.kernel: AttentionKernel = choose_kernel(attention, device, self.dtype, precision.name == "int8")
        self.encoder = Encoder(self.config, self.kernel)
        self.encoder.load_state_dict(checkpoint.encoder_state, strict=True)
        self.encoder.to(device=device, dtype=self.dtype).eval()
        if precision.name == "int8":
            quantize_linears(self.encoder.layers)
        self.heads = MatryoshkaHeads(self.spec)
        self.heads.load_state_dict(checkpoint.head_state, strict=True)
        self.heads.to(device=device, dtype=torch.float32).eval()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] | CheckpointLayout,
        device: str | torch.device | None = None,
        precision: str | None = None,
        attention: str = "auto",
    ) -> MatryoshkaReranker:
        """Load a checkpoint directory (or hub id) on `device` (default: the first GPU, else the CPU).

        `precision` is fp32, bf16, fp16, int8 (CPU only) or auto (what the server's config uses:
        bf16 on a GPU; on a CPU int8, bf16 or fp32 by its features, see `choose_precision`); by
        default bf16 on a GPU and fp32 on the CPU. `attention` is auto (varlen, else
        FlashAttention-2, where they run; else padded, or packed-sdpa for int8), or a name in `KERNELS`.
        """
        resolved = torch.device(device) if device is not None else default_device()
        chosen = choose_precision(precision or default_precision(resolved), resolved)
        return cls(load_checkpoint(name_or_path), resolved, chosen, attention)

    @torch.inference_mode()
    def logits(
        self,
        input_ids: np.ndarray,
        lengths: Sequence[int],
        layer: int,
        dims: Sequence[int],
        stop_check: StopCheck | None = None,
    ) -> np.ndarray:
        """Raw fp32 logits for rows packed end to end in the 1-D `input_ids`, all exiting at `layer`.

        `lengths[i]` is the length of row i and `dims[i]` its head width. Only encoder layers
        1..layer run. The ids reach the device in one copy. `stop_check` is called before each
        encoder layer and inside long ones; whatever it raises abandons the call.
        """
        self._check_exit(layer)
        ids, rows = self._packed(input_ids, lengths)
        return self._head_logits(self.encoder.cls_states(ids, rows, layer, stop_check), layer, dims)

    @torch.inference_mode()
    def logits_at_every_width(self, input_ids: np.ndarray, lengths: Sequence[int], layer: int) -> dict[int, np.ndarray]:
        """Raw fp32 logits of every row through each head width of `layer`, from one encoder pass."""
        self._check_exit(layer)
        ids, rows = self._packed(input_ids, lengths)
        cls = self.encoder.cls_states(ids, rows, layer)
        return {dim: self._head_logits(cls, layer, [dim] * len(rows.host_lengths)) for dim in self.spec.dim_indices}

    @torch.inference_mode()
    def prefilter(
        self,
        input_ids: np.ndarray,
        lengths: Sequence[int],
        layer: int,
        dims: Sequence[int],
        stop_check: StopCheck | None = None,
    ) -> tuple[np.ndarray, list[torch.Tensor]]:
        """A cascade's cheap stage: logits at `layer`, and each row's hidden state `layer` to continue from.

        The hidden states are per row [length, hidden] on the device; keep only the ones to continue.
        """
        self._check_exit(layer)
        ids, rows = self._packed(input_ids, lengths)
        hidden = self.encoder.hidden_states(ids, rows, layer, stop_check)
        logits = self._head_logits(self.encoder.exit_of(hidden[rows.starts], layer), layer, dims)
        return logits, list(hidden.split(rows.host_lengths))

    @torch.inference_mode()
    def continue_logits(
        self,
        hidden_rows: Sequence[torch.Tensor],
        from_layer: int,
        layer: int,
        dims: Sequence[int],
        stop_check: StopCheck | None = None,
    ) -> np.ndarray:
        """A cascade's deep stage: logits at `layer` for rows resumed from their hidden state `from_layer`."""
        self._check_exit(layer)
        host_lengths = tuple(len(row) for row in hidden_rows)
        lens = torch.as_tensor(host_lengths, dtype=torch.long).to(self.device, non_blocking=True)
        rows = PackedRows.from_lengths(lens, host_lengths)
        cls = self.encoder.continue_to_cls(torch.cat(list(hidden_rows)), rows, from_layer, layer, stop_check)
        return self._head_logits(cls, layer, dims)

    def _check_exit(self, layer: int) -> None:
        if layer not in self.spec.layer_indices:
            raise ValueError(f"layer {layer} is not one of {list(self.spec.layer_indices)}")

    def _packed(self, input_ids: np.ndarray, lengths: Sequence[int]) -> tuple[torch.Tensor, PackedRows]:
        """The ids on the device and where each row lies."""
        host_lengths = tuple(int(n) for n in lengths)
        if sum(host_lengths) != np.size(input_ids) or min(host_lengths, default=0) < 1:
            raise ValueError("lengths must be positive and add up to the number of token ids")
        ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64)).to(self.device, non_blocking=True)
        lens = torch.as_tensor(host_lengths, dtype=torch.long).to(self.device, non_blocking=True)
        return ids, PackedRows.from_lengths(lens, host_lengths)

    def _head_logits(self, cls: torch.Tensor, layer: int, dims: Sequence[int]) -> np.ndarray:
        """Row i through head (layer, dims[i]), in fp32, back on the host."""
        dims_array = np.asarray(dims)
        out = np.empty(len(dims_array), dtype=np.float32)
        for dim in np.unique(dims_array):
            rows = np.flatnonzero(dims_array == dim)
            selected = cls[torch.as_tensor(rows, device=self.device)]
            out[rows] = self.heads.logits(selected, layer, int(dim)).cpu().numpy()
        return out
