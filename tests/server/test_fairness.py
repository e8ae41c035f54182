"""A long request does not hold the server: a short one sent meanwhile is answered by the other CPU instance,
and long requests whose clients gave up stop costing compute."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
from helpers import edited_repository, infer, rerank_inputs
from tritonclient.utils import InferenceServerException

from mmrerank.dev.background import start_server
from mmrerank_client import RerankClient, RerankTimeoutError

LONG = ["water " * 17_000] * 2  # two pairs of about 16K tokens
SHORT = ["river delta " * 50] * 10  # ten pairs of about 100 tokens


@pytest.mark.slow
def test_a_short_request_is_not_stuck_behind_a_long_one(server):
    url = f"grpc://{server.grpc_url}"
    with RerankClient(url, timeout=600) as client:
        client.rerank("river", SHORT, layer=6)
        started = time.monotonic()
        client.rerank("river", LONG, layer=6)
        long_alone = time.monotonic() - started
        assert long_alone > 2.0, "the long request must take long enough for the comparison to mean something"
        timings: dict[str, float] = {}

        def long_request() -> None:
            with RerankClient(url, timeout=600) as other:
                began = time.monotonic()
                other.rerank("river", LONG, layer=6)
                timings["long"] = time.monotonic() - began

        worker = threading.Thread(target=long_request)
        worker.start()
        time.sleep(0.5)
        began = time.monotonic()
        client.rerank("river", SHORT, layer=6)
        timings["short"] = time.monotonic() - began
        worker.join()
    # With one instance the short request would wait for most of the long one.
    assert timings["short"] < 0.3 * long_alone, (timings, long_alone)
    assert timings["long"] < 1.5 * long_alone, (timings, long_alone)


def abandoned_total(server) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("mmrerank_requests_abandoned_total{"))


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_abandoned_long_requests_stop_costing_compute(server, protocol):
    """Three long requests whose clients time out at 0.5 s must not hold up the short request after them."""
    url = f"{protocol}://{server.grpc_url if protocol == 'grpc' else server.http_url}"
    with RerankClient(url, timeout=600) as client:
        client.rerank("river", SHORT, layer=6)
        started = time.monotonic()
        client.rerank("river", LONG[:1], layer=6)
        one_long_alone = time.monotonic() - started
        before = abandoned_total(server)
        threads = [threading.Thread(target=give_up_on_a_long_request, args=(url,)) for _ in range(3)]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        for thread in threads:
            thread.join()
        began = time.monotonic()
        client.rerank("river", SHORT, layer=6)
        short = time.monotonic() - began
    # Without deadlines the short request waited for the abandoned work: 11-16 s here.
    assert short < 0.5 * one_long_alone, (short, one_long_alone)
    assert abandoned_total(server) - before >= 2, "the requests that reached the reranker were stopped there"


def give_up_on_a_long_request(url: str) -> None:
    with RerankClient(url, timeout=0.5) as impatient, pytest.raises(RerankTimeoutError):
        impatient.rerank("river", LONG, layer=6)


def test_a_request_past_its_deadline_is_answered_cancelled(server):
    with pytest.raises(InferenceServerException, match="passed its deadline") as error:
        infer("grpc", server.grpc_url, "river", LONG, layer=6, deadline_ms=200)
    assert str(error.value.status()) == "StatusCode.CANCELLED"


def give_up_on_a_raw_request(url: str) -> None:
    """A plain KServe gRPC client, no deadline_ms: it gives up after 0.3 s and leaves the work behind."""
    client = grpcclient.InferenceServerClient(url)
    try:
        with pytest.raises(InferenceServerException):
            client.infer(
                "rerank", rerank_inputs(grpcclient, "river", LONG), parameters={"layer": 6}, client_timeout=0.3
            )
    finally:
        client.close()


@pytest.mark.slow
def test_the_default_deadline_stops_work_that_raw_clients_left_behind(tiny_checkpoint, tmp_path):
    """Triton cancels an abandoned request only between ensemble steps; the default deadline stops the rest."""
    one_second = lambda text: re.sub(r'("default_deadline_ms" value: \{ string_value: ")\d+', r"\g<1>1000", text)  # noqa: E731
    repository = edited_repository(tmp_path / "model_repository", "tokenizer/configs/cpu.pbtxt", one_second)
    server = start_server(tiny_checkpoint, tmp_path / "server.log", "--model-repository", str(repository))
    try:
        with RerankClient(f"grpc://{server.grpc_url}", timeout=600) as client:
            client.rerank("river", SHORT, layer=6)
            started = time.monotonic()
            client.rerank("river", LONG, layer=6, timeout=600)
            long_alone = time.monotonic() - started
            assert long_alone > 2.0, "the long request must take long enough for the comparison to mean something"
            threads = [threading.Thread(target=give_up_on_a_raw_request, args=(server.grpc_url,)) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            began = time.monotonic()
            client.rerank("river", SHORT, layer=6)
            short = time.monotonic() - began
    finally:
        server.stop()
    # Without a default deadline the short request waited for all three (80.9 s on this CPU's demo).
    assert short < 0.5 * long_alone, (short, long_alone)
