"""False rollbacks: the demo's canary phase, replayed N times with two models of equal quality.

    tidal demo --keep /tmp/tidal-demo        # once: a workspace with the demo's versions
    .venv/bin/python bench/canary_bench.py --workspace /tmp/tidal-demo [--runs 20]

The demo's second act ends with a canary of the retrain (``tidal.demo_monitor.CANARY``: 50% of
traffic, then 100%, each baked 10 s, watched by the error-rate and latency alarms) while two
clients send single rows of ``data/traffic.csv`` (``SENDERS``, up to 50 requests a second
each). Here the endpoint runs in this process, as in the demo, and the canary is replayed
``--runs`` times between the workspace's two newest versions (the promoted one becomes the
baseline of the next run): models trained on the same data, equal in quality and speed, so any
rollback is a false one. Reported: runs promoted and rolled back, and each rollback's reason.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from tidal.cli import build_endpoint
from tidal.config import RolloutConfig
from tidal.demo_monitor import CANARY, SENDERS, _keep_serving
from tidal.rollout.manager import Manager, watch
from tidal.serving.server import BackgroundServer
from tidal.workspace import Workspace


def canary(ws: Workspace, url: str, version: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One canary of ``version`` under the demo's traffic; returns the rollout as it ended."""
    stop = threading.Event()
    senders = [
        threading.Thread(target=_keep_serving, args=(url, rows[i:], stop), daemon=True)
        for i in range(SENDERS)
    ]
    for sender in senders:
        sender.start()
    try:
        time.sleep(1.0)  # traffic flows before the canary starts, as in the demo
        config = RolloutConfig(**{**CANARY, "termination_wait_s": 0.0})
        Manager(ws).start(version, config=config)
        ended = watch(ws, threading.Event(), interval_s=0.25, until_done=True)
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=10)
    assert ended is not None
    return ended


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a kept demo workspace")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--versions", default="2,4", help="the two versions to alternate (the demo's v2 and v4)"
    )
    parser.add_argument("--json", type=Path, help="write every run's outcome to this file")
    args = parser.parse_args()

    import pandas as pd

    ws = Workspace.open(
        args.workspace, overrides={"serving": {"port": 0, "reload_interval_s": 0.1}}
    )
    first, second = args.versions.split(",")
    if ws.state.current_deployment(ws.model_name) is None:
        raise SystemExit("the workspace serves nothing: run 'tidal demo --keep DIR' first")
    frame = pd.read_csv(args.workspace / "data" / "traffic.csv")
    frame = frame.drop(columns=[ws.config.data.label_column])
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    outcomes = []
    with BackgroundServer(build_endpoint(ws), "127.0.0.1", 0) as server:
        for run in range(args.runs):
            baseline = ws.state.current_deployment(ws.model_name)
            assert baseline is not None
            candidate = second if baseline.version == first else first
            start = time.monotonic()
            ended = canary(ws, server.url, candidate, rows)
            outcome = {
                "run": run + 1,
                "baseline": baseline.version,
                "candidate": candidate,
                "status": ended["status"],
                "reason": ended.get("reason"),
                "seconds": round(time.monotonic() - start, 1),
            }
            outcomes.append(outcome)
            print(
                f"run {run + 1:>2}: v{candidate} against v{baseline.version}: "
                f"{ended['status']} in {outcome['seconds']} s ({ended.get('reason')})",
                flush=True,
            )
    rolled = [o for o in outcomes if o["status"] == "rolled_back"]
    print(
        f"\nfalse rollbacks: {len(rolled)} of {len(outcomes)} canaries of equal models; "
        f"promoted: {sum(o['status'] == 'promoted' for o in outcomes)}"
    )
    if args.json:
        args.json.write_text(json.dumps(outcomes, indent=2))
    return 1 if rolled else 0


if __name__ == "__main__":
    raise SystemExit(main())
