"""`rerank evaluate DATASET_DIR`: what each exit and cascade of a served reranker gives in quality and speed.

Candidates come from a TREC run file, or from BM25 (`bm25s`) over the corpus; every setting reranks
them through the server. Metrics are ir-measures' own (nDCG@10, RR@10, R@10; R@depth once, as the
ceiling); throughput is the documents reranked per second through the server at the chosen concurrency. It writes
`evaluation.json`, `evaluation.md` and `evaluation.png` (quality against throughput, the Pareto front
marked) to the output directory.

    rerank evaluate DATASET_DIR [--url URL] [--split test] [--run RUN_FILE] [--exits all | L:D,...]
                    [--cascade L:D:K>L:D ...] [--output OUT_DIR] [--depth 100] [--concurrency 4]
                    [--baseline EARLIER/evaluation.json]

With `--baseline` (an earlier report on the same data and candidates, e.g. another server's or
another precision's), each setting also gets its nDCG@10 difference from the baseline's same setting,
with a 95 % paired bootstrap interval over the queries.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmrerank_client.datasets import BeirDataset, DatasetError, load_beir, read_run
from mmrerank_client.errors import RerankError
from mmrerank_client.schema import Prefilter
from mmrerank_client.sync import RerankClient
from mmrerank_client.types import RerankResponse, ServedModel

# What reranking can change: the order of the first ten. Recall at the full depth it cannot (the
# candidates are the same), so it is reported once, as the first stage's ceiling.
MEASURES: tuple[str, ...] = ("nDCG@10", "RR@10", "R@10")
EXTRA = "pip install 'mmrerank[evaluate]' (bm25s, ir-measures, matplotlib, tqdm)"
Run = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Setting:
    """One way to rerank: an exit, optionally behind a cascade's cheap stage."""

    layer: int
    dim: int
    cascade: Prefilter | None = None

    @property
    def label(self) -> str:
        """`L6 D128`, or `L1 D32 top 10 > L6 D128` for a cascade."""
        deep = f"L{self.layer} D{self.dim}"
        if self.cascade is None:
            return deep
        return f"L{self.cascade.layer} D{self.cascade.dim} top {self.cascade.top_k} > {deep}"


def _integers(text: str, count: int, what: str) -> list[int]:
    parts = text.split(":")
    if len(parts) != count or not all(part.strip().isdigit() for part in parts):
        raise ValueError(f"{what} {text!r} must be {count} integers separated by ':'")
    return [int(part) for part in parts]


def parse_exits(text: str, served: ServedModel) -> list[Setting]:
    """`all` (every layer x width the server has) or `L:D,L:D,...`, each checked against the server."""
    if text.strip() == "all":
        return [Setting(layer, dim) for layer in served.layer_indices for dim in served.dim_indices]
    pairs = [_integers(item, 2, "exit") for item in text.split(",") if item.strip()]
    settings = [Setting(layer, dim) for layer, dim in pairs]
    for setting in settings:
        _check_exit(setting.layer, setting.dim, served)
    return settings


def parse_cascade(text: str, served: ServedModel) -> Setting:
    """`L:D:K>L:D`: prefilter layer, width and top-k, then the deep exit."""
    cheap, arrow, deep = text.partition(">")
    if not arrow:
        raise ValueError(f"cascade {text!r} must read L:D:K>L:D (prefilter layer:dim:top_k > layer:dim)")
    layer, dim, top_k = _integers(cheap, 3, "cascade prefilter")
    deep_layer, deep_dim = _integers(deep, 2, "cascade exit")
    setting = Setting(deep_layer, deep_dim, Prefilter(layer, dim, top_k))
    _check_exit(layer, dim, served)
    _check_exit(setting.layer, setting.dim, served)
    if layer >= setting.layer or top_k < 1:
        raise ValueError(f"cascade {text!r}: the prefilter layer must be shallower and top_k at least 1")
    return setting


def _check_exit(layer: int, dim: int, served: ServedModel) -> None:
    if layer not in served.layer_indices or dim not in served.dim_indices:
        raise ValueError(
            f"exit {layer}:{dim} is not served: layers {list(served.layer_indices)}, widths {list(served.dim_indices)}"
        )


