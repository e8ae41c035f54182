"""The autoscaling signal on a real Prometheus (Debian's package) scraping two real launchers, with the shipped
recording rules, read with `promtool query` through the shipped KEDA queries.

Stand-ins for Kubernetes: static scrape targets labelled `namespace` and `pod`, as the PodMonitor's
discovery labels them, and the rule group evaluated every second instead of every 15 s.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from manifests import keda_queries, rule_groups
from servers import start_server

from mmrerank.dev.background import BackgroundServer, edited_repository, free_ports
from mmrerank.dev.corpus import rag_documents
from mmrerank_client import RerankClient, RerankError

pytestmark = pytest.mark.slow

BUSY, IDLE = "mmrerank-busy", "mmrerank-idle"


def binary(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: scripts/test installs Debian's prometheus package (as root, with apt)"
    return found


class Prometheus:
    """A Prometheus scraping `targets` (pod name -> launcher) every second, with the shipped rules."""

    def __init__(self, directory: Path, targets: dict[str, BackgroundServer]) -> None:
        (self.port,) = free_ports(1)
        groups = [{**group, "interval": "1s"} for group in rule_groups()]
        (directory / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
        scrape = [
            {"targets": [f"127.0.0.1:{server.metrics_port}"], "labels": {"namespace": "serving", "pod": pod}}
            for pod, server in targets.items()
        ]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(directory / "rules.yaml")],
            "scrape_configs": [{"job_name": "mmrerank", "static_configs": scrape}],
        }
        (directory / "prometheus.yaml").write_text(yaml.safe_dump(config))
        log = (directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [binary("prometheus"), f"--config.file={directory / 'prometheus.yaml'}",
             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def query(self, expression: str) -> dict[str, float]:
        """`promtool query instant`: the value per pod (the key "" for a result without a pod label)."""
        result = subprocess.run(
            [binary("promtool"), "query", "instant", "-o", "json", f"http://127.0.0.1:{self.port}", expression],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return {sample["metric"].get("pod", ""): float(sample["value"][1]) for sample in json.loads(result.stdout)}

    def wait_for(self, condition, what: str, timeout: float = 90) -> dict:
        """Poll until `condition()` returns something true; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                found = condition()
            except AssertionError:
                found = None  # Prometheus not up yet, or no data
            if found:
                return found
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def keda(prometheus: Prometheus, name: str) -> float:
    """The shipped KEDA trigger's query, as KEDA runs it (one value over all pods)."""
    query, _ = keda_queries()[name]
    return prometheus.query(query).get("", 0.0)


def small_queue(config: str) -> str:
    """At most 1 request in each instance's pool and 1 in the queue: many concurrent clients get refused."""
    config = re.sub(r'("max_requests_in_flight" value: \{ string_value: ")\d+', r"\g<1>1", config)
    return re.sub(r"max_queue_size: \d+", "max_queue_size: 1", config)


@contextlib.contextmanager
def clients_loading(url: str, count: int) -> Iterator[list[int]]:
    """`count` clients sending requests of 40 passages back to back while the block runs; yields their refusals."""
    stop, refused = threading.Event(), []

    def load(seed: int) -> None:
        documents = rag_documents(random.Random(seed), 40)
        with RerankClient(url, timeout=120) as client:
            while not stop.is_set():
                try:
                    client.rerank("river", documents)
                except RerankError:
                    refused.append(1)

    clients = [threading.Thread(target=load, args=(seed,)) for seed in range(count)]
    for client in clients:
        client.start()
    try:
        yield refused
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=120)


def test_the_signal_rises_for_the_loaded_replica_only_and_falls_back(tiny_checkpoint, tmp_path):
    repository = edited_repository(tmp_path / "model_repository", "reranker/configs/cpu.pbtxt", small_queue)
    in_flight_threshold = keda_queries()["requests-in-flight"][1]
    with contextlib.ExitStack() as running:  # everything started stops, whatever fails
        busy = start_server(tiny_checkpoint, tmp_path / "busy.log", "--model-repository", str(repository),
                            api_front=False)  # fmt: skip
        running.callback(busy.stop)
        idle = start_server(tiny_checkpoint, tmp_path / "idle.log", api_front=False)
        running.callback(idle.stop)
        prometheus = Prometheus(tmp_path, {BUSY: busy, IDLE: idle})
        running.callback(prometheus.stop)
        # No traffic yet: every recorded signal is 0 for both pods (not absent, not NaN).
        for record in ("mmrerank:reranker_wait_seconds_per_request:rate1m", "mmrerank:requests_in_flight",
                       "mmrerank:rejected_requests:rate1m"):  # fmt: skip
            values = prometheus.wait_for(lambda r=record: len(prometheus.query(r)) == 2 and prometheus.query(r), record)
            assert values == {BUSY: 0.0, IDLE: 0.0}, (record, values)
        with clients_loading(f"grpc://{busy.grpc_url}", count=16) as refused:
            # Counted wherever they wait: queued, in a pool, or held by an `execute` waiting for room in the pool.
            in_flight = prometheus.wait_for(
                lambda: (v := prometheus.query("mmrerank:requests_in_flight")) and v[BUSY] >= in_flight_threshold and v,
                "requests in flight over the threshold",
            )
            assert in_flight[IDLE] == 0
            rejected = prometheus.wait_for(
                lambda: (v := prometheus.query("mmrerank:rejected_requests:rate1m")) and v[BUSY] > 0 and v, "rejections"
            )
            assert rejected[IDLE] == 0 and refused, "the queue-full refusals the clients saw are counted"
            waits = prometheus.wait_for(
                lambda: (
                    (v := prometheus.query("mmrerank:reranker_wait_seconds_per_request:rate1m")) and v[BUSY] > 0 and v
                ),
                "wait per request",
            )
            assert waits[IDLE] == 0
            # What KEDA reads over both pods: above the shipped thresholds.
            wait_threshold, reject_threshold = (
                keda_queries()["wait-per-request"][1],
                keda_queries()["rejected-requests"][1],
            )
            prometheus.wait_for(
                lambda: keda(prometheus, "wait-per-request") > wait_threshold, "wait over its threshold"
            )
            prometheus.wait_for(
                lambda: keda(prometheus, "rejected-requests") > reject_threshold, "refusals over theirs"
            )
            prometheus.wait_for(lambda: keda(prometheus, "requests-in-flight") >= in_flight_threshold, "in flight")
        # After the load: back to 0 once the one-minute windows have passed.
        prometheus.wait_for(lambda: keda(prometheus, "requests-in-flight") == 0 or None, "in flight back to 0", 30)
        prometheus.wait_for(
            lambda: (keda(prometheus, "rejected-requests") == 0 and keda(prometheus, "wait-per-request") == 0) or None,
            "rates back to 0", 120,
        )  # fmt: skip
