"""Closing a child process's idle connections at shutdown, and reading whether requests are in progress."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from mmrerank.launch.connections import close_idle_connections, established_sockets, requests_in_progress

# A child that accepts one connection and holds it open, as tritonserver holds a keep-alive client.
HOLDER = """
import socket, sys, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
connection, _ = server.accept()
connection.sendall(b"hello")
time.sleep(60)
"""


@pytest.fixture
def held_connection():
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    port = int(child.stdout.readline())
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert client.recv(5) == b"hello"
    yield child, port, client
    client.close()
    child.kill()
    child.wait()


def test_a_quiet_connection_of_a_child_is_shut_down_and_a_busy_one_is_not(held_connection):
    child, port, client = held_connection
    assert len(established_sockets(child.pid, port)) == 1
    assert close_idle_connections(child.pid, port, quiet_ms=60_000) == 0  # not quiet long enough
    time.sleep(0.3)
    assert close_idle_connections(child.pid, port, quiet_ms=200) == 1
    assert client.recv(1) == b""  # the client sees the connection closed
    assert child.poll() is None  # the child itself goes on


def test_requests_in_progress_add_queued_and_executing_ones():
    page = "\n".join([
        "# HELP nv_inference_pending_request_count Instantaneous number of pending requests",
        'nv_inference_pending_request_count{model="rerank",version="1"} 0',
        'nv_inference_pending_request_count{model="reranker",version="1"} 2',
        'mmrerank_requests_executing{instance="reranker_0",step="reranker"} 1',
        'mmrerank_requests_executing{instance="tokenizer_0",step="tokenizer"} 0',
        'nv_inference_request_success{model="rerank",version="1"} 40',
    ])  # fmt: skip
    assert requests_in_progress(page) == 3
    assert requests_in_progress(page.replace("} 2", "} 0").replace("} 1", "} 0")) == 0
