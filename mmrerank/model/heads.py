"""The 2D-Matryoshka classification heads: one small MLP per (exit layer, width)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mmrerank.layout import MatryoshkaSpec


def make_head(dim: int) -> nn.Sequential:
    """Linear(d, d/2) -> exact GELU -> Dropout(0.1) -> Linear(d/2, 1): one raw logit."""
    return nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Dropout(0.1), nn.Linear(dim // 2, 1))


class MatryoshkaHeads(nn.ModuleDict):
    """All heads, nested so that the state dict reads `{layer}.{dim}.{0|3}.{weight|bias}`."""

    def __init__(self, spec: MatryoshkaSpec) -> None:
        super().__init__(
            {
                str(layer): nn.ModuleDict({str(dim): make_head(dim) for dim in spec.dim_indices})
                for layer in spec.layer_indices
            }
        )

    def logits(self, cls: torch.Tensor, layer: int, dim: int) -> torch.Tensor:
        """Logits [batch] of head (layer, dim) on the first `dim` features of the CLS vectors, in fp32."""
        head = self[str(layer)][str(dim)]
        return head(cls[:, :dim].float()).squeeze(-1)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function in fp32, stable for large magnitudes."""
    return (0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))).astype(np.float32)