def bm25_candidates(dataset: BeirDataset, depth: int) -> dict[str, list[str]]:
    """Each query's best `depth` documents by BM25 over the corpus (no stemming or stop words: any language)."""
    import bm25s

    doc_ids = list(dataset.corpus)
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(list(dataset.corpus.values()), stopwords=None, show_progress=False), show_progress=False
    )
    qids = list(dataset.queries)
    tokens = bm25s.tokenize([dataset.queries[qid] for qid in qids], stopwords=None, show_progress=False)
    found, _ = retriever.retrieve(tokens, k=min(depth, len(doc_ids)), show_progress=False, n_threads=1)
    return {qid: [doc_ids[int(index)] for index in row] for qid, row in zip(qids, found, strict=True)}


def measure(qrels: dict[str, dict[str, int]], run: Run) -> dict[str, float]:
    """MEASURES by ir-measures, averaged over the queries of `run`."""
    import ir_measures

    values = ir_measures.calc_aggregate([ir_measures.parse_measure(name) for name in MEASURES], qrels, run)
    return {str(name): float(value) for name, value in values.items()}


def recall_ceiling(qrels: dict[str, dict[str, int]], run: Run, depth: int) -> float:
    """R@depth of the candidates: the share of relevant documents any reranking of them can reach."""
    import ir_measures

    return float(ir_measures.calc_aggregate([ir_measures.R @ depth], qrels, run)[ir_measures.R @ depth])


def ndcg_per_query(qrels: dict[str, dict[str, int]], run: Run) -> dict[str, float]:
    """nDCG@10 of each query of `run` (what a paired comparison resamples)."""
    import ir_measures

    return {str(m.query_id): float(m.value) for m in ir_measures.iter_calc([ir_measures.nDCG @ 10], qrels, run)}


