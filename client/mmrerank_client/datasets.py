"""Read retrieval data sets: BEIR directories and TREC run files, refusing malformed input by file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """A data set file is missing or malformed; the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class BeirDataset:
    """A BEIR split: documents and queries by id, and graded relevance per query (`qrels[qid][docid]`)."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines of a UTF-8 file."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 ({error.reason})") from error


def json_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Numbered JSON objects of a JSONL file, each with the `required` string fields."""
    for number, line in _lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}:{number}: not valid JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object")
        for key in required:
            if not isinstance(row.get(key), str):
                raise DatasetError(f"{path}:{number}: field {key!r} must be a string")
        yield number, row


def read_texts(path: Path, with_title: bool) -> dict[str, str]:
    """`_id` -> text of a BEIR `corpus.jsonl` (title and text joined) or `queries.jsonl`."""
    texts: dict[str, str] = {}
    for number, row in json_rows(path, ("_id", "text")):
        if row["_id"] in texts:
            raise DatasetError(f"{path}:{number}: duplicate _id {row['_id']!r}")
        title = row.get("title") if with_title else None
        texts[row["_id"]] = f"{title} {row['text']}" if isinstance(title, str) and title else row["text"]
    return texts


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """A BEIR qrels TSV (`query-id`, `corpus-id`, `score`, with or without its header line)."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _lines(path):
        fields = line.rstrip("\n").split("\t")
        if number == 1 and fields[:2] == ["query-id", "corpus-id"]:
            continue
        if len(fields) != 3:
            raise DatasetError(f"{path}:{number}: expected 3 tab-separated fields (query-id, corpus-id, score)")
        try:
            qrels.setdefault(fields[0], {})[fields[1]] = int(fields[2])
        except ValueError as error:
            raise DatasetError(f"{path}:{number}: score {fields[2]!r} is not an integer") from error
    return qrels


def load_beir(directory: str | Path, split: str = "test") -> BeirDataset:
    """A BEIR directory (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`), with every reference checked."""
    root = Path(directory)
    corpus = read_texts(root / "corpus.jsonl", with_title=True)
    queries = read_texts(root / "queries.jsonl", with_title=False)
    qrels_path = root / "qrels" / f"{split}.tsv"
    qrels = read_qrels(qrels_path)
    for qid, judged in qrels.items():
        if qid not in queries:
            raise DatasetError(f"{qrels_path}: query-id {qid!r} is not in queries.jsonl")
        unknown = next((docid for docid in judged if docid not in corpus), None)
        if unknown is not None:
            raise DatasetError(f"{qrels_path}: corpus-id {unknown!r} is not in corpus.jsonl")
    if not qrels:
        raise DatasetError(f"{qrels_path}: no judgements")
    return BeirDataset(corpus, {qid: queries[qid] for qid in qrels}, qrels)


def read_run(path: str | Path, depth: int) -> dict[str, list[str]]:
    """A TREC run (`qid Q0 docid rank score tag`): each query's best `depth` documents, by score."""
    scored: dict[str, list[tuple[float, str]]] = {}
    source = Path(path)
    for number, line in _lines(source):
        fields = line.split()
        if len(fields) != 6:
            raise DatasetError(f"{source}:{number}: expected 6 fields (qid Q0 docid rank score tag)")
        try:
            score = float(fields[4])
        except ValueError as error:
            raise DatasetError(f"{source}:{number}: score {fields[4]!r} is not a number") from error
        scored.setdefault(fields[0], []).append((score, fields[2]))
    return {qid: [docid for _, docid in sorted(rows, key=lambda row: -row[0])[:depth]] for qid, rows in scored.items()}
