"""Starting, measuring and stopping one server; one bounded wrk run against it.

    spec = Spec("fastapi", "how it gets the model", command(python, app, "--port", "{port}"),
                "/predict")
    with running(spec, logs) as server:        # stopped on leaving, error or Ctrl-C included
        launch_s = server.start(body, timeout_s=120)   # launch → first 200 answer
        figures = wrk(server, body_file, connections=16, seconds=8)
        memory = server.memory()               # RSS/USS/PSS summed over its process tree

Every server listens on 127.0.0.1 and runs in its own session, so ``stop`` can end all it
started: SIGTERM to the server's own pid (it shuts its children down as it would on Ctrl-C),
then its process group, then SIGKILL to whatever remains of the process tree, by pid.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")
STOP_GRACE_S = 10.0


@dataclass
class Spec:
    """How to start one server: its command (``{port}`` is replaced), environment and route."""

    name: str
    how: str  # how it gets the model, for the report
    cmd: list[str]
    path: str  # the prediction route
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


def command(*parts: object) -> list[str]:
    return [str(p) for p in parts]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """One server process in its own session, its output in ``log``."""

    def __init__(self, spec: Spec, logs: Path, env: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.port = free_port()
        self.log = logs / f"{spec.name}-{self.port}.log"
        self.env = os.environ | spec.env | (env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, psutil.Process] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.spec.path}"

    def start(self, body: bytes, timeout_s: float) -> float:
        """Launch; returns the seconds from launch to the first 200 answer to ``body``."""
        cmd = [part.replace("{port}", str(self.port)) for part in self.spec.cmd]
        with self.log.open("ab") as log:
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.spec.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = started + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with code {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if post(self.port, self.spec.path, body, timeout_s=10.0)[0] == 200:
                    return time.perf_counter() - started
            time.sleep(0.02)
        raise RuntimeError(f"no answer within {timeout_s:.0f} s: {self.log_tail()}")

    def processes(self) -> list[psutil.Process]:
        """The server's process and its descendants now (each is remembered for ``stop``)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.proc.pid)
            tree = [root, *root.children(recursive=True)]
            self.seen.update((p.pid, p) for p in tree)
            return tree
        return []

    def memory(self) -> dict[str, Any]:
        """RSS, USS and PSS in MB summed over the process tree, and what the tree holds."""
        total = {"rss_mb": 0.0, "uss_mb": 0.0, "pss_mb": 0.0}
        procs = []
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                info = p.memory_full_info()
                for key in ("rss", "uss", "pss"):
                    total[f"{key}_mb"] += getattr(info, key, 0) / 2**20
                procs.append({"pid": p.pid, "name": p.name(), "rss_mb": round(info.rss / 2**20)})
        rounded = {k: round(v, 1) for k, v in total.items()}
        return rounded | {"processes": len(procs), "tree": procs}

    def stop(self) -> None:
        """SIGTERM to the server, then to its group, then SIGKILL to what is left, by pid."""
        if self.proc is None:
            return
        self.processes()
        pgid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_GRACE_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)  # children it left behind
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        for p in alive:  # also those that made a session of their own
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.proc = None
        self.seen = {}

    def log_tail(self, chars: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


@contextlib.contextmanager
def running(spec: Spec, logs: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    server = Server(spec, logs, env)
    try:
        yield server
    finally:
        server.stop()


def post(port: int, path: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
    """One POST on a new connection to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wrk(server: Server, body: Path, connections: int, seconds: int) -> dict[str, Any]:
    """One wrk run (one thread, keep-alive), bounded by ``seconds``; latency in ms."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    done = subprocess.run(
        [*cmd, "-s", str(WRK_SCRIPT), server.url],
        capture_output=True,
        text=True,
        env=os.environ | {"WRK_BODY": str(body)},
        timeout=seconds + 30,
    )
    for line in done.stdout.splitlines():
        if line.startswith("@wrk "):
            raw = json.loads(line[5:])
            errors = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout")}
            return {
                "connections": connections,
                "seconds": seconds,
                "requests": raw["requests"],
                "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
                "p50_ms": raw["p50_us"] / 1000,
                "p90_ms": raw["p90_us"] / 1000,
                "p99_ms": raw["p99_us"] / 1000,
                "max_ms": raw["max_us"] / 1000,
                "errors": {k: v for k, v in errors.items() if v},
            }
    raise RuntimeError(f"wrk gave no figures (exit {done.returncode}): {done.stderr[-500:]}")
