"""Scale-out with the real components: three launchers behind the shipped Envoy configuration.

Kubernetes itself cannot run here; `gateway.Gateway` stands in for its endpoints controller (a file
of ready pods that Envoy reads), and a test takes a replica out the way Kubernetes does at a rolling
update or a scale-in: the endpoint goes, then SIGTERM after the preStop pause.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cohere
import pytest
from gateway import Gateway
from helpers import scrape
from servers import start_server

from mmrerank.dev.background import BackgroundServer
from mmrerank_client import RerankClient

pytestmark = pytest.mark.slow

REQUESTS_PER_CLIENT = 600
DOCUMENTS = ["The river reaches the sea at the delta.", "A recipe for bread."]
LOCUSTFILE = Path(__file__).parents[1] / "load" / "locustfile.py"
PRESTOP_SECONDS = 4  # the pause between the endpoint's removal and SIGTERM (the manifests: 15 s)


@pytest.fixture(scope="module")
def replicas(tiny_checkpoint, tmp_path_factory):
    """Three launchers, as three pods of the Deployment; one after the other, so each has bound its ports
    before the next picks free ones (started at once, two picked the same port and one failed to start)."""
    servers: list[BackgroundServer] = []
    try:
        for slot in range(3):
            servers.append(start_server(tiny_checkpoint, tmp_path_factory.mktemp(f"replica-{slot}") / "server.log"))
        yield servers
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.stop()


@pytest.fixture(scope="module")
def gateway(replicas, tmp_path_factory):
    running = Gateway(tmp_path_factory.mktemp("envoy"))
    running.route_to(replicas)
    running.wait_for_healthy(3)
    yield running
    running.stop()


def served(replica: BackgroundServer) -> float:
    """Requests the replica's `rerank` model answered, from its own Triton metrics."""
    samples = scrape(replica)
    return sum(value for (name, labels), value in samples.items()
               if name == "nv_inference_request_success" and ("model", "rerank") in labels)  # fmt: skip


def spread(replicas: list[BackgroundServer], send) -> list[float]:
    """Each replica's share of REQUESTS_PER_CLIENT requests made by `send`, as counted by the replicas."""
    before = [served(replica) for replica in replicas]
    for _ in range(REQUESTS_PER_CLIENT):
        send()
    return [(served(replica) - was) / REQUESTS_PER_CLIENT for replica, was in zip(replicas, before, strict=True)]


@pytest.mark.parametrize("client", ["pooled HTTP", "gRPC channel", "Cohere SDK"])
def test_every_replica_serves_a_fair_share_of_one_clients_requests(replicas, gateway, client):
    if client == "Cohere SDK":
        sdk = cohere.ClientV2(api_key="unused", base_url=f"http://127.0.0.1:{gateway.api_port}")
        shares = spread(replicas, lambda: sdk.rerank(model="mmrerank", query="river", documents=DOCUMENTS))
    else:
        scheme, port = ("http", gateway.http_port) if client == "pooled HTTP" else ("grpc", gateway.grpc_port)
        with RerankClient(f"{scheme}://127.0.0.1:{port}") as typed:  # one connection, kept
            shares = spread(replicas, lambda: typed.rerank("river", DOCUMENTS))
    # Behind a plain ClusterIP Service, one kept connection sends every request to one pod: [1, 0, 0].
    assert all(abs(share - 1 / 3) <= 0.25 / 3 for share in shares), shares
    assert sum(shares) == pytest.approx(1.0)


def locust_under_load(gateway: Gateway, prefix: Path, seconds: int) -> subprocess.Popen:
    """The project's locustfile through Envoy (typed HTTP and gRPC users, rerank API users), short scenarios."""
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", f"http://127.0.0.1:{gateway.http_port}", "--grpc-host", f"grpc://127.0.0.1:{gateway.grpc_port}",
        "--api-host", f"http://127.0.0.1:{gateway.api_port}", "--tags", "short", "api",
        "-u", "6", "-r", "6", "-t", f"{seconds}s", "--stop-timeout", "30", "--csv", str(prefix), "--csv-full-history",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def failures_over_time(prefix: Path) -> list[tuple[float, int, int]]:
    """(timestamp, requests, failures) of every second of the run, all request kinds together."""
    with open(f"{prefix}_stats_history.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    return [(float(row["Timestamp"]), int(row["Total Request Count"]), int(row["Total Failure Count"])) for row in rows]


def finish(run: subprocess.Popen) -> str:
    """Locust's summary once it exits; the per-second history the assertions read is written as it runs.

    In one run of four, Locust had recorded its whole 25 s (1,275 requests, 0 failed) and then did
    not exit within 120 s; it is stopped then, and the test says so as a warning.
    """
    try:
        output, _ = run.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        run.kill()
        output, _ = run.communicate()
        warnings.warn(
            "Locust did not exit within 120 s of its run's end; its per-second history is judged", stacklevel=2
        )
    return output[-3000:]


def test_a_replica_drained_as_kubernetes_does_fails_no_request(replicas, gateway, tmp_path):
    prefix = tmp_path / "drain"
    run = locust_under_load(gateway, prefix, seconds=25)
    time.sleep(8)
    leaving, staying = replicas[1], [replicas[0], replicas[2]]
    gateway.route_to(staying)  # the endpoints controller drops the terminating pod
    time.sleep(PRESTOP_SECONDS)  # preStop
    assert leaving.stop() == 0  # SIGTERM; the launcher drains and exits 0
    output = finish(run)
    history = failures_over_time(prefix)
    assert history[-1][1] > 100, output
    assert history[-1][2] == 0, output


def test_a_replica_killed_outright_fails_at_most_its_requests_in_flight(replicas, gateway, tmp_path):
    prefix = tmp_path / "kill"
    victim = replicas[2]
    run = locust_under_load(gateway, prefix, seconds=25)
    time.sleep(8)
    killed_at = time.time()
    os.killpg(victim.process.pid, signal.SIGKILL)  # the node died: no preStop, no SIGTERM
    victim.process.wait()
    output = finish(run)
    history = failures_over_time(prefix)
    assert history[-1][1] > 100, output
    # Envoy retries what was in flight on the dead pod (reset, refused connections) on a live one:
    # at most the six users' requests in flight can fail, and none once the health check has seen it.
    assert history[-1][2] <= 6, output
    settled = [failures for stamp, _, failures in history if stamp >= killed_at + 6]
    assert settled and settled[0] == history[-1][2], (history, output)
