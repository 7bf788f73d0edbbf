"""Children die with their parent (kill -9 included), not with the thread that forked them.
Real processes: a parent script starts a child the way the launcher and the training job are
started, prints the child's pid, and is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

JOB = """
import subprocess, sys, time
from tidal.lifeline import job_preexec
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(60)"],
    start_new_session=True, preexec_fn=job_preexec(),
)
print(child.pid, flush=True)
time.sleep(60)
"""

LAUNCHER = """
import os, subprocess, sys, threading, time
from tidal.lifeline import PARENT_ENV
pids = []

def start():  # from a thread that exits right after: its exit must not end the child
    code = "from tidal.lifeline import follow_parent; import os, time; "
    code += "follow_parent(int(os.environ['TIDAL_PARENT_PID'])); time.sleep(60)"
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    pids.append(subprocess.Popen([sys.executable, "-c", code], env=env).pid)

thread = threading.Thread(target=start)
thread.start()
thread.join()
print(pids[0], flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _start(script: str) -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("script", [JOB, LAUNCHER], ids=["training-job", "launcher"])
def test_a_child_dies_with_its_parent_killed_by_sigkill(script: str) -> None:
    parent, child = _start(script)
    try:
        time.sleep(1.0)  # the launcher's forking thread has exited by now
        assert _alive(child), "the child died with the thread that started it"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert _gone_within(child, 5), "the child outlived its parent"
    finally:
        parent.kill()
        parent.wait(timeout=10)
        assert parent.stdout is not None
        parent.stdout.close()
        if _alive(child):
            os.kill(child, signal.SIGKILL)
