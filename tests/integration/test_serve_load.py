"""``tidal serve`` as a user runs it, under a bounded load: 64 clients for 30 s, then SIGTERM.

Zero errors, every answer from the trained model, and afterwards no process of the endpoint
left: not the gateway, not the launcher, not a worker."""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tidal.cli import app
from toy import wait_ready

CLIENTS = 64
SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tidal(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidal", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


async def load(url: str, rows: list[dict[str, float]]) -> tuple[int, list[str]]:
    """CLIENTS clients posting one row each, back to back, for SECONDS; (answers, errors)."""
    answered = 0
    errors: list[str] = []
    deadline = time.monotonic() + SECONDS
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)

    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:

        async def one_client(i: int) -> None:
            nonlocal answered
            n = i
            while time.monotonic() < deadline:
                row = rows[n % len(rows)]
                n += CLIENTS
                try:
                    response = await client.post("/invocations", json={"instances": [row]})
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                elif response.json()["predictions"][0]["label"] not in ("benign", "malignant"):
                    errors.append(response.text[:200])
                else:
                    answered += 1

        await asyncio.gather(*(one_client(i) for i in range(CLIENTS)))
    return answered, errors


def test_64_clients_for_30_s_no_errors_no_leaked_processes(tmp_path: Path) -> None:
    assert app is not None  # the CLI imports
    ws = tmp_path / "ws"
    tidal("init", str(ws), "--example", "tabular", cwd=tmp_path)
    tidal("run", "data/batch-1.csv", cwd=ws)
    with open(ws / "data" / "batch-2.csv", newline="") as fh:
        records = list(csv.DictReader(fh))
    label = next(k for k in ("diagnosis", "label", "target") if k in records[0])
    rows = [{k: float(v) for k, v in r.items() if k != label} for r in records]

    port = free_port()
    env = dict(os.environ, TIDAL_SERVING__PORT=str(port), TIDAL_SERVING__MAX_WORKERS="2")
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "tidal", "serve"],
            cwd=ws,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    tree: set[int] = set()
    try:
        wait_ready(url, server, log)

        answered, errors = asyncio.run(load(url, rows))
        tree = {p.pid for p in psutil.Process(server.pid).children(recursive=True)}
        assert errors == [], (errors[:5], log.read_text()[-3000:])
        assert answered > CLIENTS * 10  # every client got many answers, not a trickle
        assert len(tree) >= 2  # the launcher and at least one worker served them
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        finally:
            if server.poll() is None:
                server.kill()
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in tree):
        assert time.monotonic() < deadline, f"left running: {sorted(tree)}"
        time.sleep(0.1)
