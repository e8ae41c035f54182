"""Served-model tests compare the server with the library at the precision the server runs."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def reranker(served_reranker):
    """The library reranker the served scores must equal: the CPU config's precision (`auto`) on this host.

    int8 is batch invariant (per-token activation scales), so the served scores equal the library's
    whatever shares their micro-batches; `test_precision_served.py` holds fp32 to the fp32 reference.
    """
    return served_reranker
