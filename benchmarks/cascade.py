"""The cascade against a plain request, side by side: 100 documents of ~256 tokens, layer 3 keeping 10, then layer 22.

In-process through the reranker's serving step (the code the server runs), then through a real
tritonserver on the same checkpoint; the figures are ratios measured in one run.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from benchmarks.common import demo_checkpoint, documents_of_tokens, markdown_table, progress, seconds
from mmrerank.dev.background import start_server
from mmrerank.layout import CheckpointLayout
from mmrerank.model import MatryoshkaReranker
from mmrerank.serving.contract import parse_options
from mmrerank.serving.pair_tokenizer import PairTokenizer
from mmrerank.serving.reranker_step import RerankerStep, ScoreRequest
from mmrerank_client import RerankClient


def main(argv: list[str] | None = None) -> int:
    """Command line: `scripts/bench-cascade [--preset base|tiny] [--documents N] [--tokens T] [--keep K]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "base"), default="base")
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--keep", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-server", action="store_true", help="in-process only")
    args = parser.parse_args(argv)
    checkpoint = demo_checkpoint(args.preset)
    layout = CheckpointLayout.open(checkpoint)
    cheap, deep = min(layout.spec.layer_indices), max(layout.spec.layer_indices)
    rng = random.Random(0)
    query = "where does the river meet the sea?"
    documents = [documents_of_tokens(rng, args.tokens) for _ in range(args.documents)]
    plain = {"layer": deep}
    cascade = {"layer": deep, "prefilter_layer": cheap, "prefilter_top_k": args.keep}

    encoded = PairTokenizer.from_file(layout.tokenizer_file).encode(query, documents, max_length=32768)
    step = RerankerStep(MatryoshkaReranker.from_pretrained(layout, device="cpu"), max_batch_tokens=8192)

    def in_process(parameters: dict[str, int]) -> None:
        options = parse_options(parameters, layout.spec, 32768)
        step.score([ScoreRequest(encoded.rows(), options)])

    progress(f"in-process: {args.documents} documents of ~{int(encoded.lengths.mean())} tokens at layer {deep}")
    plain_local = seconds(lambda: in_process(plain), args.repeats)
    progress(f"in-process: cascade, layer {cheap} keeping {args.keep}, then layer {deep}")
    cascade_local = seconds(lambda: in_process(cascade), args.repeats)
    rows = [
        ["in-process", f"{plain_local:.2f}", f"{cascade_local:.2f}", f"{plain_local / cascade_local:.2f}x"],
    ]
    if not args.no_server:
        with tempfile.TemporaryDirectory() as scratch:
            progress("starting tritonserver")
            server = start_server(checkpoint, Path(scratch) / "server.log", ready_timeout=600)
            try:
                with RerankClient(f"grpc://{server.grpc_url}", timeout=3600) as client:
                    progress("served: plain")
                    plain_served = seconds(lambda: client.rerank(query, documents, **plain), args.repeats)
                    progress("served: cascade")
                    cascade_served = seconds(lambda: client.rerank(query, documents, **cascade), args.repeats)
            finally:
                server.stop()
        speedup = f"{plain_served / cascade_served:.2f}x"
        rows.append(["served (gRPC)", f"{plain_served:.2f}", f"{cascade_served:.2f}", speedup])
    expected = args.documents * deep / (args.documents * cheap + args.keep * (deep - cheap))
    print(f"# Cascade vs plain ({args.preset} preset, CPU, fp32)\n")
    print(
        f"1 query, {args.documents} documents of ~{int(encoded.lengths.mean())} tokens; plain: all at layer {deep}; "
        f"cascade: all at layer {cheap}, the best {args.keep} continued to layer {deep} "
        f"(layer arithmetic: {expected:.2f}x).\n"
    )
    print(markdown_table(["path", "plain (s)", "cascade (s)", "speed-up"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
