"""No request waits for another's whole batch: a short request sent while heavy requests outnumber the reranker
instances starts within about one micro-batch, and long requests whose clients gave up stop costing compute."""

from __future__ import annotations

import random
import re
import threading
import time
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
from helpers import infer, rerank_inputs
from servers import start_server
from tritonclient.utils import InferenceServerException

from mmrerank.dev.background import REPO_ROOT, BackgroundServer, edited_repository
from mmrerank.dev.corpus import rag_documents, text
from mmrerank.launch.configs import set_parameters
from mmrerank_client import RerankClient, RerankTimeoutError

LONG = ["water " * 17_000] * 2  # two pairs of about 16K tokens
SHORT = ["river delta " * 50] * 10  # ten pairs of about 100 tokens
DEADLINE_MS = 1000  # the default deadline of the server that tests it
CPU_CONFIG = REPO_ROOT / "model_repository" / "reranker" / "configs" / "cpu.pbtxt"


def one_micro_batch(pair_tokenizer) -> list[str]:
    """Documents whose pairs fill one CPU micro-batch: as many ~450-token pairs as its budget holds."""
    budget = int(re.search(r'"max_batch_tokens" value: \{ string_value: "(\d+)"', CPU_CONFIG.read_text())[1])
    documents = [text(random.Random(seed), 280) for seed in range(64)]
    longest = int(max(pair_tokenizer.encode("river", documents, 32768).lengths))
    assert budget // longest >= 2, "the micro-batch holds several pairs"
    return documents[: budget // longest]


def executing(server: BackgroundServer) -> float:
    """Requests the reranker instances hold right now, from their gauge."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    prefix = 'mmrerank_requests_executing{instance="reranker'
    return sum(float(line.split()[-1]) for line in lines if line.startswith(prefix))


def short_wait_under_heavy_load(server: BackgroundServer, pair_tokenizer, heavies: int) -> dict[str, float]:
    """Seconds of a short request alone, of one full micro-batch alone, of one heavy request alone, and of the
    short request sent while `heavies` heavy requests are in the reranker instances."""
    url = f"grpc://{server.grpc_url}"
    heavy = [rag_documents(random.Random(seed), 200) for seed in range(heavies)]  # ~43K tokens each
    timings: dict[str, float] = {}
    with RerankClient(url, timeout=600) as client:
        client.rerank("river", SHORT, layer=6)
        alone = (("short alone", SHORT, 3), ("batch", one_micro_batch(pair_tokenizer), 3), ("heavy", heavy[0], 1))
        for name, documents, repeats in alone:
            for _ in range(repeats):
                started = time.monotonic()
                client.rerank("river", documents, layer=6)
                timings[name] = min(timings.get(name, float("inf")), time.monotonic() - started)

        def heavy_request(documents: list[str]) -> None:
            with RerankClient(url, timeout=600) as other:
                other.rerank("river", documents, layer=6)

        threads = [threading.Thread(target=heavy_request, args=(documents,)) for documents in heavy]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while executing(server) < heavies and time.monotonic() < deadline:
            time.sleep(0.02)
        assert executing(server) == heavies, "every heavy request reached a reranker instance"
        started = time.monotonic()
        client.rerank("river", SHORT, layer=6)
        timings["short"] = time.monotonic() - started
        for thread in threads:
            thread.join()
    return timings


def within_a_micro_batch(timings: dict[str, float], instances: int) -> bool:
    """Whether the short request under load took at most its time alone plus a few micro-batches.

    It waits for the micro-batch running when it arrives, then runs in the next one. Both run slower
    than alone by up to the number of busy instances: alone, an instance takes every core; beside
    the others, its share of them (or, with fewer cores than instances, its share of the time).
    Before, it waited for every heavy request of its instance.
    """
    return timings["short"] < instances * (timings["short alone"] + 6 * timings["batch"])


@pytest.mark.slow
def test_a_short_request_starts_within_a_micro_batch_while_heavy_ones_outnumber_the_instances(server, pair_tokenizer):
    instances = int(re.search(r"count: (\d+)", CPU_CONFIG.read_text())[1])
    timings = short_wait_under_heavy_load(server, pair_tokenizer, heavies=2 * instances)
    assert timings["heavy"] > 10 * timings["batch"], f"a heavy request must span many micro-batches: {timings}"
    assert timings["heavy"] > instances * (timings["short alone"] + 6 * timings["batch"]), timings
    assert within_a_micro_batch(timings, instances), timings


@pytest.mark.slow
def test_the_same_holds_with_one_instance_as_on_a_gpu(tiny_checkpoint, pair_tokenizer, tmp_path):
    """The GPU configs run one reranker instance per GPU; one CPU instance stands in for it here."""
    one_instance = lambda config: re.sub(r"count: \d+", "count: 1", config)  # noqa: E731
    repository = edited_repository(tmp_path / "model_repository", "reranker/configs/cpu.pbtxt", one_instance)
    server = start_server(tiny_checkpoint, tmp_path / "server.log", "--model-repository", str(repository),
                          api_front=False)  # fmt: skip
    try:
        timings = short_wait_under_heavy_load(server, pair_tokenizer, heavies=3)
    finally:
        server.stop()
    assert timings["heavy"] > 10 * timings["batch"], f"a heavy request must span many micro-batches: {timings}"
    assert within_a_micro_batch(timings, instances=1), timings


def abandoned_total(server) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("mmrerank_requests_abandoned_total{"))


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_abandoned_long_requests_stop_costing_compute(server, protocol):
    """Three long requests whose clients soon time out must not hold up the short request after them."""
    url = f"{protocol}://{server.grpc_url if protocol == 'grpc' else server.http_url}"
    with RerankClient(url, timeout=600) as client:
        client.rerank("river", SHORT, layer=6)
        started = time.monotonic()
        client.rerank("river", LONG[:1], layer=6)
        one_long_alone = time.monotonic() - started
        before = abandoned_total(server)
        # The clients give up a tenth of the way through a long request, whatever the host's speed.
        patience = one_long_alone / 10
        threads = [threading.Thread(target=give_up_on_a_long_request, args=(url, patience)) for _ in range(3)]
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


def give_up_on_a_long_request(url: str, patience: float) -> None:
    with RerankClient(url, timeout=patience) as impatient, pytest.raises(RerankTimeoutError):
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
    repository = edited_repository(tmp_path / "model_repository", "tokenizer/configs/cpu.pbtxt", lambda text: text)
    for model in ("tokenizer", "reranker"):  # both steps enforce the one default deadline
        set_parameters(repository / model / "configs" / "cpu.pbtxt", {"default_deadline_ms": str(DEADLINE_MS)})
    server = start_server(tiny_checkpoint, tmp_path / "server.log", "--model-repository", str(repository))
    try:
        with RerankClient(f"grpc://{server.grpc_url}", timeout=600) as client:
            client.rerank("river", SHORT, layer=6)
            started = time.monotonic()
            client.rerank("river", LONG, layer=6, timeout=600)
            long_alone = time.monotonic() - started
            assert long_alone > 2 * DEADLINE_MS / 1000, "the long request must outlast the deadline several times"
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
