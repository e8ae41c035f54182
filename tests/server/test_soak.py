"""A bounded soak: 16 concurrent clients, mixed scenarios, zero failures, no unbounded memory growth."""

from __future__ import annotations

import os
import random
import threading
import time

import psutil
import pytest

from mmrerank.dev.corpus import LANGUAGES, text
from mmrerank_client import RerankClient

SOAK_SECONDS = float(os.environ.get("MMRERANK_SOAK_SECONDS", "60"))
CONCURRENCY = 16


def server_rss(launcher_pid: int) -> int:
    """Resident memory of tritonserver and its backend stubs, in bytes."""
    total = 0
    for process in psutil.Process(launcher_pid).children(recursive=True):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def scenario(rng: random.Random) -> tuple[str, list[str], dict]:
    kind = rng.choice(["short", "short", "long", "matryoshka", "rag"])
    if kind == "short":
        return kind, [text(rng, 9) for _ in range(10)], {}
    if kind == "long":
        return kind, [text(rng, 940) for _ in range(2)], {}
    if kind == "matryoshka":
        exit_ = {"layer": rng.choice([1, 2, 4, 6]), "dim": rng.choice([8, 16, 32, 64, 128])}
        return kind, [text(rng, rng.randint(10, 120)) for _ in range(10)], exit_
    documents = [text(rng, rng.choice([20, 60, 150]), rng.choice(LANGUAGES)) for _ in range(rng.randint(20, 60))]
    return kind, documents, {}


@pytest.mark.slow
def test_soak_has_no_failures_and_bounded_memory(server):
    stop_at = time.monotonic() + SOAK_SECONDS
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    lock = threading.Lock()
    samples: list[int] = []

    def worker(index: int) -> None:
        rng = random.Random(index)
        url = f"http://{server.http_url}" if index % 2 else f"grpc://{server.grpc_url}"
        with RerankClient(url, timeout=120) as client:
            while time.monotonic() < stop_at:
                kind, documents, options = scenario(rng)
                try:
                    scores = client.score(f"{kind} {index}", documents, **options)
                    assert len(scores) == len(documents)
                    outcome = "ok"
                except Exception as error:  # noqa: BLE001 - counted and reported
                    outcome = "failed"
                    errors.append(f"{kind}: {error!r}")
                with lock:
                    counts[outcome] += 1

    def sampler() -> None:
        while time.monotonic() < stop_at:
            samples.append(server_rss(server.process.pid))
            time.sleep(1.0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CONCURRENCY)]
    threads.append(threading.Thread(target=sampler))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=SOAK_SECONDS + 180)
    third = max(1, len(samples) // 3)
    first, last = sum(samples[:third]) / third, sum(samples[-third:]) / third
    print(
        f"soak: {SOAK_SECONDS:.0f} s, {CONCURRENCY} clients, {counts['ok']} requests ok, {counts['failed']} failed; "
        f"server RSS first third {first / 2**20:.0f} MiB, last third {last / 2**20:.0f} MiB "
        f"({(last / first - 1) * 100:+.1f}%)"
    )
    assert counts["failed"] == 0, errors[:5]
    assert counts["ok"] > CONCURRENCY
    assert last <= first * 1.15 + 64 * 2**20
