"""Read and validate a checkpoint in the published on-disk layout (see CHECKPOINT.md)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MATRYOSHKA_FILE = "matryoshka_config.json"
TOKENIZER_FILE = "tokenizer.json"
HEAD_FILES = ("classification_heads.safetensors", "classification_heads.pt")
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, MATRYOSHKA_FILE, TOKENIZER_FILE)


class CheckpointError(ValueError):
    """The checkpoint is missing, incomplete or does not match the published layout."""


@dataclass(frozen=True)
class EncoderConfig:
    """The encoder hyper-parameters the forward pass needs, read from `config.json`."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    global_every_n_layers: int
    local_window: int
    global_rope_theta: float
    local_rope_theta: float
    norm_eps: float
    max_position_embeddings: int
    pad_token_id: int
    bos_token_id: int
    eos_token_id: int

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    def is_global_layer(self, index: int) -> bool:
        """Whether encoder layer `index` (0-based) attends globally rather than in a sliding window."""
        return index % self.global_every_n_layers == 0


@dataclass(frozen=True)
class MatryoshkaSpec:
    """The exits a checkpoint offers: layers (1-based hidden-state indices) and head widths."""

    layer_indices: tuple[int, ...]
    dim_indices: tuple[int, ...]

    @property
    def default_layer(self) -> int:
        """The deepest exit, used when a request names none."""
        return max(self.layer_indices)

    @property
    def default_dim(self) -> int:
        """The widest head, used when a request names none."""
        return max(self.dim_indices)


@dataclass
class Checkpoint:
    """Everything read from a checkpoint directory, validated, tensors still on the CPU."""

    path: Path
    encoder_config: EncoderConfig
    spec: MatryoshkaSpec
    encoder_state: dict[str, torch.Tensor]
    head_state: dict[str, torch.Tensor]

    @property
    def tokenizer_file(self) -> Path:
        """Path of the `tokenizer.json` that belongs to this checkpoint."""
        return self.path / TOKENIZER_FILE


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _require(config: dict[str, Any], key: str, path: Path) -> Any:
    if key not in config:
        raise CheckpointError(f"{path} lacks the key {key!r}")
    return config[key]


def _rope_thetas(config: dict[str, Any]) -> tuple[float, float]:
    """Both rotary bases; older configs hold them flat, newer ones under `rope_parameters`."""
    rope = config.get("rope_parameters") or {}
    global_theta = float(rope.get("full_attention", {}).get("rope_theta", config.get("global_rope_theta", 160_000.0)))
    # mmBERT trains both layer kinds with the same base; a config that omits the local
    # base means that base, not the 10,000 some libraries would fill in.
    local_theta = float(
        rope.get("sliding_attention", {}).get("rope_theta", config.get("local_rope_theta", global_theta))
    )
    return global_theta, local_theta


def read_encoder_config(path: Path) -> EncoderConfig:
    """Parse a ModernBERT `config.json` into the fields the encoder needs."""
    config = _read_json(path)
    if config.get("model_type") != "modernbert":
        raise CheckpointError(f"{path}: model_type is {config.get('model_type')!r}, expected 'modernbert'")
    if config.get("rope_scaling"):
        raise CheckpointError(f"{path}: rope_scaling is set, but this reranker was trained with plain RoPE")
    global_theta, local_theta = _rope_thetas(config)
    layer_types = config.get("layer_types")
    every_n = int(config.get("global_attn_every_n_layers", 3))
    num_layers = int(_require(config, "num_hidden_layers", path))
    if layer_types is not None:
        expected = ["sliding_attention" if i % every_n else "full_attention" for i in range(num_layers)]
        if list(layer_types) != expected:
            raise CheckpointError(f"{path}: layer_types must put a global layer every {every_n} layers")
    encoder_config = EncoderConfig(
        vocab_size=int(_require(config, "vocab_size", path)),
        hidden_size=int(_require(config, "hidden_size", path)),
        intermediate_size=int(_require(config, "intermediate_size", path)),
        num_layers=num_layers,
        num_heads=int(_require(config, "num_attention_heads", path)),
        global_every_n_layers=every_n,
        local_window=int(config.get("local_attention", 128)),
        global_rope_theta=global_theta,
        local_rope_theta=local_theta,
        norm_eps=float(config.get("norm_eps", 1e-5)),
        max_position_embeddings=int(config.get("max_position_embeddings", 32768)),
        pad_token_id=int(config.get("pad_token_id", 0)),
        bos_token_id=int(config.get("bos_token_id", 2)),
        eos_token_id=int(config.get("eos_token_id", 1)),
    )
    if encoder_config.hidden_size % encoder_config.num_heads:
        raise CheckpointError(f"{path}: hidden_size is not a multiple of num_attention_heads")
    return encoder_config


