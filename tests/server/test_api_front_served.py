"""The rerank API front beside a real tritonserver, driven by clients this project did not write."""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cohere
import numpy as np
import pytest
from helpers import assert_close, infer
from langchain_cohere import CohereRerank
from langchain_core.documents import Document
from servers import start_server

from mmrerank.api.protocol import HEADER_TIMEOUT_SECONDS
from mmrerank.dev.corpus import text

QUERY = "where does the river meet the city library"


@pytest.fixture(scope="module")
def documents() -> list[str]:
    rng = random.Random(31)
    return [text(rng, n) for n in (5, 80, 20, 150, 40, 9)]


def post(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_cohere_sdk_gets_the_kserve_paths_scores(server, documents):
    client = cohere.ClientV2(api_key="unused", base_url=server.api_url)
    response = client.rerank(model="mmrerank", query=QUERY, documents=documents, top_n=4)
    kserve = infer("grpc", server.grpc_url, QUERY, documents)["scores"]
    order = sorted(range(len(documents)), key=lambda i: -kserve[i])[:4]
    assert [result.index for result in response.results] == order
    assert_close(np.array([r.relevance_score for r in response.results], dtype=np.float32), kserve[order])
    assert response.meta.api_version.version == "2"


def test_the_cohere_sdk_passes_layer_and_dim_through(server, documents):
    client = cohere.ClientV2(api_key="unused", base_url=server.api_url)
    response = client.rerank(model="mmrerank", query=QUERY, documents=documents, request_options={
        "additional_body_parameters": {"layer": 2, "dim": 16}})  # fmt: skip
    kserve = infer("http", server.http_url, QUERY, documents, layer=2, dim=16)["scores"]
    by_index = {r.index: r.relevance_score for r in response.results}
    assert_close(np.array([by_index[i] for i in range(len(documents))], dtype=np.float32), kserve)


def test_langchains_cohere_rerank_compresses_documents(server, documents):
    reranker = CohereRerank(
        client=cohere.ClientV2(api_key="unused", base_url=server.api_url), model="mmrerank", top_n=2
    )
    kept = reranker.compress_documents(
        [Document(page_content=d, metadata={"n": i}) for i, d in enumerate(documents)], QUERY
    )
    kserve = infer("grpc", server.grpc_url, QUERY, documents)["scores"]
    best = sorted(range(len(documents)), key=lambda i: -kserve[i])[:2]
    assert [doc.metadata["n"] for doc in kept] == best
    assert [doc.metadata["relevance_score"] for doc in kept] == pytest.approx(kserve[best].tolist(), rel=1e-4)


def test_v1_return_documents_top_n_and_the_tei_shape(server, documents):
    status, answer = post(f"{server.api_url}/v1/rerank", {"model": "m", "query": QUERY, "documents": documents,
                                                          "top_n": 3, "return_documents": True})  # fmt: skip
    assert status == 200 and len(answer["results"]) == 3
    assert all(r["document"]["text"] == documents[r["index"]] for r in answer["results"])
    raw = infer("http", server.http_url, QUERY, documents, normalize=False)["scores"]
    status, tei = post(f"{server.api_url}/rerank", {"query": QUERY, "texts": documents, "raw_scores": True})
    assert status == 200 and [r["index"] for r in tei] == sorted(range(len(documents)), key=lambda i: -raw[i])
    assert_close(np.array([r["score"] for r in sorted(tei, key=lambda r: r["index"])], dtype=np.float32), raw)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/rerank", {"query": QUERY, "documents": ["a"], "layer": 3}, 400, "'layer' must be one of [1, 2, 4, 6]"),
        ("/rerank", {"query": QUERY, "texts": ["water " * 33000]}, 413, "over max_length=32768"),
        ("/v2/rerank", {"query": QUERY, "documents": ["a"], "unknown": True}, 422, "unknown field 'unknown'"),
    ],
)
def test_errors_through_the_real_server(server, path, body, status, message):
    got, answer = post(server.api_url + path, body)
    assert got == status and message in answer["message"] and "in ensemble" not in answer["message"]


