"""Processes that need no torch import none: tokenizer model, launcher, API front, client (each in a fresh process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

TOKENIZER_PROCESS = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from triton_stub import load_adapter, stub_module
sys.modules["triton_python_backend_utils"] = stub_module()
load_adapter("tokenizer")
import mmrerank.serving.tokenizer_step, mmrerank.layout
"""


@pytest.mark.parametrize(
    ("process", "code"),
    [
        ("tokenizer model", TOKENIZER_PROCESS),
        ("launcher", "import mmrerank.launch.launcher, mmrerank.launch.supervisor, mmrerank.launch.repository"),
        ("rerank API front", "import mmrerank.api.app, mmrerank.api.triton, mmrerank.api.__main__"),
        ("client", "import mmrerank_client, mmrerank_client.aio, mmrerank_client.cli"),
    ],
)
def test_a_process_without_torch_imports_none(process, code):
    check = code + "\nimport sys\nheavy = sorted(m for m in ('torch', 'safetensors.torch') if m in sys.modules)\n"
    check += "print(','.join(heavy))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "", f"the {process} imported {result.stdout.strip()}"


def test_the_reranker_process_does_import_torch():
    code = "import mmrerank.serving.reranker_step, sys; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "True"


def test_a_grpc_client_imports_none_of_the_http_transport():
    code = (
        "import sys\nfrom mmrerank_client import RerankClient, AsyncRerankClient\n"
        "RerankClient('grpc://127.0.0.1:1').close()\nAsyncRerankClient('grpc://127.0.0.1:1')\n"
        "print(','.join(sorted(m for m in ('gevent', 'geventhttpclient', 'aiohttp', 'tritonclient.http') "
        "if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "", f"a gRPC client imported {result.stdout.strip()}"
