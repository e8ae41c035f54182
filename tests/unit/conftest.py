"""Installs the `triton_python_backend_utils` stand-in for the adapter tests (one place, as Triton would)."""

from __future__ import annotations

import sys

import pytest
from triton_stub import MetricFamily, stub_module


@pytest.fixture()
def pb_utils(monkeypatch):
    """The stand-in module, installed in sys.modules for the duration of a test."""
    module = stub_module()
    MetricFamily.values = {}
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    return module