def paired_bootstrap(differences: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-query `differences` and its 95 % bootstrap interval (queries resampled with replacement)."""
    rng = random.Random(seed)
    count = len(differences)
    means = sorted(sum(rng.choices(differences, k=count)) / count for _ in range(resamples))
    return sum(differences) / count, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def load_baseline(path: Path) -> dict[str, Any]:
    """An earlier `evaluation.json`, checked before any request is sent."""
    try:
        baseline: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the baseline {path}: {error}") from error
    if not isinstance(baseline, dict) or "first_stage" not in baseline:
        raise ValueError(f"{path} is not an evaluation.json written by rerank evaluate")
    if not all("per_query" in entry for entry in baseline.get("settings", [])):
        raise ValueError(f"{path} has no per-query values: write it again with this version of rerank evaluate")
    return baseline


def compare_with_baseline(report: dict[str, Any], baseline: dict[str, Any]) -> None:
    """Give each setting of `report` that `baseline` also has its nDCG@10 difference, paired by query."""
    for key in ("dataset", "split", "first_stage", "candidates_per_query"):
        if report[key] != baseline[key]:
            raise ValueError(f"the baseline's {key} is {baseline[key]!r}, not {report[key]!r}: not the same candidates")
    earlier = {entry["label"]: entry["per_query"]["nDCG@10"] for entry in baseline["settings"]}
    for entry in report["settings"]:
        if entry["label"] not in earlier:
            continue
        now = entry["per_query"]["nDCG@10"]
        shared = sorted(set(now) & set(earlier[entry["label"]]))
        delta, low, high = paired_bootstrap([now[qid] - earlier[entry["label"]][qid] for qid in shared])
        entry["versus_baseline"] = {"delta_nDCG@10": delta, "low": low, "high": high, "queries": len(shared)}
    report["baseline"] = {"url": baseline["url"], "checkpoint": baseline["checkpoint"]}


def run_of_response(candidates: Sequence[str], response: RerankResponse, by_rank: bool) -> dict[str, float]:
    """Document id -> score: the served scores, or for a cascade scores that keep the served order."""
    count = len(response.results)
    return {
        candidates[result.index]: float(count - rank) if by_rank else result.score
        for rank, result in enumerate(response.results)
    }


def random_baseline(
    candidates: dict[str, list[str]], qrels: dict[str, dict[str, int]], draws: int = 20
) -> dict[str, float]:
    """MEASURES of the candidates in random order, averaged over `draws` seeded shuffles."""
    rng = random.Random(0)
    totals = dict.fromkeys(MEASURES, 0.0)
    for _ in range(draws):
        run = {qid: {docid: rng.random() for docid in docids} for qid, docids in candidates.items()}
        for name, value in measure(qrels, run).items():
            totals[name] += value / draws
    return totals


def rerank_setting(
    client: RerankClient,
    dataset: BeirDataset,
    candidates: dict[str, list[str]],
    setting: Setting,
    concurrency: int,
    advance: Callable[[], None],
) -> tuple[Run, float]:
    """Every query's candidates reranked through the server at `setting`; the run and documents per second."""
    cascade = setting.cascade

    def one(qid: str) -> tuple[str, dict[str, float]]:
        docids = candidates[qid]
        response = client.rerank(
            dataset.queries[qid],
            [dataset.corpus[docid] for docid in docids],
            layer=setting.layer,
            dim=setting.dim,
            prefilter_layer=cascade.layer if cascade else None,
            prefilter_dim=cascade.dim if cascade else None,
            prefilter_top_k=cascade.top_k if cascade else None,
        )
        advance()
        return qid, run_of_response(docids, response, by_rank=cascade is not None)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="evaluate") as pool:
        run = dict(pool.map(one, [qid for qid in dataset.queries if candidates.get(qid)]))
    seconds = time.perf_counter() - started
    return run, sum(len(candidates[qid]) for qid in run) / seconds


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (throughput, quality) points: whether no other point is at least as good on both and better on one."""
    return [
        not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        for i, (x, y) in enumerate(points)
    ]


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table, best nDCG@10 first, Pareto-optimal settings marked."""
    compared = "baseline" in report
    delta_header, delta_rule = (" ΔnDCG@10 vs baseline (95 % CI) |", " ---: |") if compared else ("", "")
    lines = [
        f"Data set `{report['dataset']}` ({report['split']}), {report['queries']} queries, "
        f"{report['candidates_per_query']} candidates per query from {report['first_stage']} "
        f"(R@{report['candidates_per_query']} {report['recall_ceiling']:.4f}, the most any reranking reaches); "
        f"served checkpoint `{report['checkpoint']}`."
        + (f" Baseline: `{report['baseline']['checkpoint']}` at {report['baseline']['url']}." if compared else ""),
        "",
        "| setting | " + " | ".join(MEASURES) + " | docs/s | Pareto |" + delta_header,
        "| --- | " + " | ".join("---:" for _ in MEASURES) + " | ---: | :---: |" + delta_rule,
    ]
    for entry in sorted(report["settings"], key=lambda e: -e["metrics"]["nDCG@10"]):
        values = " | ".join(f"{entry['metrics'][name]:.4f}" for name in MEASURES)
        mark = "★" if entry["pareto"] else ""
        versus = entry.get("versus_baseline")
        delta = f" {versus['delta_nDCG@10']:+.4f} [{versus['low']:+.4f}, {versus['high']:+.4f}] |" if versus else " |"
        lines.append(f"| {entry['label']} | {values} | {entry['docs_per_second']:.1f} | {mark} |" + delta * compared)
    for name, metrics in report["baselines"].items():
        values = " | ".join(f"{metrics[measure_name]:.4f}" for measure_name in MEASURES)
        lines.append(f"| baseline: {name.replace('_', ' ')} | {values} | | |" + " |" * compared)
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """nDCG@10 against documents per second, one point per setting, the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for entry in report["settings"]:
        marker = "^" if entry["cascade"] else "o"
        colour = "tab:red" if entry["pareto"] else "tab:blue"
        axes.scatter(entry["docs_per_second"], entry["metrics"]["nDCG@10"], marker=marker, color=colour, zorder=3)
        axes.annotate(
            entry["label"],
            (entry["docs_per_second"], entry["metrics"]["nDCG@10"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    front = sorted((e["docs_per_second"], e["metrics"]["nDCG@10"]) for e in report["settings"] if e["pareto"])
    if front:
        axes.plot(*zip(*front, strict=True), color="tab:red", linewidth=1, label="Pareto front", zorder=2)
    for (name, metrics), style in zip(report["baselines"].items(), (":", "--"), strict=False):
        axes.axhline(
            metrics["nDCG@10"],
            color="grey",
            linestyle=style,
            linewidth=1,
            label=f"{name.replace('_', ' ')} ({metrics['nDCG@10']:.3f})",
        )
    axes.set_xscale("log")
    axes.set_xlabel("documents reranked per second (through the server)")
    axes.set_ylabel("nDCG@10")
    axes.set_title(f"{report['checkpoint']} on {report['dataset']}: exits (o) and cascades (^)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evaluation the arguments describe and return the report (also written to --output)."""
    from tqdm import tqdm

    dataset = load_beir(args.dataset_dir, args.split)
    if args.run:
        candidates, first_stage = read_run(args.run, args.depth), f"run file {Path(args.run).name}"
    else:
        candidates, first_stage = bm25_candidates(dataset, args.depth), "BM25 (bm25s)"
    candidates = {qid: docids for qid, docids in candidates.items() if qid in dataset.queries}
    unknown = next((d for docids in candidates.values() for d in docids if d not in dataset.corpus), None)
    if unknown is not None:
        raise DatasetError(f"{args.run}: document {unknown!r} is not in corpus.jsonl")
    api_key = os.environ.get("MMRERANK_API_KEY")
    with RerankClient(args.url, timeout=args.timeout, api_key=api_key) as client:
        served = client.describe()
        settings = parse_exits(args.exits, served) + [parse_cascade(text, served) for text in args.cascade]
        queries = sum(1 for qid in dataset.queries if candidates.get(qid))
        entries: list[dict[str, Any]] = []
        with tqdm(total=len(settings) * queries, unit="query", file=sys.stderr) as progress:
            for setting in settings:
                progress.set_description(setting.label)
                run, docs_per_second = rerank_setting(
                    client, dataset, candidates, setting, args.concurrency, lambda: progress.update()
                )
                entries.append(
                    {
                        "label": setting.label,
                        "layer": setting.layer,
                        "dim": setting.dim,
                        "cascade": asdict(setting.cascade) if setting.cascade else None,
                        "metrics": measure(dataset.qrels, run),
                        "per_query": {"nDCG@10": ndcg_per_query(dataset.qrels, run)},
                        "docs_per_second": docs_per_second,
                    }
                )
    front = pareto_front([(e["docs_per_second"], e["metrics"]["nDCG@10"]) for e in entries])
    for entry, optimal in zip(entries, front, strict=True):
        entry["pareto"] = optimal
    first_stage_run = {qid: {d: float(-rank) for rank, d in enumerate(docids)} for qid, docids in candidates.items()}
    return {
        "dataset": Path(args.dataset_dir).name,
        "split": args.split,
        "queries": queries,
        "candidates_per_query": args.depth,
        "first_stage": first_stage,
        "checkpoint": served.checkpoint,
        "url": args.url,
        "concurrency": args.concurrency,
        "measures": list(MEASURES),
        "recall_ceiling": recall_ceiling(dataset.qrels, first_stage_run, args.depth),
        "baselines": {
            "first_stage": measure(dataset.qrels, first_stage_run),
            "random": random_baseline(candidates, dataset.qrels),
        },
        "settings": entries,
    }


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    """`evaluation.json`, `evaluation.md` and `evaluation.png` in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "evaluation.md").write_text(markdown_table(report), encoding="utf-8")
    plot(report, out_dir / "evaluation.png")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options of `rerank evaluate`."""
    parser = argparse.ArgumentParser(prog="rerank evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", help="a BEIR directory: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="http://host:port or grpc://host:port")
    parser.add_argument("--split", default="test")
    parser.add_argument("--run", help="a first-stage TREC run file (default: BM25 over the corpus)")
    parser.add_argument("--exits", default="all", help="'all' or layer:dim pairs, e.g. 2:64,6:128")
    parser.add_argument(
        "--cascade", action="append", default=[], metavar="L:D:K>L:D", help="a cascade, e.g. 1:32:10>6:128 (repeatable)"
    )
    parser.add_argument("--output", default="evaluation", help="directory for evaluation.json/.md/.png")
    parser.add_argument("--depth", type=int, default=100, help="candidates per query from the first stage")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument(
        "--baseline", type=Path, help="an earlier evaluation.json on the same candidates: per-setting ΔnDCG@10"
    )
    args = parser.parse_args(argv)
    if args.depth < 1 or args.concurrency < 1:
        parser.error("--depth and --concurrency must be at least 1")
    return args


def main(argv: Sequence[str]) -> int:
    """`rerank evaluate ...`: 0 on success, 1 when the server fails, 2 for bad input."""
    args = parse_args(argv)
    try:
        baseline = load_baseline(args.baseline) if args.baseline else None
        report = evaluate(args)
        if baseline is not None:
            compare_with_baseline(report, baseline)
        write_report(report, Path(args.output))
    except ImportError as error:
        print(f"rerank evaluate: {error.name or error} is missing: {EXTRA}", file=sys.stderr)
        return 2
    except (DatasetError, ValueError) as error:
        print(f"rerank evaluate: {error}", file=sys.stderr)
        return 2
    except RerankError as error:
        print(f"rerank evaluate: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(markdown_table(report), end="")
    print(f"written to {Path(args.output) / 'evaluation.json'} (and .md, .png)")
    return 0
