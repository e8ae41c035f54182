"""Build the trained demo checkpoint: the tiny preset trained on the invented-places retrieval task.

It is a demo, not the published model: 6 layers of hidden size 128 that learnt, in minutes on a
CPU, which sentence states the asked fact of the asked place, in five languages, in documents of up
to a few thousand tokens. Its scores mean something, so exits and cascades can be compared on it.

    scripts/train-demo OUT_DIR [--short-examples N] [--long-examples N] [--seed N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmrerank.dev import facts, task_data
from mmrerank.dev.random_checkpoint import build_random_checkpoint
from mmrerank.training.data import read_jsonl
from mmrerank.training.trainer import Trainer, TrainingSettings

LOGGER = logging.getLogger(__name__)
DEMO_NAME = "demo-tiny-trained"
# A curriculum: first short documents (the model learns to match the asked fact of the asked place),
# then documents of up to 2,048 tokens (it learns to find that sentence among hundreds of others).
# From scratch, a tiny model wants far larger steps than the published model's fine-tuning rate.
SHORT_PHASE = TrainingSettings(batch_size=16, learning_rate=1e-3, negatives=4, max_length=512, max_batch_tokens=16384)
LONG_PHASE = TrainingSettings(batch_size=16, learning_rate=5e-4, negatives=4, max_length=2048, max_batch_tokens=16384)


def fresh_start(out_dir: Path, seed: int) -> Path:
    """The tiny preset with a tokenizer learnt from the task's text and small random weights (std 0.02)."""
    start = build_random_checkpoint(out_dir, "tiny", seed, tokenizer_lines=facts.text_lines(seed))
    generator = torch.Generator().manual_seed(seed)
    state = {
        name: (
            torch.ones_like(t, dtype=torch.float32)
            if "norm" in name
            else torch.randn(t.shape, generator=generator) * 0.02
        )
        for name, t in load_file(str(start / "model.safetensors")).items()
    }
    save_file({name: t.to(torch.bfloat16).contiguous() for name, t in state.items()}, str(start / "model.safetensors"))
    return start


def build_trained_demo(
    out_dir: str | Path, short_examples: int = 12800, long_examples: int = 1920, seed: int = 0
) -> Path:
    """Write the trained demo to `out_dir`: a fresh tiny checkpoint trained on generated queries, short then long."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="demo-") as scratch:
        work = Path(scratch)
        start = fresh_start(work / "start", seed)
        short = read_jsonl(
            task_data.write_training_jsonl(work / "short.jsonl", short_examples, seed, long_documents=False)
        )
        learnt = Trainer(start, SHORT_PHASE, torch.device("cpu")).fit(short, work / "short", DEMO_NAME)
        long = read_jsonl(task_data.write_training_jsonl(work / "long.jsonl", long_examples, seed + 1))
        return Trainer(learnt, LONG_PHASE, torch.device("cpu")).fit(long, out_dir, DEMO_NAME)


def main(argv: list[str] | None = None) -> int:
    """Command line: `train-demo OUT_DIR [--short-examples N] [--long-examples N] [--seed N]`."""
    parser = argparse.ArgumentParser(prog="train-demo", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--short-examples", type=int, default=12800, help="queries of the short-document phase")
    parser.add_argument("--long-examples", type=int, default=1920, help="queries of the long-document phase")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    path = build_trained_demo(args.out_dir, args.short_examples, args.long_examples, args.seed)
    LOGGER.info("trained demo checkpoint written to %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
