"""The demo's second act: the world changes under the served model, and Tidal notices.

Once the first act's champion serves, ``data/traffic.csv`` plays the changed world (tabular: one
feature recalibrated by +50%; sentiment: debate statements among unseen movie reviews):

1. traffic: every row of it is served by the endpoint, 32 rows a request, as a client sends it;
2. late labels: every row whose true label is known is labelled through ``POST /feedback``,
   with a feedback key (``serving.feedback_keys``);
3. a monitoring pass, what ``tidal monitor`` does: drift of the traffic against the champion's
   training baseline, live quality from the labels, and the retrain policy's decision;
4. the retrain the policy queued (the labelled rows and every accepted training set before them)
   goes through the gate against the champion;
5. a promoted retrain goes out as a canary (50% of traffic, then 100%, each baked for ten
   seconds) while traffic keeps flowing, watched by the rollout alarms.

The act's settings are demo-sized (``ACT``): windows as long as the demo, a policy that needs
as many labelled rows as the traffic holds, short bakes. The canary watches errors and latency
but not the prediction shift: a retrain on drifted data is meant to answer differently, and
the gate already proved it right on labelled rows.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from tidal.errors import TidalError

BATCH = 32  # rows per request
SENDERS = 2  # clients sending during the canary: p99 needs 100 requests per variant and bake
MIN_SAMPLES = 100  # drift: rows a window needs (fewer when the traffic file is smaller)
MIN_ROWS = 500  # retrain: labelled rows needed (fewer when the traffic file holds fewer)
CANARY: dict[str, Any] = {
    "strategy": "canary",
    "canary_percent": 50.0,
    "bake_s": 10.0,
    "window_s": 10.0,
    "min_samples": 20,
    "max_prediction_shift": None,
    "termination_wait_s": 5.0,
    "max_execution_s": 300.0,
}


def act_overrides(traffic_rows: int, labelled_rows: int) -> dict[str, Any]:
    """The workspace settings of the act, for ``Workspace.open(overrides=...)``."""
    return {
        "serving": {"capture_flush_interval_s": 0.2},
        "monitoring": {"min_samples": min(MIN_SAMPLES, traffic_rows), "window_s": 86_400.0},
        "retrain": {"min_rows": max(1, min(MIN_ROWS, labelled_rows))},
    }


def traffic_sizes(path: Path, label: str) -> tuple[int, int]:
    """(rows, labelled rows) of a traffic file."""
    import pandas as pd

    frame = pd.read_csv(path)
    return len(frame), int(frame[label].notna().sum())


def run_act(
    ws: Any,
    url: str,
    path: Path,
    *,
    say: Any,
    wait_record: Any,
    say_record: Any,
    wait_s: float,
    wait_served: Any = None,
    console: Console | None = None,
    feedback_key: str | None = None,
) -> dict[str, Any]:
    """Serve ``path``, label it, monitor, retrain and roll out; returns what happened."""
    from tidal.cli_monitor import check

    label = ws.config.data.label_column
    champion = ws.state.current_deployment(ws.model_name)
    if champion is None:
        raise TidalError("no champion serves: the second act needs the first one's model")
    say(
        f"\n[bold]→ {path.name}[/]: the world changes under v{champion.version}; "
        "its traffic is served, then labelled late",
        highlight=False,
    )
    started = time.monotonic()
    instances, labels = _serve(url, path, label, feedback_key)
    say(
        f"  served {len(instances)} rows in {-(-len(instances) // BATCH)} requests "
        f"({time.monotonic() - started:.1f} s); {len(labels)} late labels sent to /feedback",
        highlight=False,
    )
    time.sleep(4 * ws.config.serving.capture_flush_interval_s)  # the capture writer's flush
    say("[bold]→ tidal monitor[/]: drift against the training baseline, live quality, policy")
    for name, value in CANARY.items():  # a promoted retrain goes out as a canary
        setattr(ws.config.rollout, name, value)
    summary = check(ws)
    drift = summary["versions"].get(str(champion.version), {})
    _say_drift(say, ws, str(champion.version), drift)
    for group in summary["quality"]["totals"]:
        say(
            f"  live quality of v{group['version']}: accuracy {group['accuracy']:.3f}, "
            f"macro-F1 {group['macro_f1']:.3f} on {group['samples']} late labels",
            highlight=False,
        )
    decision = summary["retrain"]
    act: dict[str, Any] = {
        "traffic_rows": len(instances),
        "labels": len(labels),
        "drift": drift,
        "quality": summary["quality"]["totals"],
        "decision": decision,
        "run": None,
        "rollout": None,
    }
    if decision is None:
        say("  no alarm stands: the policy has nothing to decide")
        return act
    color = "green" if decision["action"] == "retrain" else "yellow"
    say(
        f"  retrain policy: [{color}]{decision['action']}[/] ({decision['reason']}): "
        f"{decision['message']}",
        highlight=False,
    )
    if decision["action"] != "retrain":
        return act
    run = ws.state.run(decision["run_id"])
    say(f"[bold]→ {Path(run.uri).name}[/]: the retrain, through the same gate", highlight=False)
    record = wait_record(ws, run.sha256, wait_s)
    say_record(say, record, None, rollout=str(CANARY["strategy"]))
    act["run"] = record
    if record["decision"] == "promoted":
        act["rollout"] = _canary(ws, url, instances, say)
        champion = ws.state.current_deployment(ws.model_name)
        if act["rollout"] is not None:
            record["rollout_status"] = act["rollout"]["status"]
        if champion is not None:
            record["champion"] = champion.version  # after the rollout, not as the run ended
            if wait_served is not None:  # the endpoint has loaded it before the demo ends
                landed = run.landed_at or time.time()
                act["served_s"] = wait_served(url, champion.version, landed, wait_s)
    return act


def _serve(
    url: str, path: Path, label: str, key: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Serve every row of ``path`` (without its label); the late labels of the labelled ones,
    sent with the feedback ``key``."""
    import httpx
    import pandas as pd

    frame = pd.read_csv(path)
    truth = frame.pop(label)
    instances = frame.astype(object).where(frame.notna(), None).to_dict("records")
    labels: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for start in range(0, len(instances), BATCH):
            response = http.post(
                "/invocations", json={"instances": instances[start : start + BATCH]}
            )
            response.raise_for_status()
            inference_id = response.headers["x-inference-id"]
            for row in range(min(BATCH, len(instances) - start)):
                value = truth.iloc[start + row]
                if pd.notna(value):
                    labels.append({"inference_id": inference_id, "row": row, "label": value})
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        http.post("/feedback", json={"labels": labels}, headers=headers).raise_for_status()
    return instances, labels


