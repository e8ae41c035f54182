"""A real tritonserver, started once per session through scripts/serve on free loopback ports."""

from __future__ import annotations

import pytest

from mmrerank.background import BackgroundServer, start_server
from mmrerank.launcher import LaunchError


@pytest.fixture(scope="session")
def server(tiny_checkpoint, tmp_path_factory):
    """The tiny demo checkpoint served by a real tritonserver (CPU config)."""
    try:
        running = start_server(tiny_checkpoint, tmp_path_factory.mktemp("server") / "tritonserver.log")
    except LaunchError as error:
        pytest.fail(str(error))
    yield running
    running.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server log's tail to every failing server test."""
    outcome = yield
    report = outcome.get_result()
    running = item.funcargs.get("server") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(running, BackgroundServer):
        report.sections.append(("tritonserver log (tail)", running.log_tail()))
