"""What the serving bench needs beyond Tidal's venv: wrk, and a venv for LitServe and BentoML.

``ensure_wrk`` installs Debian's ``wrk`` package when it is missing (root and apt-get needed,
else it says how to get it). ``ensure_peers_venv`` creates ``.bench/peers-venv`` (ignored by
git through ``.bench/.gitignore``) from Tidal's interpreter, with the model stack and the web
stack pinned to ``constraints.txt`` (``PINNED``) so the same model files load the same way, and
LitServe and BentoML each installed on their own: one that cannot be installed is reported and
left out. What it holds is kept in ``bench-peers.json`` and reused while the pins are the same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
PEERS_VENV = ROOT / ".bench" / "peers-venv"
MARKER = PEERS_VENV / "bench-peers.json"

# The pins taken from constraints.txt: the model stack and the web stack the peers share with
# FastAPI. The rest (certifi, opentelemetry...) is left to the peers' own requirements, which
# disagree with ours.
PINNED = {
    *("numpy", "scipy", "scikit-learn", "skops", "joblib", "threadpoolctl"),
    *("torch", "transformers", "tokenizers", "safetensors", "huggingface_hub"),
    *("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "pydantic_core"),
    *("anyio", "h11"),
}
BASE = ["scikit-learn", "skops", "torch", "transformers", "uvloop", "httptools"]
PEERS = {"litserve": ["litserve"], "bentoml": ["bentoml"]}
REPORTED = ("scikit-learn", "skops", "torch", "transformers", "fastapi", "uvicorn")


def ensure_wrk() -> None:
    """wrk from Debian's package when it is missing."""
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(
            "wrk is not installed and cannot be installed here (needs root and apt-get); "
            "install the 'wrk' package (apt-get install wrk, brew install wrk) and run again"
        )
    print("wrk is missing: installing Debian's package (apt-get update; apt-get install -y wrk)")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")


def ensure_peers_venv() -> dict[str, Any]:
    """The peers venv, created or updated; returns {peers, failed, libraries} (versions)."""
    pins = "".join(
        line + "\n"
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.partition("==")[0].strip().lower() in PINNED
    )
    if MARKER.is_file():
        marker: dict[str, Any] = json.loads(MARKER.read_text())
        if marker.get("pins") == pins:
            return marker
    (ROOT / ".bench").mkdir(exist_ok=True)
    (ROOT / ".bench" / ".gitignore").write_text("*\n")  # nothing in .bench/ is committed
    print(f"setting up {PEERS_VENV.relative_to(ROOT)} with LitServe and BentoML (minutes)...")
    if not (PEERS_VENV / "bin" / "python").exists():
        subprocess.run([str(PYTHON), "-m", "venv", str(PEERS_VENV)], check=True)
    pins_file = PEERS_VENV / "pins.txt"
    pins_file.write_text(pins)
    error = _pip(BASE, pins_file)
    if error is not None:
        raise SystemExit(f"cannot set up {PEERS_VENV}: {error}")
    marker = {"pins": pins, "peers": {}, "failed": {}}
    for peer, packages in PEERS.items():
        error = _pip(packages, pins_file)
        if error is None:
            marker["peers"][peer] = _version(peer)
            print(f"  {peer} {marker['peers'][peer]} installed")
        else:
            marker["failed"][peer] = error
            print(f"  {peer} could not be installed, the bench goes on without it: {error}")
    marker["libraries"] = {name: _version(name) for name in REPORTED}
    MARKER.write_text(json.dumps(marker, indent=2) + "\n")
    return marker


def _pip(packages: list[str], pins: Path) -> str | None:
    """Install into the peers venv; None when it worked, else the end of pip's complaint."""
    cmd = [str(PEERS_VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    try:
        done = subprocess.run(
            [*cmd, "--prefer-binary", "-c", str(pins), *packages],
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.TimeoutExpired:
        return "pip install took over 15 minutes"
    if done.returncode == 0:
        return None
    lines = [ln for ln in done.stderr.splitlines() if not ln.startswith("WARNING: Location")]
    return " ".join(lines[-6:])[-600:]


def _version(dist: str) -> str | None:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    python = PEERS_VENV / "bin" / "python"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or None
