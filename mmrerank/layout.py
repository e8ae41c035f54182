"""The checkpoint's on-disk layout without torch: file names, configs, exits, and the one reader of a directory.

Every process reads a checkpoint through `CheckpointLayout.open`: the launcher to check it, the
tokenizer for `tokenizer.json` and the exits, the reranker before loading weights
(`mmrerank.model.weights`). docs/checkpoint.md describes the layout.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    model_name: str = ""  # `model_name_or_path` as the checkpoint records it, when it does

    @property
    def default_layer(self) -> int:
        """The deepest exit, used when a request names none."""
        return max(self.layer_indices)

    @property
    def default_dim(self) -> int:
        """The widest head, used when a request names none."""
        return max(self.dim_indices)


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


def _refuse_rope_scaling(config: dict[str, Any], path: Path) -> None:
    """YaRN or any other scaled RoPE makes a different model: refuse it in the 4.x and the 5.x form."""
    if config.get("rope_scaling"):
        raise CheckpointError(f"{path}: rope_scaling is set, but this reranker was trained with plain RoPE")
    rope = config.get("rope_parameters") or {}
    # transformers 5.x: one entry per layer kind ({"full_attention": {...}, ...}) or a single flat entry.
    entries = {"rope_parameters": rope} if "rope_type" in rope else rope
    for kind, entry in entries.items():
        rope_type = entry.get("rope_type", "default") if isinstance(entry, dict) else "default"
        if rope_type != "default":
            raise CheckpointError(
                f"{path}: {kind} has rope_type {str(rope_type)[:40]!r}, but this reranker was trained with plain RoPE"
            )


def read_encoder_config(path: Path) -> EncoderConfig:
    """Parse a ModernBERT `config.json` into the fields the encoder needs."""
    config = _read_json(path)
    if config.get("model_type") != "modernbert":
        raise CheckpointError(f"{path}: model_type is {config.get('model_type')!r}, expected 'modernbert'")
    _refuse_rope_scaling(config, path)
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
    _check_against_encoder(config, path, encoder_config)
    name = config.get("model_name_or_path")
    return MatryoshkaSpec(
        layer_indices=lists["layer_indices"],
        dim_indices=lists["dim_indices"],
        model_name=name if isinstance(name, str) else "",
    )


def _check_against_encoder(config: dict[str, Any], path: Path, encoder_config: EncoderConfig) -> None:
    """The fields of `matryoshka_config.json` that describe the encoder must agree with `config.json`."""
    expected: dict[str, object] = {
        "pooling_strategy": "cls",
        "has_final_norm": True,
        "num_layers": encoder_config.num_layers,
        "hidden_size": encoder_config.hidden_size,
    }
    for key, value in expected.items():
        if key in config and (config[key] != value or type(config[key]) is not type(value)):
            raise CheckpointError(
                f"{path}: {key} is {str(config[key])[:40]!r}, but the encoder in {CONFIG_FILE} needs {value!r}"
            )


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
        reason = " ".join(str(error).split())[:300]  # one line: the hub's messages span several
        raise CheckpointError(
            f"could not fetch {text!r} from the model hub ({type(error).__name__}: {reason}); "
            "download it where the hub is reachable and pass the local directory"
        ) from error


@dataclass(frozen=True)
class CheckpointLayout:
    """A checkpoint directory, checked for every file of the published layout, with its configs read."""

    directory: Path
    encoder_config: EncoderConfig
    spec: MatryoshkaSpec
    heads_file: Path

    @property
    def weights_file(self) -> Path:
        """The encoder's `model.safetensors`."""
        return self.directory / WEIGHTS_FILE

    @property
    def tokenizer_file(self) -> Path:
        """The checkpoint's own `tokenizer.json` (vocabulary and pair template)."""
        return self.directory / TOKENIZER_FILE

    @classmethod
    def open(cls, name_or_path: str | os.PathLike[str]) -> CheckpointLayout:
        """Resolve a directory or hub id, require every file, and read `config.json` and `matryoshka_config.json`."""
        directory = resolve_checkpoint_dir(name_or_path).resolve()
        missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
        heads = [directory / name for name in HEAD_FILES if (directory / name).is_file()]
        if not heads:
            missing.append(" or ".join(HEAD_FILES))
        if missing:
            raise CheckpointError(
                f"{directory} is not a checkpoint in the published layout: it lacks {', '.join(missing)}"
            )
        encoder_config = read_encoder_config(directory / CONFIG_FILE)
        spec = read_matryoshka_spec(directory / MATRYOSHKA_FILE, encoder_config)
        return cls(directory, encoder_config, spec, heads[0])