def _say_drift(say: Any, ws: Any, version: str, drift: dict[str, Any]) -> None:
    from tidal.monitoring.job import MonitorJob

    if drift.get("status") != "drifted":
        say(f"  v{version}: {drift.get('status', 'no traffic checked')}", highlight=False)
        return
    say(
        f"  [bold red]drift[/] on v{version} ({drift['rows']} rows): {', '.join(drift['drifted'])}",
        highlight=False,
    )
    report = MonitorJob(ws).latest_report(version) or {}
    drifted = [f for f in report.get("features", []) if f.get("status") == "drifted"]
    for feature in sorted(drifted, key=lambda f: -(f.get("score") or 0.0))[:3]:
        metrics = feature.get("metrics") or {}
        shown = ", ".join(
            f"{name} {value:.3g}"
            for name, value in metrics.items()
            if isinstance(value, float)
            and not name.startswith(("baseline", "missing"))
            and "pvalue" not in name
            and not name.endswith("_bins")
        )
        say(f"    {feature['name']}: {shown}", highlight=False)


def _canary(ws: Any, url: str, instances: list[dict[str, Any]], say: Any) -> dict[str, Any] | None:
    """Keep traffic flowing while the canary bakes; returns the rollout as it ended."""
    from tidal.rollout.manager import watch

    stop = threading.Event()
    senders = [
        threading.Thread(target=_keep_serving, args=(url, instances[i:], stop), daemon=True)
        for i in range(SENDERS)
    ]
    for sender in senders:
        sender.start()

    def told(rollout: dict[str, Any]) -> None:
        traffic = rollout.get("traffic")
        baking = rollout.get("status") == "baking" and isinstance(traffic, (int, float))
        share = f" with {traffic:g}% of traffic" if baking else ""
        say(
            f"  canary of v{rollout.get('candidate_version')}: {rollout.get('status')}{share}",
            highlight=False,
        )

    try:
        ended = watch(ws, threading.Event(), interval_s=0.25, until_done=True, on_change=told)
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=10)
    if ended is not None and ended.get("reason"):
        say(f"  {ended['status']}: {ended['reason']}", highlight=False)
    champion = ws.state.current_deployment(ws.model_name)
    say(f"  champion now v{champion.version if champion else '-'}", highlight=False)
    return ended


def _keep_serving(url: str, instances: list[dict[str, Any]], stop: threading.Event) -> None:
    """One row a request, round and round, up to 50 requests a second, until ``stop``."""
    import httpx

    with httpx.Client(base_url=url, timeout=30) as http:
        i = 0
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):  # the alarms judge errors, not the sender
                http.post("/invocations", json={"instances": [instances[i % len(instances)]]})
            i += 1
            stop.wait(0.02)
