"""Shared fixtures: one tiny demo checkpoint per session, its reference, its reranker, a served copy."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import start_server  # noqa: E402

from mmrerank.dev.background import BackgroundServer  # noqa: E402
from mmrerank.dev.random_checkpoint import build_random_checkpoint  # noqa: E402
from mmrerank.launch.supervisor import LaunchError  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight checkpoint in the published layout (6 layers, hidden 128, 20 exits)."""
    return build_random_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"), "tiny", seed=0)


@pytest.fixture(scope="session")
def roberta_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with a RoBERTa-style pair template in tokenizer.json: `<bos> A <eos><eos> B <eos>`."""
    from tokenizers import Tokenizer, processors

    target = tmp_path_factory.mktemp("roberta-template") / "checkpoint"
    shutil.copytree(tiny_checkpoint, target)
    tokenizer = Tokenizer.from_file(str(target / "tokenizer.json"))
    tokenizer.post_processor = processors.RobertaProcessing(("<eos>", 1), ("<bos>", 2))
    tokenizer.save(str(target / "tokenizer.json"))
    return target


@pytest.fixture(scope="session")
def reference(tiny_checkpoint: Path):
    """The straightforward transformers-based scorer of the tiny checkpoint."""
    from reference import ReferenceScorer

    return ReferenceScorer(tiny_checkpoint)


@pytest.fixture(scope="session")
def reranker(tiny_checkpoint: Path):
    """The library's reranker on the tiny checkpoint, fp32 on the CPU."""
    from mmrerank.model import MatryoshkaReranker

    return MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def served_reranker(tiny_checkpoint: Path):
    """The library at the precision the CPU config's `auto` resolves to on this host (int8 where AVX2 runs)."""
    from mmrerank.model import MatryoshkaReranker

    return MatryoshkaReranker.from_pretrained(tiny_checkpoint, device="cpu", precision="auto")


@pytest.fixture(scope="session")
def pair_tokenizer(tiny_checkpoint: Path):
    """The library's pair tokenizer for the tiny checkpoint."""
    from mmrerank.serving.pair_tokenizer import PairTokenizer

    return PairTokenizer.from_file(tiny_checkpoint / "tokenizer.json")


@pytest.fixture(scope="session")
def server(tiny_checkpoint, tmp_path_factory):
    """The tiny demo checkpoint served by a real tritonserver (CPU config), started through scripts/serve."""
    try:
        running = start_server(tiny_checkpoint, tmp_path_factory.mktemp("server") / "tritonserver.log")
    except LaunchError as error:
        pytest.fail(str(error))
    yield running
    running.stop()


def pytest_collection_modifyitems(items):
    """Mark every test by the directory it lives in, so `-m "not server"` or `-m "not slow"` pick a fast set."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "server" in parts or "load" in parts:
            item.add_marker(pytest.mark.server)
        if "load" in parts:
            item.add_marker(pytest.mark.slow)
        if "deploy" in parts:
            item.add_marker(pytest.mark.deploy)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server log's tail to every failing test that used a server."""
    outcome = yield
    report = outcome.get_result()
    running = item.funcargs.get("server") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(running, BackgroundServer):
        report.sections.append(("tritonserver log (tail)", running.log_tail()))
