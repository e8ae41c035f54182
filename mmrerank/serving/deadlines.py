"""When the server stops working on a request: its deadline, its client leaving, or the end of a shutdown's grace.

A request's deadline is fixed when the tokenizer step receives it (`deadline_ms` from then, or the
server's `default_deadline_ms`) and reaches the reranker step as an instant of the monotonic clock,
which every process on the host shares. On SIGTERM the launcher writes into a notice file the instant
its grace ends; past it, queued and running work is answered UNAVAILABLE instead of being cut off as
connection resets by Triton's exit timeout. When a client of the rerank API front goes away, the
front names the request (its Triton request id) in a cancellation directory both share (Triton
itself tells a running Python step nothing). The reranker checks all three before every
micro-batch and every encoder layer, so work nobody waits for stops costing compute within one layer.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from pathlib import Path

NO_DEADLINE = math.inf
SHUTDOWN_NOTICE_ENV = "MMRERANK_SHUTDOWN_NOTICE"
CANCEL_DIRECTORY_ENV = "MMRERANK_CANCEL_DIR"
# A cancellation notice is kept this long: past it, the request was answered or abandoned long ago.
NOTICE_LIFETIME_SECONDS = 3600
# The request ids the front gives (uuid4 hex); any other id is never looked up on disk.
CANCELLABLE_ID = re.compile(r"[0-9a-f]{32}")


class WorkAbandoned(Exception):
    """Raised between encoder layers once every request of the running micro-batch is past its cutoff."""


def request_deadline(arrived: float, deadline_ms: int | None) -> float:
    """The monotonic instant a request that arrived at `arrived` stops being worth scoring."""
    return NO_DEADLINE if deadline_ms is None else arrived + deadline_ms / 1000.0


class ShutdownNotice:
    """The instant a shutdown's grace ends, announced through a file the launcher writes on SIGTERM."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self._ends_at = NO_DEADLINE

    @classmethod
    def from_environment(cls) -> ShutdownNotice:
        """The notice file named by MMRERANK_SHUTDOWN_NOTICE (none: never shutting down)."""
        return cls(os.environ.get(SHUTDOWN_NOTICE_ENV) or None)

    def ends_at(self) -> float:
        """The grace's end once a shutdown began, else infinity; a stat call while no shutdown is announced."""
        if self._ends_at == NO_DEADLINE and self.path is not None and self.path.exists():
            self._ends_at = float(self.path.read_text())  # `announce` replaces the file whole
        return self._ends_at

    def announce(self, grace_seconds: float) -> None:
        """Launcher side: shutdown begins now, and work still running `grace_seconds` from now is abandoned."""
        if self.path is None:
            return
        partial = self.path.with_suffix(".partial")
        partial.write_text(repr(time.monotonic() + grace_seconds))
        partial.replace(self.path)

    def withdraw(self) -> None:
        """Launcher side: a (re)started server is not shutting down."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class CancelNotices:
    """Requests whose clients went away: one empty file per request id, written by the rerank API front.

    Only names of the ids the front gives are ever written, looked up or removed in the directory,
    so nothing else that lives there is touched. The step that ends a cancelled request removes its
    notice; notices nobody removed (the request had finished anyway) go after NOTICE_LIFETIME.
    """

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory else None
        self._swept_at = -math.inf

    @classmethod
    def from_environment(cls) -> CancelNotices:
        """The directory named by MMRERANK_CANCEL_DIR (none: no request is ever cancelled this way).

        Raises NotADirectoryError when the variable names something that is not a writable directory:
        cancellation would silently do nothing.
        """
        directory = os.environ.get(CANCEL_DIRECTORY_ENV) or None
        if directory is not None and not (os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)):
            raise NotADirectoryError(f"{CANCEL_DIRECTORY_ENV}={directory!r} is not a writable directory")
        return cls(directory)

    @property
    def enabled(self) -> bool:
        """Whether requests can be cancelled this way (a directory is set)."""
        return self.directory is not None

    def _path(self, request_id: str) -> Path | None:
        if self.directory is None or not CANCELLABLE_ID.fullmatch(request_id):
            return None
        return self.directory / request_id

    def cancel(self, request_id: str) -> None:
        """Front side: the client of `request_id` went away. Blocks on the file system: call it off the event loop.

        At most once a minute, notices older than NOTICE_LIFETIME go too.
        """
        path = self._path(request_id)
        if path is None:
            return
        path.touch()
        if time.monotonic() - self._swept_at >= 60:
            self._swept_at = time.monotonic()
            self._sweep(time.time() - NOTICE_LIFETIME_SECONDS)

    def _sweep(self, expired: float) -> None:
        assert self.directory is not None
        for old in self.directory.iterdir():
            if not CANCELLABLE_ID.fullmatch(old.name):
                continue
            with contextlib.suppress(OSError):  # gone meanwhile, or not a plain file
                if old.is_file() and old.stat().st_mtime < expired:
                    old.unlink()

    def cancelled(self, request_id: str) -> bool:
        """Whether the client of `request_id` went away (one stat call)."""
        path = self._path(request_id)
        return path is not None and path.exists()

    def forget(self, request_id: str) -> None:
        """Model side: the cancelled request `request_id` has ended; its notice is no longer needed."""
        path = self._path(request_id)
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
