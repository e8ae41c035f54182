"""The model card's long-document test: the answer at the START, MIDDLE or END of a long document.

For each held-out query, a document of about `--tokens` tokens of other places' facts holds the
answer sentence at one position; it competes with distractors that are the same document with a
near miss (the same fact of another place) where the answer was. The answer is found when its
document outscores every distractor; chance is 1 / (distractors + 1). Accuracy is reported per
position and exit, with the full context and with `--max-length` (512 by default: the cap that
makes the card's BGE comparison fail at the END).

    scripts/needle [--checkpoint DIR] [--tokens 1500] [--queries 20] [--max-length 512] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mmrerank.dev.facts import RELATIONS, held_out_world
from mmrerank.launch.launcher import DEFAULT_DEMO_CHECKPOINT
from mmrerank.model import Matryoshka2DReranker


@dataclass(frozen=True)
class NeedleCase:
    """A long document with the answer at `position`, beside distractors of the same length without it."""

    query: str
    position: str
    answer: str
    distractors: list[str]


NEEDLE_POSITIONS: tuple[str, ...] = ("START", "MIDDLE", "END")


def needle_cases(
    num_queries: int, sentences: int, distractors: int = 4, seed: int = 2, language: str = "en"
) -> list[NeedleCase]:
    """For each query, one haystack of `sentences` other facts per position, the answer put there.

    Distractors hold the same haystack with a near miss (the same fact of another place) where the
    answer was, so only the answer sentence tells them apart.
    """
    world = held_out_world(seed=seed)
    cases = []
    for _ in range(num_queries):
        fact = world.facts[world.rng.choice(world.places)][world.rng.choice(RELATIONS)]
        haystack = [world.random_fact(excluding=fact).statement(language) for _ in range(sentences)]
        misses = [world.facts[world.random_fact(excluding=fact).place][fact.relation] for _ in range(distractors)]
        for position in NEEDLE_POSITIONS:
            at = {"START": 0, "MIDDLE": sentences // 2, "END": sentences}[position]
            answer = " ".join([*haystack[:at], fact.statement(language), *haystack[at:]])
            others = [" ".join([*haystack[:at], miss.statement(language), *haystack[at:]]) for miss in misses]
            cases.append(NeedleCase(fact.question(language), position, answer, others))
    return cases


def sentences_for(model: Matryoshka2DReranker, tokens: int, language: str = "en") -> int:
    """How many haystack sentences make a document of about `tokens` tokens with this checkpoint's tokenizer."""
    sample = needle_cases(1, 100, distractors=0, language=language)[0].answer
    per_sentence = len(model.tokenizer.tokenizer.encode(sample, add_special_tokens=False).ids) / 101
    return max(1, round(tokens / per_sentence))


def found_rate(
    model: Matryoshka2DReranker, cases: Sequence[NeedleCase], layer: int, dim: int, max_length: int | None
) -> dict[str, float]:
    """Per position: the share of cases whose answer document scores above all its distractors."""
    pairs = [(case.query, text) for case in cases for text in (case.answer, *case.distractors)]
    scores = model.compute_score(pairs, layer_idx=layer, dim_idx=dim, normalize=False, max_length=max_length)
    found: dict[str, list[bool]] = {position: [] for position in NEEDLE_POSITIONS}
    offset = 0
    for case in cases:
        answer, *others = scores[offset : offset + 1 + len(case.distractors)]
        found[case.position].append(all(answer > other for other in others))
        offset += 1 + len(case.distractors)
    return {position: sum(hits) / len(hits) for position, hits in found.items() if hits}


def needle_report(
    model: Matryoshka2DReranker, queries: int, tokens: int, capped_length: int, distractors: int = 4
) -> dict[str, Any]:
    """Found rates for every exit layer at the widest head, with the full context and capped at `capped_length`."""
    sentences = sentences_for(model, tokens)
    cases = needle_cases(queries, sentences, distractors)
    answer_tokens = [len(row) for row in model.tokenizer.encode(cases[0].query, [cases[0].answer], 10**6).rows()]
    spec = model.reranker.spec
    rows = []
    for max_length in (None, capped_length):
        for layer in spec.layer_indices:
            rates = found_rate(model, cases, layer, spec.default_dim, max_length)
            rows.append({"layer": layer, "dim": spec.default_dim, "max_length": max_length, "found": rates})
    return {
        "checkpoint": model.reranker.spec.model_name,
        "queries": queries,
        "pair_tokens": answer_tokens[0],
        "distractors": distractors,
        "chance": 1 / (distractors + 1),
        "results": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a table: one row per exit and context, one column per position."""
    lines = [
        f"`{report['checkpoint']}`: {report['queries']} queries, pairs of about {report['pair_tokens']} tokens, "
        f"{report['distractors']} distractors each (chance {report['chance']:.0%}).",
        "",
        "| exit | context | " + " | ".join(NEEDLE_POSITIONS) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in NEEDLE_POSITIONS) + " |",
    ]
    for row in report["results"]:
        context = "full" if row["max_length"] is None else f"max_length={row['max_length']}"
        rates = " | ".join(f"{row['found'][position]:.0%}" for position in NEEDLE_POSITIONS)
        lines.append(f"| L{row['layer']} D{row['dim']} | {context} | {rates} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line of `scripts/needle`."""
    parser = argparse.ArgumentParser(prog="needle", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_DEMO_CHECKPOINT), help="directory or hub id")
    parser.add_argument("--tokens", type=int, default=1500, help="tokens per document, about")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=512, help="the capped context to compare with")
    parser.add_argument("--device", help="cuda, cpu, ... (default: the first GPU, else the CPU)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    model = Matryoshka2DReranker.from_pretrained(args.checkpoint, device=args.device)
    report = needle_report(model, args.queries, args.tokens, args.max_length)
    print(json.dumps(report, indent=2) if args.json else markdown(report), end="\n" if args.json else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
