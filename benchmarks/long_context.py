"""Long-context benchmark: this library's attention vs transformers' ModernBERT, one pair per process.

Each point runs in a fresh subprocess (so peak RSS is its own) under an address-space cap, and
reports seconds for one forward to the deepest exit and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys

from benchmarks.common import demo_checkpoint, markdown_table, pad_rows, progress, score_planned, seconds
from mmrerank.model import MatryoshkaReranker
from mmrerank.serving.planner import plan_micro_batches
from mmrerank.serving.reranker_step import RerankerStep

POINT = r"""
import json, resource, sys, time
import numpy as np, torch
path, engine, length, cap_gb = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
resource.setrlimit(resource.RLIMIT_AS, (int(cap_gb * 2**30), int(cap_gb * 2**30)))
ids = np.random.default_rng(0).integers(5, 2000, size=(1, length)); ids[0, 0] = 2
if engine == "mmrerank":
    from mmrerank.model import MatryoshkaReranker
    model = MatryoshkaReranker.from_pretrained(path, device="cpu")
    def run(batch):
        return model.logits(batch[0], [batch.shape[1]], model.spec.default_layer, [model.spec.default_dim])
else:
    from transformers import ModernBertConfig, ModernBertModel
    config = ModernBertConfig.from_pretrained(path); config.tie_last_hidden_states = False
    model = ModernBertModel.from_pretrained(path, config=config, dtype=torch.float32, attn_implementation="sdpa").eval()
    def run(batch):
        tensor = torch.as_tensor(batch)
        with torch.inference_mode():
            return model(input_ids=tensor, attention_mask=torch.ones_like(tensor)).last_hidden_state[:, 0]
run(ids[:, :16])  # warm-up: thread pools and allocator, not the measured length
start = time.perf_counter(); run(ids); elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def measure(path: str, engine: str, length: int, cap_gb: float, timeout: float) -> str:
    """'seconds s / peak GB' for one pair, or why it did not finish."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", POINT, path, engine, str(length), str(cap_gb)],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"over {timeout:.0f} s"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["failed"])[-1]
        return "out of memory" if "memory" in last.lower() or "alloc" in last.lower() else f"failed: {last[:60]}"
    point = json.loads(result.stdout.strip().splitlines()[-1])
    return f"{point['seconds']:.2f} s / {point['peak_gb']:.2f} GB"


def mixed_workload_rates(path: str, count: int) -> tuple[float, float]:
    """Pairs per second on a RAG-like mix (85% of 50-300 tokens, 15% of 1,000-4,000), both engines.

    Both run the planner's micro-batches; transformers gets them padded with an attention mask.
    """
    import numpy as np
    import torch
    from transformers import ModernBertConfig, ModernBertModel

    reranker = MatryoshkaReranker.from_pretrained(path, device="cpu")
    rng = random.Random(0)
    lengths = [rng.randint(50, 300) if rng.random() < 0.85 else rng.randint(1000, 4000) for _ in range(count)]
    rows = [np.array([2, *[rng.randint(5, 2000) for _ in range(n - 1)]]) for n in lengths]
    layer, dim = reranker.spec.default_layer, reranker.spec.default_dim
    step = RerankerStep(reranker, 8192)
    ours = count / seconds(lambda: score_planned(step, rows, layer, dim), 1, warm_up=False)

    config = ModernBertConfig.from_pretrained(path)
    config.tie_last_hidden_states = False
    model = ModernBertModel.from_pretrained(path, config=config, dtype=torch.float32, attn_implementation="sdpa").eval()

    def transformers_run() -> None:
        for batch in plan_micro_batches(lengths, [layer] * count, 8192):
            ids, batch_lengths = pad_rows([rows[i] for i in batch.indices])
            mask = (np.arange(ids.shape[1])[None, :] < batch_lengths[:, None]).astype(np.int64)
            with torch.inference_mode():
                model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask))

    theirs = count / seconds(transformers_run, 1, warm_up=False)
    return ours, theirs


def main(argv: list[str] | None = None) -> int:
    """Command line: `scripts/bench-long-context [--preset tiny|base] [--lengths 512,1500,...]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--lengths", default="", help="comma-separated (default: tiny up to 32768, base up to 4096)")
    parser.add_argument("--cap-gb", type=float, default=16.0, help="address-space cap per point")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per point")
    parser.add_argument("--mixed-pairs", type=int, default=40)
    args = parser.parse_args(argv)
    path = str(demo_checkpoint(args.preset))
    default_lengths = "512,1500,4096,16384,32768" if args.preset == "tiny" else "512,1500,4096"
    lengths = [int(n) for n in (args.lengths or default_lengths).split(",")]
    rows = []
    for length in lengths:
        progress(f"{length} tokens")
        ours = measure(path, "mmrerank", length, args.cap_gb, args.timeout)
        theirs = measure(path, "transformers", length, args.cap_gb, args.timeout)
        rows.append([length, ours, theirs])
    print(f"# Long context ({args.preset} preset, CPU, deepest exit, one pair per process, cap {args.cap_gb:.0f} GB)\n")
    print(markdown_table(["tokens", "mmrerank: time / peak RSS", "transformers ModernBERT (sdpa)"], rows))
    if args.mixed_pairs < 1:
        return 0
    progress("mixed-length workload")
    ours, theirs = mixed_workload_rates(path, args.mixed_pairs)
    print(f"\n## Mixed-length workload ({args.mixed_pairs} pairs, 85% of 50-300 tokens, 15% of 1,000-4,000)\n")
    rates = [["mmrerank", f"{ours:.2f}", f"{ours / theirs:.2f}x"], ["transformers (sdpa)", f"{theirs:.2f}", "1.00x"]]
    print(markdown_table(["engine", "pairs/s", "speed"], rates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
