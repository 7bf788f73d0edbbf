"""``tidal up`` as a real process: files landing in incoming/ are trained and served, and a run
cut by kill -9 in the middle of training resumes after its last completed step when ``tidal up``
starts again: one decision, one registered version, nothing left queued or running.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tidal.examples import init_workspace
from tidal.state import Run, RunStatus, State
from tidal.workspace import Workspace

T = TypeVar("T")
AFTER_PREPARE = ("train", "evaluate", "register", "deploy")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, check: Callable[[], T | None], timeout_s: float, every: float = 0.1) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found is not None and found is not False:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def land(ws: Path, source: Path) -> Path:
    """Drop a file into incoming/ as an uploader would: a hidden temp name, then a rename."""
    incoming = ws / ".tidal" / "store" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    partial = incoming / f".{source.name}.partial"
    shutil.copyfile(source, partial)
    target = incoming / source.name
    os.rename(partial, target)
    return target


class Up:
    """``tidal up`` in a session of its own, its output in a log file."""

    def __init__(self, ws: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tidal.cli", "up"],
                cwd=ws,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill_hard(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """Ctrl-C, as a person would; SIGKILL if it does not end."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def training_jobs(ws: Path) -> list[int]:
    """Pids of training jobs working in this workspace (they run in sessions of their own)."""
    jobs = (ws / ".tidal" / "jobs").resolve()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = (entry / "cwd").resolve(strict=True)
        except OSError:
            continue
        if cwd.is_relative_to(jobs):
            pids.append(int(entry.name))
    return pids


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def ping(url: str) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"{url}/ping", timeout=1)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    init_workspace(tmp_path / "ws", example="tabular")
    ws = tmp_path / "ws"
    yield ws
    kill_pids(training_jobs(ws))  # whatever a killed controller left behind


def test_up_trains_serves_and_resumes_a_run_killed_during_training(
    workspace: Path, tmp_path: Path
) -> None:
    ws, port = workspace, free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")} | {
        "HF_HUB_OFFLINE": "1",
        "TIDAL_SERVING__PORT": str(port),
        "TIDAL_CONTROLLER__POLL_INTERVAL_S": "0.2",
    }
    state = State(ws / ".tidal" / "state.db")
    model = ws.name
    started: list[Up] = []
    try:
        first = Up(ws, env, tmp_path / "up-1.log")
        started.append(first)
        land(ws, ws / "data" / "batch-1.csv")
        wait_until(
            "v1 to serve",
            lambda: (ping(url) or {}).get("model_version") == "1" or not first.alive(),
            180,
            every=0.25,
        )
        assert first.alive(), first.tail()
        assert ping(url) == {"status": "ready", "model_version": "1"}

        sha2 = hashlib.sha256((ws / "data" / "batch-2.csv").read_bytes()).hexdigest()
        land(ws, ws / "data" / "batch-2.csv")

        def training() -> Run | None:
            run = state.run_by_sha(model, sha2)
            if run is not None and run.status == RunStatus.RUNNING and run.step in AFTER_PREPARE:
                return run
            assert first.alive(), first.tail()
            return None

        cut = wait_until("run 2 to reach training", training, 120, every=0.02)
        first.kill_hard()
        kill_pids(training_jobs(ws))  # a job outlives its controller (a session of its own)
        at_kill = state.run(cut.id)
        assert at_kill is not None and at_kill.status == RunStatus.RUNNING
        assert at_kill.decision is None and "prepare" in state.step_outputs(cut.id)

        second = Up(ws, env, tmp_path / "up-2.log")
        started.append(second)

        def finished() -> Run | None:
            run = state.run(cut.id)
            assert second.alive(), second.tail()
            return (
                run
                if run is not None and run.status in (RunStatus.DONE, RunStatus.FAILED)
                else None
            )

        done = wait_until("the cut run to finish after the restart", finished, 180, every=0.2)
        record = done.record
        assert record is not None, done
        assert done.status == RunStatus.DONE, record
        assert record["decision"] in ("promoted", "rejected"), record
        assert record["resumed_from_stage"] == at_kill.step
        assert record["resumed_from_stage"] in AFTER_PREPARE
        assert done.attempts == 2 and done.owner is None
        assert record["version"] == "2" and record["champion_before"] == "1"
        expected = "2" if record["decision"] == "promoted" else "1"
        wait_until(
            f"the endpoint to serve v{expected}",
            lambda: (ping(url) or {}).get("model_version") == expected,
            30,
        )
        assert second.stop() == 0, second.tail()
        assert "Traceback" not in second.tail(), second.tail()
    finally:
        for up in started:
            up.stop()
        kill_pids(training_jobs(ws))

    assert not any(p.alive() for p in started)
    registry = Workspace.open(ws).registry
    versions = registry.versions()
    assert [v.version for v in versions] == ["1", "2"]
    assert [v for v in versions if v.tags.get("tidal.run_id") == str(cut.id)] == [versions[1]]
    assert versions[1].tags["tidal.source_sha256"] == sha2
    runs = state.runs(model)
    assert [r.status for r in runs] == [RunStatus.DONE, RunStatus.DONE]
    assert state.counts() == {"done": 2}
    deployed = [d.version for d in reversed(state.deployments(model))]
    assert deployed == (["1", "2"] if record["decision"] == "promoted" else ["1"])
