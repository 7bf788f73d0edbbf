"""Readiness and idle levels of a fresh `tidal up`: when /ping says 200, how long the first
request then takes, and the memory (PSS) the endpoint keeps at each idle level.

    python bench/readiness_bench.py WORKSPACE [--port 18080] [--launcher-idle-s 6]

WORKSPACE is a trained workspace (`tidal init X --example tabular; cd X; tidal run
data/batch-1.csv`). The script starts `tidal up` there, polls /ping every 5 ms, sends one
request the moment it says 200, then waits through each idle level and sends one request after
each:

    warm      one worker running
    zero      no worker (serving.idle_timeout_s passed): gateway + launcher resident
    deep      no launcher either (serving.launcher_idle_s passed): the gateway alone

PSS is read from /proc/PID/smaps_rollup of the `tidal up` process and its descendants (the
training and monitoring threads live in the same process as the gateway). Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def _first_row(workspace: Path) -> dict[str, Any]:
    """The first row of data/batch-1.csv (the example's file), the label left in: ignored."""
    with open(workspace / "data" / "batch-1.csv", encoding="utf-8") as f:
        row = next(csv.DictReader(f))
    return {"instances": [{k: float(v) for k, v in row.items() if k != "diagnosis"}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--idle-timeout-s", type=float, default=3.0)
    parser.add_argument("--launcher-idle-s", type=float, default=6.0, help="0: not set")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    env = {
        **os.environ,
        "TIDAL_SERVING__IDLE_TIMEOUT_S": str(args.idle_timeout_s),
        "TIDAL_SERVING__CAPTURE_SAMPLE_RATE": "0",
    }
    if args.launcher_idle_s:
        env["TIDAL_SERVING__LAUNCHER_IDLE_S"] = str(args.launcher_idle_s)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidal", "up", "--port", str(args.port)],
        cwd=args.workspace,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(args.workspace / "readiness_bench.log", "w"),  # noqa: SIM115
    )
    row = _first_row(args.workspace)
    out: dict[str, Any] = {"workspace": str(args.workspace)}
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            ping_503 = 0
            while True:
                try:
                    if client.get("/ping").status_code == 200:
                        break
                    ping_503 += 1
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    raise SystemExit(f"tidal up exited: see {args.workspace}/readiness_bench.log")
                if time.perf_counter() - started > 120:
                    raise SystemExit("/ping did not answer 200 within 120 s")
                time.sleep(0.005)
            out["ping_200_after_s"] = round(time.perf_counter() - started, 3)
            out["ping_503_answers"] = ping_503
            out["first_request_after_ping_s"] = _timed(client, row)
            out["levels"] = {}
            time.sleep(0.5)
            out["levels"]["warm"] = {"pss_mb": _pss_tree(proc.pid)}
            out["levels"]["warm"]["request_s"] = _timed(client, row)
            _wait_for(proc.pid, lambda w: not _workers(w), args.idle_timeout_s + 10)
            out["levels"]["zero"] = {"pss_mb": _pss_tree(proc.pid)}
            out["levels"]["zero"]["first_request_s"] = _timed(client, row)
            _wait_for(proc.pid, lambda w: not _workers(w), args.idle_timeout_s + 10)
            try:
                _wait_for(proc.pid, lambda w: w["launcher_pid"] is None, args.launcher_idle_s + 10)
            except SystemExit as exc:
                out["levels"]["deep"] = str(exc)  # an endpoint without serving.launcher_idle_s
            else:
                time.sleep(0.5)
                out["levels"]["deep"] = {"pss_mb": _pss_tree(proc.pid)}
                ping = client.get("/ping")
                out["levels"]["deep"]["ping_status"] = ping.status_code
                out["levels"]["deep"]["first_request_s"] = _timed(client, row)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(json.dumps(out, indent=2), flush=True)


def _timed(client: httpx.Client, row: dict[str, Any]) -> float:
    started = time.perf_counter()
    response = client.post("/invocations", json=row)
    response.raise_for_status()
    return round(time.perf_counter() - started, 3)


def _workers(status: dict[str, Any]) -> list[Any]:
    return [w for v in status["variants"] for w in v["workers"]]


def _wait_for(root: int, done: Any, timeout_s: float) -> None:
    """Poll the launcher's and workers' pids from /proc (no admin key needed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done(_tree_status(root)):
            return
        time.sleep(0.1)
    raise SystemExit(f"level not reached within {timeout_s:g} s: {_tree_status(root)}")


def _tree_status(root: int) -> dict[str, Any]:
    """The launcher pid and worker pids, read from the process tree (by process name)."""
    launcher = None
    workers = []
    for pid in _descendants(root):
        name = _comm(pid)
        if name == "tidal-launcher":
            launcher = pid
        elif name.startswith("tidal-w-"):
            workers.append({"pid": pid})
    return {"launcher_pid": launcher, "variants": [{"workers": workers}]}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def _pss_tree(pid: int) -> dict[str, float]:
    """PSS in MB of each process of the tree, by name, and their total."""
    out: dict[str, float] = {}
    for member in _descendants(pid):
        try:
            text = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        kb = next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:"))
        name = "gateway" if member == pid else _comm(member)
        out[name] = round(out.get(name, 0.0) + kb / 1024, 1)
    out["total"] = round(sum(out.values()), 1)
    return out


if __name__ == "__main__":
    main()
