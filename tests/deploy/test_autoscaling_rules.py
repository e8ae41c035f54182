"""The shipped recording rules under `promtool test rules` (Debian's prometheus package): with no
traffic every signal is 0, not absent or NaN; under traffic each one says what its comment says."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from manifests import keda_queries, rule_groups

POD = 'namespace="serving", pod="mmrerank-0"'


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: scripts/test installs Debian's prometheus package (as root, with apt)"
    return found


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f', {key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{POD}{extra}}}", "values": values}


# One pod, sampled every 15 s for 4 minutes: idle for the first 2, then 9 requests/s answered and 1
# refused, 0.25 s/s of waiting in Triton's queue and as much in the instances' pools, 5 in flight,
# and 0.5 invalid requests/s that must not count as refusals. While idle, the invalid-request counter
# does not exist yet (the models create it on the first refusal).
INPUT = [
    series("nv_inference_request_success", "0x8 0+135x8", model="reranker", version="1"),
    series("nv_inference_request_failure", "0x8 0+15x8", model="reranker", version="1", reason="REJECTED"),
    series("nv_inference_request_failure", "0x16", model="reranker", version="1", reason="CANCELED"),
    series("nv_inference_request_success", "0x16", model="rerank", version="1"),
    # Triton 2.51 counts each failed ensemble request twice: 1 refused and 0.5 invalid per second.
    series("nv_inference_request_failure", "0x8 0+45x8", model="rerank", version="1", reason="OTHER"),
    series("mmrerank_requests_rejected_total", "_x8 0+7.5x8", step="tokenizer", reason="parameter_value"),
    series("nv_inference_queue_duration_us", "0x8 0+3750000x8", model="reranker", version="1"),
    series("mmrerank_request_wait_seconds_sum", "0x8 0+3.75x8", size="small"),
    series("nv_inference_pending_request_count", "0x8 2x8", model="reranker", version="1"),
    series("nv_inference_pending_request_count", "0x16", model="tokenizer", version="1"),
    series("mmrerank_requests_executing", "0x8 3x8", step="reranker", instance="reranker_0_0"),
    series("mmrerank_requests_executing", "0x16", step="tokenizer", instance="tokenizer_0_0"),
]


def expect(name: str, value: float) -> dict:
    return {"expr": name, "exp_samples": [{"labels": f"{name}{{{POD}}}", "value": value}]}


def test_the_recorded_signals_are_zero_without_traffic_and_follow_it(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups()}))
    idle = [expect(name, 0) for name in (
        "mmrerank:reranker_requests:rate1m", "mmrerank:reranker_wait_seconds:rate1m",
        "mmrerank:reranker_wait_seconds_per_request:rate1m", "mmrerank:requests_in_flight",
        "mmrerank:rejected_requests:rate1m",
    )]  # fmt: skip
    busy = [
        expect("mmrerank:reranker_requests:rate1m", 10),  # 9 answered + 1 refused per second
        expect("mmrerank:reranker_wait_seconds:rate1m", 0.5),
        expect("mmrerank:reranker_wait_seconds_per_request:rate1m", 0.05),  # over all 10 requests/s
        expect("mmrerank:requests_in_flight", 5),
        expect("mmrerank:rejected_requests:rate1m", 1),
    ]
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": INPUT,
            "promql_expr_test": [{**case, "eval_time": "1m"} for case in idle]
            + [{**case, "eval_time": "3m30s"} for case in busy],
        }],
    }  # fmt: skip
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_scaler_reads_the_recorded_signals():
    recorded = {rule["record"] for group in rule_groups() for rule in group["rules"]}
    queries = keda_queries()
    assert set(queries) == {"wait-per-request", "requests-in-flight", "rejected-requests"}
    for name, (query, threshold) in queries.items():
        assert threshold > 0, name
        assert any(series in query for series in recorded), (name, query)


@pytest.mark.parametrize("name", ["wait-per-request", "requests-in-flight", "rejected-requests"])
def test_every_scaler_query_parses(name):
    query, _ = keda_queries()[name]
    as_rule_file = yaml.safe_dump({"groups": [{"name": "q", "rules": [{"record": "q", "expr": query}]}]})
    result = subprocess.run(
        [promtool(), "check", "rules", "/dev/stdin"], capture_output=True, text=True, input=as_rule_file
    )
    assert result.returncode == 0, result.stdout + result.stderr
