"""Cancellation notices between the rerank API front and the models: only the notices the front wrote are
touched, the step that ends a cancelled request removes its notice, and a bad directory fails at start."""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest

from mmrerank.api.__main__ import main as api_main
from mmrerank.serving.contract import RequestOptions
from mmrerank.serving.deadlines import CANCEL_DIRECTORY_ENV, NOTICE_LIFETIME_SECONDS, CancelNotices
from mmrerank.serving.reranker_step import RerankerStep, ScoreRequest


def age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_notice_is_seen_by_its_id_only(tmp_path):
    notices = CancelNotices(tmp_path)
    request_id = uuid.uuid4().hex
    assert not notices.cancelled(request_id)
    notices.cancel(request_id)
    assert notices.cancelled(request_id)
    notices.cancel("../escape")  # not an id the front gives: never a path
    assert sorted(p.name for p in tmp_path.iterdir()) == [request_id]


def test_the_sweep_removes_only_old_notices_and_never_raises(tmp_path):
    old_notice, foreign, directory = uuid.uuid4().hex, tmp_path / "someone-elses-file", tmp_path / uuid.uuid4().hex
    (tmp_path / old_notice).touch()
    foreign.touch()
    directory.mkdir()  # a directory named like a notice
    for path in (tmp_path / old_notice, foreign, directory):
        age(path, NOTICE_LIFETIME_SECONDS + 60)
    fresh = uuid.uuid4().hex
    CancelNotices(tmp_path).cancel(fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([foreign.name, directory.name, fresh])


def test_the_sweep_runs_at_most_once_a_minute(tmp_path):
    notices = CancelNotices(tmp_path)
    notices.cancel(uuid.uuid4().hex)
    late = tmp_path / uuid.uuid4().hex
    late.touch()
    age(late, NOTICE_LIFETIME_SECONDS + 60)
    notices.cancel(uuid.uuid4().hex)
    assert late.exists(), "no second scan of the directory within a minute"


def test_forgetting_removes_the_notice(tmp_path):
    notices, request_id = CancelNotices(tmp_path), uuid.uuid4().hex
    notices.cancel(request_id)
    notices.forget(request_id)
    notices.forget(request_id)  # twice is harmless
    assert not notices.cancelled(request_id) and not any(tmp_path.iterdir())


def test_the_reranker_removes_the_notice_of_the_request_it_stopped(reranker, tmp_path):
    notices, request_id = CancelNotices(tmp_path), uuid.uuid4().hex
    options = RequestOptions(layer=6, dim=128, normalize=False, max_length=512, truncate=True)
    rows = [np.array([2, 5, 6, 1], dtype=np.int32)] * 3
    notices.cancel(request_id)
    scored = RerankerStep(reranker, 1000, cancels=notices).score([ScoreRequest(rows, options, request_id=request_id)])
    assert scored.abandoned == {0: "cancelled"}
    assert not any(tmp_path.iterdir())


def test_an_unusable_directory_is_an_error_at_start(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(CANCEL_DIRECTORY_ENV, raising=False)
    assert not CancelNotices.from_environment().enabled
    for unusable in (tmp_path / "missing", tmp_path / "a-file"):
        (tmp_path / "a-file").touch()
        monkeypatch.setenv(CANCEL_DIRECTORY_ENV, str(unusable))
        with pytest.raises(NotADirectoryError, match="is not a writable directory"):
            CancelNotices.from_environment()
        assert api_main(["--triton-grpc", "127.0.0.1:1"]) == 2
        assert "must be the directory the models read" in capsys.readouterr().err
    monkeypatch.setenv(CANCEL_DIRECTORY_ENV, str(tmp_path))
    assert CancelNotices.from_environment().enabled
