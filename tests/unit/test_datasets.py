"""Data set readers and `rerank evaluate`'s pure parts: bad input named by file and line, settings, Pareto front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrerank.dev import facts, task_data
from mmrerank.training.data import read_examples, read_jsonl
from mmrerank_client import evaluate
from mmrerank_client.datasets import DatasetError, load_beir, read_run
from mmrerank_client.schema import Prefilter
from mmrerank_client.types import ServedModel

SERVED = ServedModel("demo", (1, 2, 4, 6), (8, 16, 32, 64, 128), 6, 128, 32768, 1000, 262144, ("layer", "dim"))


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    return task_data.write_beir(tmp_path / "beir", num_queries=6)


def test_the_generated_data_set_is_valid_beir(beir):
    dataset = load_beir(beir)
    assert len(dataset.queries) == 6 and len(dataset.corpus) == 18
    assert all(sum(judged.values()) == 1 for judged in dataset.qrels.values())


def test_held_out_places_never_appear_in_training():
    training = set(facts.place_names(400, 0))
    assert not training & set(facts.held_out_world().places)


@pytest.mark.parametrize(
    ("file", "line", "content", "message"),
    [
        ("corpus.jsonl", 2, "{not json\n", "not valid JSON"),
        ("corpus.jsonl", 1, '{"_id": "d0"}\n', "field 'text' must be a string"),
        ("queries.jsonl", 3, '["a list"]\n', "expected a JSON object"),
        ("qrels/test.tsv", 2, "q0\td0-0\n", "expected 3 tab-separated fields"),
        ("qrels/test.tsv", 2, "q0\td0-0\tvery\n", "is not an integer"),
    ],
)
def test_a_malformed_data_set_is_refused_naming_file_and_line(beir, file, line, content, message):
    path = beir / file
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[line - 1] = content
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        load_beir(beir)
    assert f"{path}:{line}: " in str(caught.value) and message in str(caught.value)


def test_dangling_references_are_named(beir):
    with (beir / "qrels" / "test.tsv").open("a", encoding="utf-8") as handle:
        handle.write("q0\tnowhere\t1\n")
    with pytest.raises(DatasetError, match="corpus-id 'nowhere' is not in corpus.jsonl"):
        load_beir(beir)


def test_evaluate_command_refuses_a_malformed_data_set_before_any_request(beir, capsys):
    (beir / "queries.jsonl").write_text('{"_id": "q0", "text": "fine"}\n{"_id": 7, "text": "x"}\n', encoding="utf-8")
    assert evaluate.main([str(beir), "--url", "http://127.0.0.1:9"]) == 2
    assert f"{beir / 'queries.jsonl'}:2: field '_id' must be a string" in capsys.readouterr().err


def test_run_files_keep_the_best_candidates_and_name_bad_lines(tmp_path):
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 a 1 0.5 bm25\nq1 Q0 b 2 0.9 bm25\nq1 Q0 c 3 0.1 bm25\n", encoding="utf-8")
    assert read_run(run, depth=2) == {"q1": ["b", "a"]}
    run.write_text("q1 Q0 a 1 0.5 bm25\nq1 Q0 b 2 high bm25\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"run.trec:2: score 'high' is not a number"):
        read_run(run, depth=2)


def test_exit_and_cascade_settings_are_parsed_and_checked_against_the_server():
    assert len(evaluate.parse_exits("all", SERVED)) == 20
    assert evaluate.parse_exits("2:64, 6:128", SERVED) == [evaluate.Setting(2, 64), evaluate.Setting(6, 128)]
    cascade = evaluate.parse_cascade("1:32:10>6:128", SERVED)
    assert cascade == evaluate.Setting(6, 128, Prefilter(1, 32, 10))
    assert cascade.label == "L1 D32 top 10 > L6 D128"
    for bad in ("3:64", "2:64:1", "two:64"):
        with pytest.raises(ValueError):
            evaluate.parse_exits(bad, SERVED)
    for bad in ("1:32>6:128", "6:32:10>1:128", "1:32:10", "1:32:0>6:128"):
        with pytest.raises(ValueError):
            evaluate.parse_cascade(bad, SERVED)


def test_pareto_front_keeps_only_undominated_points():
    points = [(100.0, 0.5), (50.0, 0.7), (40.0, 0.6), (10.0, 0.9), (100.0, 0.4)]
    assert evaluate.pareto_front(points) == [True, True, False, True, False]


def test_training_input_is_read_from_jsonl_or_beir(tmp_path, beir):
    data = task_data.write_training_jsonl(tmp_path / "train.jsonl", 5)
    examples = read_jsonl(data)
    assert len(examples) == 5 and all(len(example.negatives) == 4 for example in examples)
    (beir / "qrels" / "train.tsv").write_text((beir / "qrels" / "test.tsv").read_text(encoding="utf-8"))
    from_beir = read_examples(beir, "train", negatives=2, seed=0)
    assert len(from_beir) == 6 and all(len(example.negatives) == 2 for example in from_beir)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n" + json.dumps({"query": "q", "positive": "p",
                   "negatives": "not a list"}) + "\n", encoding="utf-8")  # fmt: skip
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: field 'negatives' must be a list of strings"):
        read_jsonl(bad)


def test_paired_bootstrap_brackets_the_mean_difference_and_shrinks_with_agreement():
    mean, low, high = evaluate.paired_bootstrap([0.1, -0.05, 0.2, 0.0, 0.05] * 12)
    assert mean == pytest.approx(0.06) and low < mean < high and high - low < 0.1
    assert evaluate.paired_bootstrap([0.0] * 40) == (0.0, 0.0, 0.0)


def _report(per_query: dict[str, float], first_stage: str = "BM25 (bm25s)") -> dict:
    return {
        "dataset": "beir", "split": "test", "first_stage": first_stage, "candidates_per_query": 6,
        "url": "grpc://127.0.0.1:8001", "checkpoint": "demo", "queries": len(per_query), "baselines": {},
        "recall_ceiling": 0.9,
        "settings": [{"label": "L6 D128", "per_query": {"nDCG@10": per_query}, "metrics": dict.fromkeys(
            evaluate.MEASURES, sum(per_query.values()) / len(per_query)), "docs_per_second": 1.0, "pareto": True}],
    }  # fmt: skip


def test_a_baseline_report_gives_each_setting_its_paired_difference(tmp_path):
    report, baseline = _report({"q1": 1.0, "q2": 0.5, "q3": 0.0}), _report({"q1": 1.0, "q2": 0.0, "q3": 0.0})
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(baseline))
    evaluate.compare_with_baseline(report, evaluate.load_baseline(path))
    versus = report["settings"][0]["versus_baseline"]
    assert versus["queries"] == 3 and versus["delta_nDCG@10"] == pytest.approx(0.5 / 3)
    table = evaluate.markdown_table(report)
    assert "ΔnDCG@10 vs baseline" in table and "(R@6 0.9000, the most any reranking reaches)" in table
    with pytest.raises(ValueError, match="not the same candidates"):
        evaluate.compare_with_baseline(_report({"q1": 1.0}, "run file other.trec"), baseline)
    path.write_text(json.dumps({"first_stage": "BM25 (bm25s)", "settings": [{"label": "L6 D128"}]}))
    with pytest.raises(ValueError, match="no per-query values"):
        evaluate.load_baseline(path)
    path.write_text("[]")
    with pytest.raises(ValueError, match="not an evaluation.json"):
        evaluate.load_baseline(path)
