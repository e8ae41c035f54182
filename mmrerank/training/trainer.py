"""Train or fine-tune a checkpoint in the published layout with the card's loss.

The loss is binary cross-entropy over every (exit layer, head width) head, weighted as the published
model was trained (exits ∝ 1/n, …, 1/2, 1 from shallowest to deepest; widths ∝ 1, 1/2, … from widest
to narrowest) and averaged. AdamW with linear warm-up and decay; bf16 autocast on a GPU, fp32 on the
CPU. Each step takes `batch_size` queries with their positive and negatives, packed into
micro-batches of at most `max_batch_tokens` tokens whose gradients accumulate, so 32K-token pairs
fit. The output is a checkpoint directory the server loads as is.

    scripts/train --checkpoint DIR --data train.jsonl|BEIR_DIR --output OUT [--epochs 1] [--lr 2e-5] ...
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from mmrerank.layout import CONFIG_FILE, MATRYOSHKA_FILE, TOKENIZER_FILE, CheckpointLayout, MatryoshkaSpec
from mmrerank.model.encoder import Encoder
from mmrerank.model.heads import MatryoshkaHeads
from mmrerank.model.kernels import PackedRows, choose_kernel
from mmrerank.model.reranker import default_device
from mmrerank.model.weights import load_checkpoint
from mmrerank.serving.pair_tokenizer import PairTokenizer
from mmrerank.serving.planner import plan_micro_batches
from mmrerank.training.data import TrainingExample, read_examples
from mmrerank_client.datasets import DatasetError

LOGGER = logging.getLogger(__name__)
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class TrainingSettings:
    """How to train; the defaults are the published model's (batch 32 as 16 x 2, lr 2e-5, one epoch)."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    negatives: int = 3
    max_length: int = 32768
    max_batch_tokens: int = 65536
    seed: int = 0
    attention: str = "padded"


def head_weights(spec: MatryoshkaSpec) -> dict[tuple[int, int], float]:
    """Each head's share of the loss, summing to 1: deeper exits and wider heads weigh more."""
    layers = sorted(spec.layer_indices)
    dims = sorted(spec.dim_indices, reverse=True)
    raw = {
        (layer, dim): (1.0 / (len(layers) - i)) * (1.0 / (j + 1))
        for i, layer in enumerate(layers)
        for j, dim in enumerate(dims)
    }
    total = sum(raw.values())
    return {head: weight / total for head, weight in raw.items()}


