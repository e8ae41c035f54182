"""Training input: a JSONL of `{query, positive, negatives}` or a BEIR directory, refused by file and line if bad."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from mmrerank_client.datasets import DatasetError, json_rows, load_beir


@dataclass(frozen=True)
class TrainingExample:
    """A query, one relevant document and the documents it must outscore."""

    query: str
    positive: str
    negatives: tuple[str, ...]


def read_jsonl(path: str | Path) -> list[TrainingExample]:
    """One example per line: `{"query": str, "positive": str, "negatives": [str, ...]}`."""
    source = Path(path)
    examples = []
    for number, row in json_rows(source, ("query", "positive")):
        negatives = row.get("negatives", [])
        if not isinstance(negatives, list) or not all(isinstance(text, str) for text in negatives):
            raise DatasetError(f"{source}:{number}: field 'negatives' must be a list of strings")
        examples.append(TrainingExample(row["query"], row["positive"], tuple(negatives)))
    if not examples:
        raise DatasetError(f"{source}: no examples")
    return examples


def read_beir(directory: str | Path, split: str, negatives: int, seed: int) -> list[TrainingExample]:
    """One example per judged-relevant (query, document) of a BEIR split, negatives drawn from the unjudged corpus."""
    dataset = load_beir(directory, split)
    rng = random.Random(seed)
    doc_ids = sorted(dataset.corpus)
    examples = []
    for qid, judged in sorted(dataset.qrels.items()):
        wanted = min(negatives, len(doc_ids) - len(judged))
        for docid in sorted(docid for docid, grade in judged.items() if grade > 0):
            drawn: list[str] = []
            while len(drawn) < wanted:
                candidate = rng.choice(doc_ids)
                if candidate not in judged and candidate not in drawn:
                    drawn.append(candidate)
            examples.append(
                TrainingExample(dataset.queries[qid], dataset.corpus[docid], tuple(dataset.corpus[d] for d in drawn))
            )
    return examples


def read_examples(path: str | Path, split: str = "train", negatives: int = 3, seed: int = 0) -> list[TrainingExample]:
    """A BEIR directory or a JSONL file, whichever `path` is."""
    return read_beir(path, split, negatives, seed) if Path(path).is_dir() else read_jsonl(path)
