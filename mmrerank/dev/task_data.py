"""The invented-places world as files: the trainer's JSONL examples and a BEIR data set over held-out places."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from mmrerank.dev.facts import LANGUAGES, RELATIONS, World, held_out_world, place_names


def training_examples(
    count: int, seed: int = 0, long_documents: bool = True, num_places: int = 400
) -> Iterator[dict[str, object]]:
    """`count` trainer examples (`{query, positive, negatives}`) over the training places, languages in turn.

    The negatives: the same fact of another place, another fact of the same place, both, and an
    unrelated document. Without `long_documents`, no document holds more than four facts.
    """
    world = World(place_names(num_places, seed), seed)
    for index in range(count):
        language = LANGUAGES[index % len(LANGUAGES)]
        fact = world.facts[world.rng.choice(world.places)][world.rng.choice(RELATIONS)]
        same_relation, same_place = world.near_misses(fact)
        length = world.filler_length(long_documents)
        negatives = [
            world.document(language, [same_relation], length, fact),
            world.document(language, [same_place], world.filler_length(long_documents), fact),
            world.document(language, [same_relation, same_place], world.filler_length(long_documents), fact),
            world.document(language, [world.random_fact(excluding=fact)], world.filler_length(long_documents), fact),
        ]
        positive = world.document(language, [fact], length, fact)
        yield {"query": fact.question(language), "positive": positive, "negatives": negatives}


def write_training_jsonl(path: str | Path, count: int, seed: int = 0, long_documents: bool = True) -> Path:
    """`training_examples` as the trainer's JSONL input."""
    write_jsonl(Path(path), list(training_examples(count, seed, long_documents)))
    return Path(path)


def write_beir(out_dir: str | Path, num_queries: int = 100, seed: int = 1) -> Path:
    """A BEIR-format data set (`corpus.jsonl`, `queries.jsonl`, `qrels/test.tsv`) over held-out places.

    Each query has one relevant document; the corpus also holds, per query, a document with the
    same fact of another place and one with another fact of the same place, so a lexical first
    stage retrieves them too.
    """
    world = held_out_world(seed=seed)
    out = Path(out_dir)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    corpus: list[dict[str, object]] = []
    queries: list[dict[str, object]] = []
    qrels: list[str] = []
    for index in range(num_queries):
        language = LANGUAGES[index % len(LANGUAGES)]
        fact = world.facts[world.rng.choice(world.places)][world.rng.choice(RELATIONS)]
        documents = [world.document(language, [fact], world.filler_length(), fact)]
        documents += [world.document(language, [miss], world.filler_length(), fact) for miss in world.near_misses(fact)]
        for number, text in enumerate(documents):
            corpus.append({"_id": f"d{index}-{number}", "title": "", "text": text})
        queries.append({"_id": f"q{index}", "text": fact.question(language), "language": language})
        qrels.append(f"q{index}\td{index}-0\t1")
    write_jsonl(out / "corpus.jsonl", corpus)
    write_jsonl(out / "queries.jsonl", queries)
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n", encoding="utf-8")
    return out


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    """One JSON object per line, UTF-8, non-ASCII kept as is."""
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
