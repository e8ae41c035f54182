"""CPU cores shared by the reranker instances by how many are scoring, through one small file they all map.

Each CPU instance owns one byte of the file (its slot, from its Triton instance name) and holds 1
there while requests are in its pool. Before each micro-batch an instance takes `cores // busy`
PyTorch threads: a lone request runs on every core, and instances busy together split them, as a
fixed `cores // instances` split would. The launcher creates the file and names it in
MMRERANK_CPU_SHARE; without it (or with MMRERANK_CPU_SHARE=off in the launcher's environment)
each instance keeps its fixed share.
"""

from __future__ import annotations

import mmap
import os
import re
from pathlib import Path

CPU_SHARE_ENV = "MMRERANK_CPU_SHARE"
CPU_SHARE_OFF = "off"
SLOTS = 256
# Triton names instances MODEL_GROUP_INDEX ("reranker_0_1"): restarts of one instance keep its slot.
INSTANCE_NAME = re.compile(r"_(?P<group>\d+)_(?P<index>\d+)$")


class CoreShare:
    """One instance's view of which instances are scoring now, and so how many threads it takes."""

    def __init__(self, path: str | os.PathLike[str], slot: int, cores: int) -> None:
        if not 0 <= slot < SLOTS:
            raise ValueError(f"slot {slot} is outside the share's {SLOTS} slots")
        self.slot = slot
        self.cores = cores
        with open(path, "r+b") as file:
            self._board = mmap.mmap(file.fileno(), SLOTS)

    @staticmethod
    def create(path: Path) -> Path:
        """Write an empty share file (every instance idle) at `path`."""
        path.write_bytes(bytes(SLOTS))
        return path

    @classmethod
    def from_environment(cls, instance_name: str, cores: int) -> CoreShare | None:
        """The share named by MMRERANK_CPU_SHARE for this instance, or None when the variable is unset or off."""
        path = os.environ.get(CPU_SHARE_ENV, CPU_SHARE_OFF)
        if path in ("", CPU_SHARE_OFF):
            return None
        match = INSTANCE_NAME.search(instance_name)
        if match is None:
            raise ValueError(f"cannot tell a share slot from the instance name {instance_name!r}")
        return cls(path, (int(match["group"]) * 16 + int(match["index"])) % SLOTS, cores)

    def set_busy(self, busy: bool) -> None:
        """Mark this instance as scoring (requests in its pool) or idle."""
        self._board[self.slot] = 1 if busy else 0

    def busy(self) -> int:
        """How many instances are scoring now (this one included when it is)."""
        return SLOTS - self._board[:].count(0)

    def threads(self) -> int:
        """Threads for this instance's next micro-batch: its share of the cores among the busy instances."""
        return max(1, self.cores // max(1, self.busy()))

    def close(self) -> None:
        """Mark this instance idle and unmap the file."""
        self.set_busy(False)
        self._board.close()
