"""The README's quick start, run as written (minus the install line) in a fresh folder."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def quickstart_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Quick start\n\n```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its quick start block"
    return block.group(1).strip().splitlines()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_readme_quickstart_runs(tmp_path: Path) -> None:
    lines = quickstart_lines()
    assert lines[0].startswith("make setup"), "the first line installs; the rest is the story"
    script = "set -e\n" + "\n".join(lines[1:]) + "\nwait\n"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TIDAL_SERVING__PORT": str(free_port()),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("TIDAL_WORKSPACE", None)
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the background `tidal up`, if the script died
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "exit 3: rejected by the gate" in out
    assert '"model_version": "2"' in out or '"model_version":"2"' in out  # curl hit v2
    assert re.search(r"^(benign|malignant)\t", out, re.M), "tidal predict printed no labels"
    assert "v2 *" in out  # models list marks v2 as serving