def test_health_and_models(server):
    with urllib.request.urlopen(f"{server.api_url}/health", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ready"}
    with urllib.request.urlopen(f"{server.api_url}/v1/models", timeout=10) as response:
        assert json.loads(response.read())["data"][0]["layer_indices"] == [1, 2, 4, 6]


def test_the_api_key_guards_the_front_and_stays_off_command_lines(tiny_checkpoint, tmp_path, documents):
    secret = "front-secret-7f3a"
    server = start_server(tiny_checkpoint, tmp_path / "server.log", env={"MMRERANK_API_KEY": secret})
    try:
        body = {"model": "m", "query": QUERY, "documents": documents}
        assert post(f"{server.api_url}/v2/rerank", body)[0] == 401
        assert post(f"{server.api_url}/v2/rerank", body, {"Authorization": f"Bearer {secret}"})[0] == 200
        client = cohere.ClientV2(api_key=secret, base_url=server.api_url)
        assert len(client.rerank(model="m", query=QUERY, documents=documents).results) == len(documents)
        front = [pid for pid in os.listdir("/proc") if pid.isdigit() and b"mmrerank.api" in _cmdline(pid)]
        assert front and all(secret.encode() not in _cmdline(pid) for pid in front)
    finally:
        assert server.stop() == 0
    assert secret not in Path(server.log_path).read_text(errors="replace")


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_the_front_is_restarted_when_it_dies(tiny_checkpoint, tmp_path):
    server = start_server(tiny_checkpoint, tmp_path / "server.log")
    try:
        for _ in range(60):  # the launcher's own readiness wait for the front may lag the test's by a poll
            if "rerank API: http" in server.log_tail(200):
                break
            subprocess.run(["sleep", "0.5"], check=True)
        front = [pid for pid in os.listdir("/proc") if pid.isdigit() and b"mmrerank.api" in _cmdline(pid)
                 and f"{server.api_port}".encode() in _cmdline(pid)]  # fmt: skip
        assert len(front) == 1
        subprocess.run(["kill", "-9", front[0]], check=True)
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"{server.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            subprocess.run(["sleep", "0.5"], check=True)
        log = server.log_tail(200)
        assert "rerank API front exited" in log, log
        status, _ = post(f"{server.api_url}/rerank", {"query": QUERY, "texts": ["a river"]})
        assert status == 200, log
    finally:
        assert server.stop() == 0


def test_the_fronts_timeout_and_body_limit_are_set_through_scripts_serve(tiny_checkpoint, tmp_path):
    server = start_server(
        tiny_checkpoint, tmp_path / "tritonserver.log", "--api-max-body-bytes", "40000", "--api-timeout", "0.001"
    )
    try:
        # A small body over the limit: it is sent whole before the answer comes (a large one may not be).
        status, body = post(f"{server.api_url}/v1/rerank", {"query": "river", "documents": ["x" * 50000]})
        assert status == 413 and "40000-byte limit" in body["message"]
        # About 6,000 tokens at the deepest exit within the body limit, and a 1 ms timeout: a gRPC round trip
        # through the tokenizer alone takes longer, on any host.
        heavy = {"query": "river", "documents": ["water " * 1200] * 5, "max_tokens_per_doc": 2048}
        status, body = post(f"{server.api_url}/v1/rerank", heavy)
        assert status == 504, body
    finally:
        server.stop()


def send_and_leave(api_url: str, body: dict, seconds: float) -> None:
    """POST a rerank request over a raw connection, then close it after `seconds` without reading the answer."""
    host, port = api_url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    head = f"POST /v1/rerank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(head.encode() + b"\r\n\r\n" + data)
        time.sleep(seconds)


def abandoned(server, reason: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    prefix = f'mmrerank_requests_abandoned_total{{reason="{reason}"}}'
    return sum(float(line.split()[-1]) for line in lines if line.startswith(prefix))


@pytest.mark.slow
def test_a_client_that_leaves_the_front_stops_costing_compute(server):
    heavy = {"query": "river", "documents": [text(random.Random(8), 30_000)], "max_tokens_per_doc": 32768}
    short = {"query": "river", "documents": ["the river", "a delta", "bread"]}
    timings = {}
    for name, body in (("short", short), ("heavy", heavy), ("short", short)):
        started = time.monotonic()
        status, _ = post(f"{server.api_url}/v1/rerank", body)
        timings[name] = min(timings.get(name, float("inf")), time.monotonic() - started)
        assert status == 200
    heavy_alone = timings["heavy"]
    assert heavy_alone > 20 * timings["short"], f"the heavy request must dwarf the short one: {timings}"
    before = abandoned(server, "cancelled")
    # The clients leave a quarter of the way through: most of the work is still ahead.
    leavers = [threading.Thread(target=send_and_leave, args=(server.api_url, heavy, heavy_alone / 4)) for _ in range(2)]
    for leaver in leavers:
        leaver.start()
    for leaver in leavers:
        leaver.join()
    started = time.monotonic()
    status, _ = post(f"{server.api_url}/v1/rerank", short)
    delay = time.monotonic() - started
    assert status == 200
    # Without cancellation both abandoned requests ran to the end: the short one waited most of heavy_alone.
    assert delay < 0.5 * heavy_alone, (delay, heavy_alone)
    deadline = time.monotonic() + 10
    while abandoned(server, "cancelled") - before < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert abandoned(server, "cancelled") - before == 2


def raw_exchange(api_url: str, request: bytes, wait: float) -> tuple[bytes, float]:
    """Send raw bytes, then read until the server closes the connection (or `wait` seconds pass)."""
    host, port = api_url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait) as connection:
        connection.sendall(request)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received, time.monotonic() - started


def test_request_headers_are_bounded(server):
    small, _ = raw_exchange(server.api_url, b"GET /health HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 1000 + b"\r\n"
                            b"Connection: close\r\n\r\n", 10)  # fmt: skip
    assert small.startswith(b"HTTP/1.1 200")
    big, took = raw_exchange(
        server.api_url, b"GET /health HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 100_000 + b"\r\n\r\n", 10
    )
    assert big.startswith(b"HTTP/1.1 431") and b"65536-byte limit" in big and took < 5


@pytest.mark.slow
def test_half_sent_requests_are_closed_within_seconds_and_stall_nobody(server):
    half_headers = b"GET /health HTTP/1.1\r\nHost: a\r\nX-Slow: "
    short_body = (
        b"POST /v1/rerank HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{}"
    )
    with ThreadPoolExecutor(8) as pool:
        stalls = [pool.submit(raw_exchange, server.api_url, request, 30) for request in [half_headers, short_body] * 3]
        time.sleep(1)
        started = time.monotonic()
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=10) as response:
            assert response.status == 200
        assert time.monotonic() - started < HEADER_TIMEOUT_SECONDS / 10  # not held up by the stalled connections
        for stall in stalls:
            received, took = stall.result()
            in_time = HEADER_TIMEOUT_SECONDS - 1 < took < HEADER_TIMEOUT_SECONDS + 5
            assert received.startswith(b"HTTP/1.1 408") and in_time, (received[:80], took)


def test_a_chunked_body_over_the_limit_gets_413(server):
    host, port = server.api_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        chunks = (b"x" * 2**20 for _ in range(70))  # 70 MiB, over the 64 MiB limit, with no Content-Length
        connection.request("POST", "/v1/rerank", body=chunks, headers={"Content-Type": "application/json"},
                           encode_chunked=True)  # fmt: skip
        response = connection.getresponse()
        assert response.status == 413 and b"byte limit" in response.read()
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("the front closed the connection instead of answering 413")
    finally:
        connection.close()
