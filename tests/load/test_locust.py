"""A short headless Locust run against the tiny demo server: every scenario, both protocols, zero failures, and
short requests answered quickly beside the rag requests of the same run."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def test_short_headless_run_has_no_failures(server, tmp_path):
    prefix = tmp_path / "run"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", f"http://{server.http_url}", "--grpc-host", f"grpc://{server.grpc_url}", "--api-host", server.api_url,
        "-u", "9", "-r", "9", "-t", "25s", "--stop-timeout", "30", "--csv", str(prefix), "--exit-code-on-error", "1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(f"{prefix}_stats.csv", newline="") as handle:
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}
    total = rows[("", "Aggregated")]
    assert int(total["Request Count"]) > 10
    assert int(total["Failure Count"]) == 0
    assert {kind for kind, _ in rows} >= {"http", "grpc", "POST"}
    assert {name for _, name in rows} >= {"short", "rag", "cascade", "api /v2/rerank", "api /rerank"}
    assert any(name.startswith("layer 1 dim ") for _, name in rows)  # the tiny checkpoint's exits, read from it
    for protocol in ("http", "grpc"):
        short, rag = rows[(protocol, "short")], rows[(protocol, "rag")]
        # Each call's size is its tokens under the served tokenizer, read from the server's answer.
        assert float(rag["Average Content Size"]) > 10 * float(short["Average Content Size"]) > 0
        # Short requests start within a micro-batch of the rag requests around them: before, a short
        # request waited for whole rag requests (p95 3.9 s on the demo).
        assert float(short["95%"]) < 0.3 * float(rag["50%"]), (protocol, short["95%"], rag["50%"])
