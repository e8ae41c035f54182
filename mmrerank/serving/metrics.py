"""Custom Prometheus metrics of the Python models, beside Triton's own, on the metrics endpoint.

The Triton models pass in `triton_python_backend_utils`; tests pass a stand-in with the same
`MetricFamily` API. Families are created on first use and label sets cached. Every update is
best effort: a failing metrics backend never changes an answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

COUNTERS: dict[str, str] = {
    "mmrerank_pairs_scored_total": "(query, document) pairs scored, by exit layer and head width",
    "mmrerank_tokens_scored_total": "Tokens scored, padding excluded, by exit layer and head width",
    "mmrerank_tokens_processed_total": "Tokens the encoder processed, padding included",
    "mmrerank_micro_batches_total": "Encoder micro-batches run, by exit layer",
    "mmrerank_documents_truncated_total": "Documents cut to fit max_length",
    "mmrerank_requests_rejected_total": "Requests refused as invalid, by step and reason",
    "mmrerank_requests_cancelled_total": "Requests skipped because Triton marked them cancelled while queued",
    "mmrerank_requests_abandoned_total": "Requests stopped past their deadline or a shutdown's grace, by reason",
}

GAUGES: dict[str, str] = {
    # The launcher reads it at shutdown: with nothing executing or queued, open HTTP connections are idle.
    "mmrerank_requests_executing": "Requests a model instance is working on right now, by step and instance",
}

HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {
    "mmrerank_request_wait_seconds": (
        "Seconds from a request reaching a reranker instance to its first micro-batch, by size class",
        (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    ),
}

# Size classes of a request by its tokens (all pairs, special tokens included), upper bounds.
SIZE_CLASSES: tuple[tuple[str, float], ...] = (("small", 4096), ("medium", 32768), ("large", float("inf")))


def size_class(tokens: int) -> str:
    """The size class label of a request of `tokens` tokens: small (<= 4,096), medium (<= 32,768) or large."""
    return next(name for name, bound in SIZE_CLASSES if tokens <= bound)


class Metrics:
    """Counters named in COUNTERS (incremented), gauges in GAUGES (set) and histograms in HISTOGRAMS (observed)."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._families: dict[str, Any] = {}
        self._metrics: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}

    def add(self, name: str, value: float, **labels: object) -> None:
        """Increase counter `name` by `value` for this label set; best effort, like every call here."""
        if value > 0:
            with suppress(Exception):
                self._metric(name, labels).increment(float(value))

    def set(self, name: str, value: float, **labels: object) -> None:
        """Set gauge `name` to `value` for this label set."""
        self._metric(name, labels).set(float(value))

    def observe(self, name: str, value: float, **labels: object) -> None:
        """Record `value` in histogram `name` for this label set; best effort."""
        with suppress(Exception):
            self._metric(name, labels).observe(float(value))

    def declare(self, name: str, **labels: object) -> None:
        """Create the series of `name` for this label set now, so it reads 0 before anything happens; best effort."""
        with suppress(Exception):
            self._metric(name, labels)

    def report_executing(self, count: int, **labels: object) -> None:
        """Set `mmrerank_requests_executing`; best effort: a failing metrics backend never fails requests."""
        with suppress(Exception):
            self.set("mmrerank_requests_executing", count, **labels)

    @contextmanager
    def executing(self, count: int, **labels: object) -> Iterator[None]:
        """Report `count` requests executing while the block runs, then 0."""
        self.report_executing(count, **labels)
        try:
            yield
        finally:
            self.report_executing(0, **labels)

    def _metric(self, name: str, labels: dict[str, object]) -> Any:
        family_class = self._backend.MetricFamily
        if name not in self._families:
            if name in HISTOGRAMS:
                kind, description = family_class.HISTOGRAM, HISTOGRAMS[name][0]
            elif name in GAUGES:
                kind, description = family_class.GAUGE, GAUGES[name]
            else:
                kind, description = family_class.COUNTER, COUNTERS[name]
            self._families[name] = family_class(name=name, description=description, kind=kind)
        key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
        if key not in self._metrics:
            extra = {"buckets": list(HISTOGRAMS[name][1])} if name in HISTOGRAMS else {}
            self._metrics[key] = self._families[name].Metric(labels=dict(key[1]), **extra)
        return self._metrics[key]
