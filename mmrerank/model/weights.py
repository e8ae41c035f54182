"""Load a checkpoint's tensors (encoder and heads) and check every name and shape against the layout."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from mmrerank.layout import (
    CheckpointError,
    CheckpointLayout,
    EncoderConfig,
    MatryoshkaSpec,
    expected_encoder_shapes,
    expected_head_shapes,
)


@dataclass
class Checkpoint:
    """A checkpoint's layout with its tensors, validated, still on the CPU."""

    layout: CheckpointLayout
    encoder_state: dict[str, torch.Tensor]
    head_state: dict[str, torch.Tensor]

    @property
    def encoder_config(self) -> EncoderConfig:
        """The encoder hyper-parameters from `config.json`."""
        return self.layout.encoder_config

    @property
    def spec(self) -> MatryoshkaSpec:
        """The exits from `matryoshka_config.json`."""
        return self.layout.spec


def check_shapes(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: Path) -> None:
    """Fail with the first missing, unexpected or mis-shaped tensor, named."""
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{source} lacks {len(missing)} tensor(s), first {missing[0]!r}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source} holds unexpected tensor(s), first {unexpected[0]!r}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape}")


def load_heads(path: Path) -> dict[str, torch.Tensor]:
    """The head state dict from `classification_heads.safetensors` or `.pt`, without a training prefix."""
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} must hold a state dict")
    # Some exports keep the training module's prefix; the published layout has none.
    return {key.removeprefix("layer_heads."): value for key, value in state.items()}


def load_checkpoint(name_or_path: str | os.PathLike[str] | CheckpointLayout) -> Checkpoint:
    """Read a checkpoint directory (or hub id, or an opened layout) and validate every tensor's name and shape."""
    layout = name_or_path if isinstance(name_or_path, CheckpointLayout) else CheckpointLayout.open(name_or_path)
    encoder_state = load_file(str(layout.weights_file))
    check_shapes(encoder_state, expected_encoder_shapes(layout.encoder_config), layout.weights_file)
    head_state = load_heads(layout.heads_file)
    check_shapes(head_state, expected_head_shapes(layout.spec), layout.heads_file)
    return Checkpoint(layout, encoder_state, head_state)
