"""A `tidal up` killed with kill -9 takes its worker launcher with it, even one still busy
importing its libraries (which reads no EOF from the gateway until it is done)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tidal.deploy import promote
from tidal.workspace import Workspace
from toy import register_toy_model, slow_launcher_site


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a parent death signal")
def test_kill_9_of_tidal_up_ends_its_launcher_within_seconds(tmp_path: Path) -> None:
    (tmp_path / "tidal.yaml").write_text("project: toy\nserving:\n  port: 0\n")
    ws = Workspace.open(tmp_path)
    promote(ws, register_toy_model(ws, 1, "good"), reason="first")
    site = slow_launcher_site(tmp_path / "site", 30)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    log = tmp_path / "up.log"
    with log.open("w") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "tidal", "up"], cwd=tmp_path, env=env, stderr=out, stdout=out
        )
    try:
        launcher = None
        deadline = time.monotonic() + 60
        while launcher is None:
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()
            for child in psutil.Process(up.pid).children():
                if "tidal.serving.launcher" in " ".join(child.cmdline()):
                    launcher = child
            time.sleep(0.05)
        time.sleep(1.0)  # importing (asleep in its sitecustomize)
        assert launcher.is_running()
        up.send_signal(signal.SIGKILL)
        up.wait(timeout=10)
        deadline = time.monotonic() + 5
        while launcher.is_running() and launcher.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the launcher outlived tidal up"
            time.sleep(0.05)
    finally:
        up.kill()
        up.wait(timeout=10)
        for child in psutil.Process().children(recursive=True):
            if "tidal.serving.launcher" in " ".join(child.cmdline()):
                child.kill()
