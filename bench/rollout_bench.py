"""Rollout figures: how fast a bad canary is caught, and what routing costs per request.

    .venv/bin/python bench/rollout_bench.py [--rate 200] [--canary 10] [--window 10]

1. Detection: v1 serves; v2 raises on 10% of its inputs. A canary of ``--canary`` % starts
   while a paced client sends ``--rate`` single-row requests per second to ``tidal serve`` (its
   own process). The rollout manager ticks every 0.2 s, as ``tidal up`` does. Reported: seconds
   from the first bad answer to the rollback decision and to the last answer from v2, the
   requests v2 answered, and how many of them failed.
2. Routing: the cost of ``RolloutRouter.pick`` + ``observe`` (what a request pays to be
   routed and counted during a rollout), and of the single-variant router, in process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tidal.config import RolloutConfig  # noqa: E402
from tidal.deploy import promote  # noqa: E402
from tidal.rollout.manager import Manager, watch  # noqa: E402
from tidal.workspace import Workspace  # noqa: E402
from toy import register_toy_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def paced_load(
    url: str, rate: float, stop: threading.Event, log: list[tuple[float, str, int]]
) -> None:
    """``rate`` requests per second, each on time whatever the previous one took."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(n: int) -> None:
            answer = await client.post("/invocations", json={"instances": [{"x": n}]})
            log.append(
                (time.time(), answer.headers.get("x-model-version", "?"), answer.status_code)
            )

        tasks: set[asyncio.Task[None]] = set()
        n, start = 0, time.monotonic()
        while not stop.is_set():
            n += 1
            task = asyncio.create_task(one(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        await asyncio.gather(*tasks)


def detection(rate: float, canary: float, window_s: float) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="tidal-rollout-bench-"))
    (home / "tidal.yaml").write_text("project: bench\nserving:\n  reload_interval_s: 0.2\n")
    ws = Workspace.open(home)
    promote(ws, register_toy_model(ws, 1, "good"), reason="bench baseline")
    bad = register_toy_model(ws, 2, "raises")
    port = free_port()
    env = dict(os.environ, TIDAL_SERVING__PORT=str(port))
    server = subprocess.Popen(
        [sys.executable, "-m", "tidal", "serve", "-w", str(home)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    log: list[tuple[float, str, int]] = []
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("tidal serve did not start")
            time.sleep(0.1)
        loader = threading.Thread(target=asyncio.run, args=(paced_load(url, rate, stop, log),))
        loader.start()
        time.sleep(2.0)
        config = RolloutConfig(
            bake_s=120.0, window_s=window_s, canary_percent=canary, max_p99_ratio=None
        )
        Manager(ws).start(bad, strategy="canary", config=config)
        ended = watch(ws, threading.Event(), interval_s=0.2, until_done=True)
        time.sleep(2.0)
        stop.set()
        loader.join(timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert ended is not None
    to_bad = [(t, status) for t, version, status in log if version == bad]
    failed = [t for t, status in to_bad if status >= 500]
    decided = float(ended["finished_at"])
    return {
        "rate_req_s": rate,
        "canary_percent": canary,
        "window_s": window_s,
        "status": ended["status"],
        "reason": ended["reason"],
        "requests_total": len(log),
        "requests_to_v2": len(to_bad),
        "failed_at_v2": len(failed),
        "first_bad_to_decision_s": round(decided - failed[0], 3) if failed else None,
        "first_bad_to_last_v2_answer_s": round(to_bad[-1][0] - failed[0], 3) if failed else None,
        "share_to_v2_before_rollback": round(
            len(to_bad) / max(1, sum(1 for t, _, _ in log if t <= decided)), 4
        ),
    }


def routing(calls: int = 200_000) -> dict[str, Any]:
    from tidal.serving.slot import ModelSlot, SingleVariantRouter
    from tidal.serving.variants import RolloutRouter

    primary = ModelSlot(lambda: None, loader=lambda d: None)  # type: ignore[arg-type,return-value]
    single = SingleVariantRouter(primary)
    rollout = RolloutRouter(primary, lambda d: None, lambda: None)  # type: ignore[arg-type,return-value]
    rollout.traffic = 10.0
    rollout.candidate._loaded = object()  # type: ignore[assignment]  # a candidate "loaded"
    headers = {"content-type": "application/json"}
    prediction = [{"label": "big", "score": 0.9, "probabilities": {}}]

    def per_call(fn: Any) -> float:
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            runs.append((time.perf_counter() - start) / calls * 1e6)
        return round(statistics.median(runs), 3)

    def routed() -> None:
        slot = rollout.pick(headers)
        rollout.observe(slot.name, 200, 0.0012, prediction)

    return {
        "single_variant_pick_us": per_call(lambda: single.pick(headers)),
        "rollout_pick_and_observe_us": per_call(routed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--canary", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "?")
    print(f"machine: {os.cpu_count()} CPUs, {cpu}")
    found = detection(args.rate, args.canary, args.window)
    for key, value in found.items():
        print(f"  {key:<34} {value}")
    costs = routing()
    for key, value in costs.items():
        print(f"  {key:<34} {value}")
    goal = found["first_bad_to_decision_s"]
    print(
        f"goal: rollback within one evaluation window ({args.window:g} s): "
        f"{'ok' if goal is not None and goal <= args.window else 'MISSED'} ({goal} s); "
        f"routing overhead <= 50 us at p50: "
        f"{'ok' if costs['rollout_pick_and_observe_us'] <= 50 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
