"""Custom Prometheus metrics of the Python models, beside Triton's own, on the metrics endpoint.

The Triton models pass in `triton_python_backend_utils`; tests pass a stand-in with the same
`MetricFamily` API. Families are created on first use and label sets cached.
"""

from __future__ import annotations

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


class Metrics:
    """Counters named in COUNTERS, incremented with labels."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._families: dict[str, Any] = {}
        self._metrics: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}

    def add(self, name: str, value: float, **labels: object) -> None:
        """Increase counter `name` by `value` for this label set."""
        if value <= 0:
            return
        if name not in self._families:
            family_class = self._backend.MetricFamily
            self._families[name] = family_class(name=name, description=COUNTERS[name], kind=family_class.COUNTER)
        key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
        if key not in self._metrics:
            self._metrics[key] = self._families[name].Metric(labels=dict(key[1]))
        self._metrics[key].increment(float(value))
