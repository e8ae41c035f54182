"""`rerank "query" doc1 doc2 ... [--file docs.txt]`: rank documents against a served reranker by hand.

`rerank evaluate DATASET_DIR ...` measures every exit and cascade on a data set (see `evaluate`).

The API key, when the server requires one, comes from $MMRERANK_API_KEY (never the command line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict

from mmrerank_client.errors import RerankError
from mmrerank_client.sync import RerankClient
from mmrerank_client.types import RerankResponse, ServedModel


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="rerank", description="Rank documents against a query on the served reranker."
    )
    parser.add_argument("query", nargs="?", help="the query (not needed with --describe)")
    parser.add_argument("documents", nargs="*", help="documents to rank (or --file)")
    parser.add_argument("--describe", action="store_true", help="print the served checkpoint's exits and caps")
    parser.add_argument("--file", help="a file with one document per line ('-' reads stdin)")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="http://host:port or grpc://host:port")
    parser.add_argument("--model", default="rerank")
    parser.add_argument("--top-n", type=int)
    parser.add_argument("--layer", type=int, help="exit layer (default: the deepest)")
    parser.add_argument("--dim", type=int, help="head width (default: the widest)")
    parser.add_argument("--raw", action="store_true", help="raw logits instead of sigmoid scores")
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--no-truncate", action="store_true", help="reject over-long pairs instead of cutting them")
    parser.add_argument("--prefilter-layer", type=int, help="cascade: score all at this exit layer first")
    parser.add_argument("--prefilter-dim", type=int, help="cascade: head width of the prefilter (default: --dim)")
    parser.add_argument("--prefilter-top-k", type=int, help="cascade: how many documents continue to --layer")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def read_documents(args: argparse.Namespace) -> list[str]:
    """Documents from the arguments, then from --file, one per non-empty line."""
    documents = list(args.documents)
    if args.file:
        handle = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        with handle:
            documents += [line.rstrip("\n") for line in handle if line.strip()]
    return documents


def table(response: RerankResponse, width: int = 70) -> str:
    """A readable ranking: rank, score, original index, tokens, and the start of each document."""
    lines = [f"{'rank':>4}  {'score':>9}  {'index':>5}  {'tokens':>6}  {'exit':>4}  document"]
    for rank, result in enumerate(response.results, start=1):
        text = (result.document or "").replace("\n", " ")
        text = text if len(text) <= width else text[: width - 1] + "…"
        cut = " (truncated)" if result.truncated else ""
        lines.append(
            f"{rank:>4}  {result.score:>9.4f}  {result.index:>5}  {result.num_tokens:>6}  {result.exit_layer:>4}  "
            f"{text}{cut}"
        )
    return "\n".join(lines)


def describe(served: ServedModel, as_json: bool) -> str:
    """The served checkpoint's facts, as JSON or as lines of text."""
    facts = asdict(served)
    if as_json:
        return json.dumps(facts, ensure_ascii=False, indent=2)
    return "\n".join(
        f"{name:<20} {', '.join(map(str, value)) if isinstance(value, tuple) else value}"
        for name, value in facts.items()
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rerank` console script."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["evaluate"]:
        from mmrerank_client import evaluate

        return evaluate.main(arguments[1:])
    args = parse_args(arguments)
    documents = read_documents(args)
    if not args.describe and (args.query is None or not documents):
        print("rerank: give a query and documents (as arguments or with --file), or --describe", file=sys.stderr)
        return 2
    try:
        api_key = os.environ.get("MMRERANK_API_KEY")
        with RerankClient(args.url, model=args.model, timeout=args.timeout, api_key=api_key) as client:
            if args.describe:
                print(describe(client.describe(), args.json))
                return 0
            response = client.rerank(
                args.query,
                documents,
                top_n=args.top_n,
                layer=args.layer,
                dim=args.dim,
                normalize=not args.raw,
                return_documents=True,
                max_length=args.max_length,
                truncate=not args.no_truncate,
                prefilter_layer=args.prefilter_layer,
                prefilter_dim=args.prefilter_dim,
                prefilter_top_k=args.prefilter_top_k,
            )
    except RerankError as error:
        print(f"rerank: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {"layer": response.layer, "dim": response.dim, "results": [asdict(r) for r in response.results]},
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        print(table(response))
    return 0


if __name__ == "__main__":
    sys.exit(main())
