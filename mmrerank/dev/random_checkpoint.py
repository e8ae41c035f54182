"""Build a random-weight checkpoint in exactly the published layout, with a locally trained tokenizer.

Its scores carry no meaning, but they depend visibly on the input, so bugs cannot hide behind
near-constant outputs. The same builder makes the test fixtures and the benchmark models.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from mmrerank.dev.corpus import training_corpus
from mmrerank.layout import (
    EncoderConfig,
    MatryoshkaSpec,
    expected_encoder_shapes,
    expected_head_shapes,
)

LOGGER = logging.getLogger(__name__)
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # ids 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Preset:
    """Shape of a random-weight checkpoint."""

    encoder: EncoderConfig
    spec: MatryoshkaSpec
    tokenizer_vocab: int


def _encoder(vocab: int, hidden: int, intermediate: int, layers: int, heads: int) -> EncoderConfig:
    return EncoderConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=layers,
        num_heads=heads,
        global_every_n_layers=3,
        local_window=128,
        global_rope_theta=160_000.0,
        local_rope_theta=160_000.0,
        norm_eps=1e-5,
        max_position_embeddings=32768,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        _encoder(vocab=2048, hidden=128, intermediate=192, layers=6, heads=4),
        MatryoshkaSpec(layer_indices=(1, 2, 4, 6), dim_indices=(8, 16, 32, 64, 128)),
        tokenizer_vocab=2048,
    ),
    "base": Preset(
        _encoder(vocab=256_000, hidden=768, intermediate=1152, layers=22, heads=12),
        MatryoshkaSpec(layer_indices=(3, 6, 11, 22), dim_indices=(64, 128, 256, 512, 768)),
        tokenizer_vocab=8192,
    ),
}


def train_tokenizer(vocab_size: int, lines: Iterable[str] | None = None) -> Tokenizer:
    """A byte-level BPE tokenizer (any UTF-8 text encodes) with mmBERT's special ids and pair template.

    It learns its merges from `lines` (default: the multilingual word corpus).
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus() if lines is None else lines, trainer=trainer)
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    if list(ids.values()) != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special tokens got ids {ids}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        pair="<bos> $A <eos> $B <eos>",
        special_tokens=[("<bos>", 2), ("<eos>", 1)],
    )
    return tokenizer


def random_encoder_state(config: EncoderConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Encoder weights scaled so that attention is far from uniform and CLS depends on the text."""
    state: dict[str, torch.Tensor] = {}
    for name, shape in expected_encoder_shapes(config).items():
        if name.endswith("norm.weight"):
            tensor = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif name.startswith("embeddings."):
            tensor = torch.randn(shape, generator=generator)
        else:
            tensor = torch.randn(shape, generator=generator) * (1.5 / math.sqrt(shape[1]))
        state[name] = tensor.to(torch.bfloat16).contiguous()
    return state


def random_head_state(spec: MatryoshkaSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """fp32 head weights: unit-variance outputs, biases spread so different heads disagree."""
    state: dict[str, torch.Tensor] = {}
    for name, shape in expected_head_shapes(spec).items():
        fan_in = shape[1] if len(shape) == 2 else 1
        state[name] = (torch.randn(shape, generator=generator) * (1.0 / math.sqrt(fan_in))).float()
    return state


def config_json(config: EncoderConfig) -> dict[str, object]:
    """A `config.json` as the encoder's `save_pretrained` writes it: plain ModernBertModel."""
    return {
        "architectures": ["ModernBertModel"],
        "model_type": "modernbert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "hidden_activation": "gelu",
        "max_position_embeddings": config.max_position_embeddings,
        "global_attn_every_n_layers": config.global_every_n_layers,
        "local_attention": config.local_window,
        "global_rope_theta": config.global_rope_theta,
        "local_rope_theta": config.local_rope_theta,
        "norm_eps": config.norm_eps,
        "norm_bias": False,
        "attention_bias": False,
        "mlp_bias": False,
        "classifier_pooling": "cls",
        "pad_token_id": config.pad_token_id,
        "eos_token_id": config.eos_token_id,
        "bos_token_id": config.bos_token_id,
        "cls_token_id": config.bos_token_id,
        "sep_token_id": config.eos_token_id,
        "torch_dtype": "bfloat16",
    }


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer_files(tokenizer: Tokenizer, out_dir: Path, max_length: int) -> None:
    """`tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`."""
    tokenizer.save(str(out_dir / "tokenizer.json"))
    names = {
        "pad_token": "<pad>",
        "eos_token": "<eos>",
        "bos_token": "<bos>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
    }
    _write_json(out_dir / "special_tokens_map.json", names)
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            **names,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": max_length,
            "padding_side": "right",
            "cls_token": "<bos>",
            "sep_token": "<eos>",
        },
    )


def build_random_checkpoint(
    out_dir: str | Path, preset: str = "tiny", seed: int = 0, tokenizer_lines: Iterable[str] | None = None
) -> Path:
    """Write a random-weight checkpoint of the given preset to `out_dir` and return its path."""
    chosen = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    LOGGER.info("training a %d-token tokenizer", chosen.tokenizer_vocab)
    tokenizer = train_tokenizer(chosen.tokenizer_vocab, tokenizer_lines)
    write_tokenizer_files(tokenizer, out, chosen.encoder.max_position_embeddings)
    LOGGER.info("writing %s encoder weights", preset)
    save_file(random_encoder_state(chosen.encoder, generator), str(out / "model.safetensors"))
    torch.save(random_head_state(chosen.spec, generator), out / "classification_heads.pt")
    _write_json(out / "config.json", config_json(chosen.encoder))
    _write_json(
        out / "matryoshka_config.json",
        {
            "layer_indices": list(chosen.spec.layer_indices),
            "dim_indices": list(chosen.spec.dim_indices),
            "pooling_strategy": "cls",
            "hidden_size": chosen.encoder.hidden_size,
            "num_layers": chosen.encoder.num_layers,
            "has_final_norm": True,
            "model_name_or_path": f"demo-{preset}",
        },
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: `make-random-checkpoint OUT_DIR [--preset tiny|base] [--seed N]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    path = build_random_checkpoint(args.out_dir, args.preset, args.seed)
    LOGGER.info("random-weight checkpoint (its scores carry no meaning) written to %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
