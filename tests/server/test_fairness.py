"""A long request does not hold the server: a short one sent meanwhile is answered by the other CPU instance."""

from __future__ import annotations

import threading
import time

import pytest

from mmrerank_client import RerankClient

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
