"""Retries after a temporary error: backoff with jitter, a queued run waits for its time, and a
run that failed for a temporary reason is queued again where it stopped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tidal.config import ControllerConfig
from tidal.errors import RetryableError
from tidal.pipeline import backoff_s
from tidal.state import RunStatus, State
from tidal.storage import open_store


def test_backoff_doubles_up_to_its_ceiling_with_jitter_over_the_upper_half() -> None:
    cfg = ControllerConfig(retry_base_s=2.0, retry_max_s=60.0)
    lowest = [backoff_s(n, cfg, rand=lambda: 0.0) for n in range(1, 9)]
    highest = [backoff_s(n, cfg, rand=lambda: 1.0) for n in range(1, 9)]
    assert highest == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert lowest == [h / 2 for h in highest]
    # the default tries of a run span minutes, not seconds
    default = ControllerConfig()
    waits = [backoff_s(n, default, rand=lambda: 0.0) for n in range(1, default.max_attempts)]
    assert sum(waits) > 120


def test_a_run_given_back_waits_until_its_retry_time(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    run, _ = state.enqueue("m", "file:///s/incoming/a.csv", "sha", "validate")
    claimed = state.claim(None, "me", 30)
    assert claimed is not None and claimed.attempts == 1
    state.release(run.id, "me", requeue=True, error="store down", retry_at=time.time() + 0.5)
    assert state.claim(None, "me", 30) is None
    assert state.claim(run.id, "me", 30) is None
    time.sleep(0.6)
    again = state.claim(None, "me", 30)
    assert again is not None and again.attempts == 2


def test_a_failed_run_resumes_at_its_step_with_its_outputs(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    run, _ = state.enqueue("m", "file:///s/incoming/a.csv", "sha", "validate")
    assert state.claim(None, "me", 30) is not None
    state.step_done(run.id, "validate", "prepare", {"rows": 3}, 0.1)
    assert not state.resume_failed(run.id)  # running, not failed
    state.finish(run.id, decision="failed", record={"retryable": True}, failed=True, error="x")
    assert state.resume_failed(run.id)
    resumed = state.run(run.id)
    assert resumed is not None
    assert (resumed.status, resumed.step, resumed.attempts) == (RunStatus.QUEUED, "prepare", 0)
    assert state.step_outputs(run.id)["validate"]["rows"] == 3


def test_a_refused_store_gets_a_hint_that_fits_it(tmp_path: Path) -> None:
    local = open_store(str(tmp_path / "bucket"))
    with pytest.raises(RetryableError) as caught, local._errors("incoming/a.csv"):
        raise PermissionError(13, "Permission denied")
    assert str(tmp_path / "bucket") in (caught.value.hint or "")
    assert "AWS" not in str(caught.value)
    remote = open_store("s3://bucket/tidal", endpoint_url="http://127.0.0.1:1")
    with pytest.raises(RetryableError) as caught, remote._errors("incoming/a.csv"):
        raise PermissionError(13, "Access Denied")
    assert "AWS_ACCESS_KEY_ID" in (caught.value.hint or "")
