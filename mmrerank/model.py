"""The 2D-Matryoshka reranker: encoder plus heads, on a chosen device and dtype."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from mmrerank.checkpoint import Checkpoint, MatryoshkaSpec, load_checkpoint
from mmrerank.encoder import Encoder
from mmrerank.heads import MatryoshkaHeads
from mmrerank.varlen import resolve_backend


def default_device() -> torch.device:
    """The first GPU when PyTorch sees one (CUDA or ROCm), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs, fp32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class MatryoshkaReranker:
    """Scores padded batches of token ids at any (exit layer, head width) of the checkpoint."""

    def __init__(
        self, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype, attention: str = "auto"
    ) -> None:
        self.spec: MatryoshkaSpec = checkpoint.spec
        self.config = checkpoint.encoder_config
        self.device = device
        self.dtype = dtype
        # sdpa: padded batches; varlen: packed sequences, each through SDPA; flash: packed, FlashAttention-2.
        self.attention = resolve_backend(attention, device, dtype)
        self.encoder = Encoder(self.config)
        self.encoder.load_state_dict(checkpoint.encoder_state, strict=True)
        self.encoder.to(device=device, dtype=dtype).eval()
        self.heads = MatryoshkaHeads(self.spec)
        self.heads.load_state_dict(checkpoint.head_state, strict=True)
        self.heads.to(device=device, dtype=torch.float32).eval()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        attention: str = "auto",
    ) -> MatryoshkaReranker:
        """Load a checkpoint directory (or hub id); bf16 on GPU and fp32 on CPU unless told otherwise.

        `attention` is auto (FlashAttention-2 where it runs, else SDPA), sdpa, varlen or flash.
        """
        resolved = torch.device(device) if device is not None else default_device()
        return cls(load_checkpoint(name_or_path), resolved, dtype or default_dtype(resolved), attention)

    @torch.inference_mode()
    def logits(self, input_ids: np.ndarray, lengths: np.ndarray, layer: int, dims: Sequence[int]) -> np.ndarray:
        """Raw fp32 logits for right-padded ids [batch, length], all rows exiting at `layer`.

        `dims[i]` is the head width of row i. Only encoder layers 1..layer run.
        """
        if layer not in self.spec.layer_indices:
            raise ValueError(f"layer {layer} is not one of {list(self.spec.layer_indices)}")
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device)
        lens = torch.as_tensor(lengths, dtype=torch.long, device=self.device)
        if self.attention == "sdpa":
            cls = self.encoder.cls_states(ids, lens, layer)
        else:
            packed = ids[torch.arange(ids.shape[1], device=self.device)[None, :] < lens[:, None]]
            cls = self.encoder.cls_states_packed(packed, lens, layer, use_flash=self.attention == "flash")
        dims_array = np.asarray(dims)
        out = np.empty(len(dims_array), dtype=np.float32)
        for dim in np.unique(dims_array):
            rows = np.flatnonzero(dims_array == dim)
            selected = cls[torch.as_tensor(rows, device=self.device)]
            out[rows] = self.heads.logits(selected, layer, int(dim)).cpu().numpy()
        return out
