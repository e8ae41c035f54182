"""uvicorn's httptools HTTP/1.1 protocol with the limits it lacks: bounded request headers and read timeouts.

uvicorn (0.54) bounds neither the size of a request's headers nor the time a client may take to
send them: a 60 MB header was accepted, and half-sent requests were held open until their clients
gave up. Here the URL and headers of a request may hold MAX_HEADER_BYTES (431 past it), they must
arrive within HEADER_TIMEOUT_SECONDS of the request's first byte (or of the connection's opening),
and a body may pause at most BODY_IDLE_SECONDS between two reads (408, then the connection closes).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mmrerank_client.schema import FRONT

MAX_HEADER_BYTES = FRONT.max_header_bytes
HEADER_TIMEOUT_SECONDS = 10.0
BODY_IDLE_SECONDS = 10.0

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    """Raised inside the parser once a request has been refused and answered."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose requests are refused past a header size or a read timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._reading_body = False
        self._refused = False
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(HEADER_TIMEOUT_SECONDS)  # a connection that sends nothing is not held open either

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_body:
            self._arm(BODY_IDLE_SECONDS)  # the body made progress
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a refusal already answered; the parser error is its echo
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm(HEADER_TIMEOUT_SECONDS)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._reading_body = True
        self._arm(BODY_IDLE_SECONDS)

    def on_message_complete(self) -> None:
        self._reading_body = False
        self._disarm()
        super().on_message_complete()

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(431, f"the request's URL and headers are over the {MAX_HEADER_BYTES}-byte limit")
            raise _Refused

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        self._refuse(408, "the request was not received in time")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with a JSON message and close the connection."""
        self._refused = True
        self._disarm()
        body = ('{"message": "' + message + '"}').encode()
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        if not self.transport.is_closing():
            self.transport.write(head % (status, REASONS[status], len(body)) + body)
            self.transport.close()