def read_matryoshka_spec(path: Path, encoder_config: EncoderConfig) -> MatryoshkaSpec:
    """Parse `matryoshka_config.json`: the exit layers and head widths, checked against the encoder."""
    config = _read_json(path)
    lists: dict[str, tuple[int, ...]] = {}
    for key in ("layer_indices", "dim_indices"):
        values = config.get(key)
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        ):
            raise CheckpointError(f"{path} must list {key!r} as a non-empty list of integers")
        lists[key] = tuple(sorted(set(values)))
    bad_layers = [v for v in lists["layer_indices"] if not 1 <= v <= encoder_config.num_layers]
    if bad_layers:
        raise CheckpointError(f"{path}: layer_indices {bad_layers} are outside 1..{encoder_config.num_layers}")
    bad_dims = [v for v in lists["dim_indices"] if not 2 <= v <= encoder_config.hidden_size]
    if bad_dims:
        raise CheckpointError(f"{path}: dim_indices {bad_dims} are outside 2..{encoder_config.hidden_size}")
    return MatryoshkaSpec(layer_indices=lists["layer_indices"], dim_indices=lists["dim_indices"])


def expected_encoder_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every encoder tensor name of the published layout with its shape."""
    h, i = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.tok_embeddings.weight": (config.vocab_size, h),
        "embeddings.norm.weight": (h,),
        "final_norm.weight": (h,),
    }
    for layer in range(config.num_layers):
        prefix = f"layers.{layer}."
        if layer > 0:
            shapes[prefix + "attn_norm.weight"] = (h,)
        shapes[prefix + "attn.Wqkv.weight"] = (3 * h, h)
        shapes[prefix + "attn.Wo.weight"] = (h, h)
        shapes[prefix + "mlp_norm.weight"] = (h,)
        shapes[prefix + "mlp.Wi.weight"] = (2 * i, h)
        shapes[prefix + "mlp.Wo.weight"] = (h, i)
    return shapes


def expected_head_shapes(spec: MatryoshkaSpec) -> dict[str, tuple[int, ...]]:
    """Every head tensor name of the published layout with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in spec.layer_indices:
        for dim in spec.dim_indices:
            prefix = f"{layer}.{dim}."
            shapes[prefix + "0.weight"] = (dim // 2, dim)
            shapes[prefix + "0.bias"] = (dim // 2,)
            shapes[prefix + "3.weight"] = (1, dim // 2)
            shapes[prefix + "3.bias"] = (1,)
    return shapes


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


def _load_heads(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    for name in HEAD_FILES:
        path = directory / name
        if path.is_file():
            if path.suffix == ".safetensors":
                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise CheckpointError(f"{path} must hold a state dict")
            # Some exports keep the training module's prefix; the published layout has none.
            return {key.removeprefix("layer_heads."): value for key, value in state.items()}, path
    raise CheckpointError(f"{directory} has no classification heads ({' or '.join(HEAD_FILES)})")


def resolve_checkpoint_dir(name_or_path: str | os.PathLike[str]) -> Path:
    """A local directory as is; otherwise a hub id fetched through `huggingface_hub`."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"checkpoint directory {text!r} does not exist")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise CheckpointError(f"{text!r} is not a directory and huggingface_hub is not installed") from error
    try:
        return Path(snapshot_download(repo_id=text, etag_timeout=10))
    except Exception as error:  # the hub client raises many unrelated types
        raise CheckpointError(
            f"could not fetch {text!r} from the model hub ({type(error).__name__}: {error}); "
            "download it where the hub is reachable and pass the local directory"
        ) from error


def load_checkpoint(name_or_path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint directory (or hub id) and validate every file, key and shape."""
    directory = resolve_checkpoint_dir(name_or_path)
    for name in REQUIRED_FILES:
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} lacks {name}")
    encoder_config = read_encoder_config(directory / CONFIG_FILE)
    spec = read_matryoshka_spec(directory / MATRYOSHKA_FILE, encoder_config)
    encoder_state = load_file(str(directory / WEIGHTS_FILE))
    check_shapes(encoder_state, expected_encoder_shapes(encoder_config), directory / WEIGHTS_FILE)
    head_state, head_path = _load_heads(directory)
    check_shapes(head_state, expected_head_shapes(spec), head_path)
    return Checkpoint(directory, encoder_config, spec, encoder_state, head_state)
