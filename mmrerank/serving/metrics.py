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


class Metrics:
    """Counters named in COUNTERS (incremented) and gauges named in GAUGES (set), with labels."""

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
        if name not in self._families:
            family_class = self._backend.MetricFamily
            kind, description = (
                (family_class.GAUGE, GAUGES[name]) if name in GAUGES else (family_class.COUNTER, COUNTERS[name])
            )
            self._families[name] = family_class(name=name, description=description, kind=kind)
        key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
        if key not in self._metrics:
            self._metrics[key] = self._families[name].Metric(labels=dict(key[1]))
        return self._metrics[key]
