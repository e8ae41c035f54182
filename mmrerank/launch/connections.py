"""Close tritonserver's idle keep-alive HTTP connections while it shuts down.

On SIGTERM, Triton 2.51 waits for every HTTP connection to be closed by its client before it unloads
the models: one idle pooled client held each shutdown for the whole exit timeout, and tritonserver then
exited 1. While the server stops, the launcher watches its metrics; once no request is queued or
executing in any model, every open HTTP connection is idle. It then takes a duplicate of each
established connection on the HTTP port that has been quiet for a second (`pidfd_getfd`, Linux 5.6+; a
parent may do this to its child) and shuts it down, as any HTTP server closes idle keep-alive
connections. Where the metrics cannot be read or the sockets not taken, Triton waits as before.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import urllib.error
import urllib.request
from pathlib import Path

SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture
ESTABLISHED = "01"  # TCP state in /proc/net/tcp
# struct tcp_info: milliseconds since the last data was sent, and since the last data was received.
LAST_DATA_SENT_OFFSET, LAST_DATA_RECV_OFFSET = 44, 52
TCP_INFO_BYTES = 104
# What says a request is still in progress: Triton's queued requests, and the models' executing ones.
IN_PROGRESS_METRICS = ("nv_inference_pending_request_count", "mmrerank_requests_executing")

_libc = ctypes.CDLL(None, use_errno=True)


def established_sockets(pid: int, port: int) -> list[int]:
    """File descriptors in process `pid` of established TCP connections on its local `port`."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == ESTABLISHED:
                inodes.add(f"socket:[{fields[9]}]")
    descriptors = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") in inodes:
                descriptors.append(int(name))
        except OSError:
            continue
    return descriptors


def _duplicate(pidfd: int, descriptor: int) -> socket.socket:
    duplicate = _libc.syscall(SYS_PIDFD_GETFD, pidfd, descriptor, 0)
    if duplicate < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"pidfd_getfd: {os.strerror(error)}")
    return socket.socket(fileno=duplicate)


def requests_in_progress(metrics_text: str) -> float:
    """Requests queued or executing in any model, from a Prometheus text page of Triton's metrics."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(IN_PROGRESS_METRICS):
            total += float(line.rsplit(" ", 1)[1])
    return total


def server_is_idle(metrics_url: str) -> bool | None:
    """Whether no request is queued or executing; None when the metrics cannot be read."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    if "mmrerank_requests_executing" not in text:
        return None  # the models never reported: nothing proves them idle
    return requests_in_progress(text) == 0


def quiet_for_ms(connection: socket.socket) -> int:
    """Milliseconds since data last went either way on this connection."""
    info = connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
    since_sent = struct.unpack_from("I", info, LAST_DATA_SENT_OFFSET)[0]
    since_received = struct.unpack_from("I", info, LAST_DATA_RECV_OFFSET)[0]
    return min(since_sent, since_received)


def close_idle_connections(pid: int, port: int, quiet_ms: int = 1000) -> int:
    """Shut down process `pid`'s established connections on `port` quiet for `quiet_ms`; returns how many.

    Call it only when no request is in progress. Raises OSError where the system does not allow
    taking another process's sockets.
    """
    pidfd = os.pidfd_open(pid)
    closed = 0
    try:
        for descriptor in established_sockets(pid, port):
            try:
                connection = _duplicate(pidfd, descriptor)
            except OSError as error:
                if error.errno == errno.EBADF:  # the connection closed meanwhile
                    continue
                raise
            with connection:
                if quiet_for_ms(connection) < quiet_ms:
                    continue
                try:
                    connection.shutdown(socket.SHUT_RDWR)  # both ends see it; only the duplicate is closed
                except OSError as error:
                    if error.errno != errno.ENOTCONN:
                        raise
                    continue
                closed += 1
    finally:
        os.close(pidfd)
    return closed