class Trainer:
    """An encoder and its heads in training mode, with the pair tokenizer of their checkpoint."""

    def __init__(self, checkpoint: str | Path, settings: TrainingSettings, device: torch.device | None = None) -> None:
        self.settings = settings
        self.device = device or default_device()
        self.layout = CheckpointLayout.open(checkpoint)
        weights = load_checkpoint(self.layout)
        self.spec = weights.spec
        self.autocast = self.device.type == "cuda"  # bf16 compute on a GPU, fp32 master weights everywhere
        kernel = choose_kernel(settings.attention, self.device, torch.bfloat16 if self.autocast else torch.float32)
        self.encoder = Encoder(weights.encoder_config, kernel)
        self.encoder.load_state_dict({name: t.float() for name, t in weights.encoder_state.items()}, strict=True)
        self.heads = MatryoshkaHeads(self.spec)
        self.heads.load_state_dict(weights.head_state, strict=True)
        self.encoder.to(self.device).train()
        self.heads.to(self.device).train()
        self.tokenizer = PairTokenizer.from_file(self.layout.tokenizer_file)
        self.weights = head_weights(self.spec)

    def pairs_of(self, examples: list[TrainingExample]) -> tuple[list[np.ndarray], list[float]]:
        """Token rows and labels (1 relevant, 0 not) of a step's examples."""
        rows: list[np.ndarray] = []
        labels: list[float] = []
        for example in examples:
            documents = [example.positive, *example.negatives[: self.settings.negatives]]
            rows += self.tokenizer.encode(example.query, documents, self.settings.max_length).rows()
            labels += [1.0] + [0.0] * (len(documents) - 1)
        return rows, labels

    def micro_batches(self, rows: list[np.ndarray]) -> Iterator[list[int]]:
        """Row indices in groups of at most `max_batch_tokens` tokens when padded, cut by the serving planner.

        Padded to the group's longest row, so every attention kernel keeps to it; a longer row goes alone.
        """
        lengths = [len(row) for row in rows]
        for batch in plan_micro_batches(lengths, [0] * len(rows), self.settings.max_batch_tokens):
            yield list(batch.indices)

    def loss(self, rows: list[np.ndarray], labels: torch.Tensor) -> torch.Tensor:
        """The weighted BCE over every head for one micro-batch, summed over its pairs."""
        ids = torch.as_tensor(np.concatenate(rows).astype(np.int64), device=self.device)
        host_lengths = tuple(len(row) for row in rows)
        rows_info = PackedRows.from_lengths(torch.as_tensor(host_lengths, device=self.device), host_lengths)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            states = self.encoder.exit_states(ids, rows_info, list(self.spec.layer_indices))
        total = torch.zeros((), device=self.device)
        for (layer, dim), weight in self.weights.items():
            logits = self.heads.logits(states[layer], layer, dim)
            total = total + weight * F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        return total

    def fit(self, examples: list[TrainingExample], output: str | Path, name: str | None = None) -> Path:
        """Train on `examples` for the configured epochs, writing the checkpoint after each; returns its directory."""
        settings = self.settings
        rng = random.Random(settings.seed)
        torch.manual_seed(settings.seed)
        parameters = [p for module in (self.encoder, self.heads) for p in module.parameters()]
        optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
        total_steps = steps_per_epoch * settings.epochs
        warmup = max(1, int(total_steps * settings.warmup_fraction))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / (total_steps - warmup + 1))),
        )
        progress = tqdm(total=total_steps, desc="training", unit="step", file=sys.stderr)
        for epoch in range(settings.epochs):
            order = list(examples)
            rng.shuffle(order)
            for start in range(0, len(order), settings.batch_size):
                rows, labels = self.pairs_of(order[start : start + settings.batch_size])
                targets = torch.tensor(labels, device=self.device)
                step_loss = 0.0
                for group in self.micro_batches(rows):
                    loss = self.loss([rows[i] for i in group], targets[group]) / len(rows)
                    loss.backward()
                    step_loss += loss.item()
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                progress.set_postfix(epoch=epoch + 1, loss=f"{step_loss:.4f}")
                progress.update()
            self.save(output, name)
        progress.close()
        return Path(output)

    def save(self, output: str | Path, name: str | None = None) -> Path:
        """Write the published layout: bf16 `model.safetensors`, fp32 `classification_heads.pt`, configs, tokenizer."""
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        encoder_state = {
            k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in self.encoder.state_dict().items()
        }
        save_file(encoder_state, str(out / "model.safetensors"))
        head_state = {k: v.detach().cpu().float().contiguous() for k, v in self.heads.state_dict().items()}
        heads_file = out / self.layout.heads_file.name  # the source's format, so no stale heads file is left beside
        if heads_file.suffix == ".safetensors":
            save_file(head_state, str(heads_file))
        else:
            torch.save(head_state, heads_file)
        source = self.layout.directory
        if source.resolve() != out.resolve():
            for file in (CONFIG_FILE, *TOKENIZER_FILES):
                if (source / file).is_file():
                    shutil.copyfile(source / file, out / file)
        matryoshka = json.loads((source / MATRYOSHKA_FILE).read_text(encoding="utf-8"))
        if name:
            matryoshka["model_name_or_path"] = name
        (out / MATRYOSHKA_FILE).write_text(
            json.dumps(matryoshka, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    defaults = TrainingSettings()
    parser = argparse.ArgumentParser(prog="train", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the checkpoint to start from (directory or hub id)")
    parser.add_argument("--data", required=True, help="a JSONL of {query, positive, negatives} or a BEIR directory")
    parser.add_argument("--output", required=True, help="where to write the trained checkpoint")
    parser.add_argument("--split", default="train", help="the BEIR qrels split to train on")
    parser.add_argument("--name", help="model_name_or_path written into matryoshka_config.json")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="queries per optimizer step")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--negatives", type=int, default=defaults.negatives, help="negatives per query")
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens per pair")
    parser.add_argument("--max-batch-tokens", type=int, default=defaults.max_batch_tokens)
    parser.add_argument("--attention", default=defaults.attention, help="attention kernel (padded runs everywhere)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: the first GPU, else the CPU)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `scripts/train`."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    settings = TrainingSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        negatives=args.negatives,
        max_length=args.max_length,
        max_batch_tokens=args.max_batch_tokens,
        seed=args.seed,
        attention=args.attention,
    )
    try:
        examples = read_examples(args.data, args.split, args.negatives, args.seed)
    except DatasetError as error:
        print(f"train: {error}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    trainer = Trainer(args.checkpoint, settings, torch.device(args.device) if args.device else None)
    LOGGER.info("training on %d examples, %s, %d heads", len(examples), trainer.device, len(trainer.weights))
    out = trainer.fit(examples, args.output, args.name)
    LOGGER.info("checkpoint written to %s (serve it with scripts/serve --checkpoint %s)", out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
