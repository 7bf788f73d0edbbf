"""``tidal demo``: the whole loop, for real, in a fresh workspace, in under a minute.

A controller and an endpoint run in this process (as ``tidal up`` runs them); files land in
``incoming/`` one after another, and for each the demo waits for the decision and, when a
version is promoted, for the endpoint to answer with it:

1. batch 1 → v1 promoted and served;
2. batch 2 → v2 registered, promoted only if not worse than v1 on the same data;
3. batch 3 with shuffled labels → rejected by the gate, champion unchanged;
4. a malformed file → rejected by validation, moved to quarantine/ with its reasons.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

STORY = [
    ("batch-1.csv", "first data: v1 should be promoted and served"),
    ("batch-2.csv", "more data: v2 is promoted only if not worse than v1"),
    ("batch-3-shuffled-labels.csv", "labels shuffled: the gate must reject it"),
    ("malformed.csv", "no label column, a text value in a number column: validation rejects it"),
]


def run_demo(
    *,
    example: str = "tabular",
    keep: Path | None = None,
    console: Console | None = None,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    from tidal.cli import build_endpoint
    from tidal.controller import Controller
    from tidal.examples import init_workspace
    from tidal.serving.server import BackgroundServer
    from tidal.workspace import Workspace

    say = console.print if console else (lambda *a, **k: None)
    started = time.monotonic()
    folder = keep or Path(tempfile.mkdtemp(prefix="tidal-demo-"))
    if keep and (keep / ".tidal").exists():
        shutil.rmtree(keep / ".tidal")
    init_workspace(folder, example=example, force=True)
    ws = Workspace.open(
        folder,
        overrides={
            "controller": {"poll_interval_s": 0.2},
            "serving": {"port": 0, "reload_interval_s": 0.1},
        },
    )
    say(f"[bold]Tidal demo[/] in {folder}", highlight=False)
    server = BackgroundServer(build_endpoint(ws), "127.0.0.1", 0)
    server.start()
    stop = threading.Event()
    controller = Controller(ws)
    controller.source.settle_s = 0.0  # the demo's files land atomically
    loop = threading.Thread(target=controller.serve_forever, args=(stop,), daemon=True)
    loop.start()
    say(
        f"endpoint {server.url}, controller watching {ws.store.uri('incoming/')}\n", highlight=False
    )
    rows: list[dict[str, Any]] = []
    try:
        for name, story in STORY:
            path = folder / "data" / name
            say(f"[bold]→ {name}[/]: {story}", highlight=False)
            landed = time.time()
            _, sha = controller.ingest(path)
            record = _wait_record(ws, sha, timeout_s)
            served_s = None
            if record["decision"] == "promoted":
                served_s = _wait_served(server.url, record["version"], landed, timeout_s)
            rows.append(_row(name, record, served_s))
            _say_record(say, record, served_s)
        sample = _sample_predictions(
            server.url, folder / "data" / "batch-2.csv", ws.config.data.label_column
        )
        say("\nServed predictions (first rows of batch-2.csv):")
        for truth, pred in sample:
            say(
                f"  truth {truth:<10} predicted {pred['label']:<10} score {pred['score']:.3f}",
                highlight=False,
            )
        quarantined = [i.key for i in ws.store.list("quarantine")]
    finally:
        stop.set()
        loop.join(timeout=30)
        server.stop()
    champion = ws.state.current_deployment(ws.model_name)
    summary = {
        "workspace": str(folder),
        "endpoint": server.url,
        "runs": rows,
        "champion": champion.version if champion else None,
        "quarantine": quarantined,
        "seconds": round(time.monotonic() - started, 2),
    }
    if console is not None:
        _say_table(console, summary)
    if keep is None:
        shutil.rmtree(folder, ignore_errors=True)
        summary["workspace"] = None
    return summary


def _wait_record(ws: Any, sha: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = ws.state.run_by_sha(ws.model_name, sha)
        if run is not None and run.record is not None and run.status.value in ("done", "failed"):
            record: dict[str, Any] = run.record
            return record
        time.sleep(0.05)
    raise TimeoutError(f"no decision within {timeout_s} s")


def _wait_served(url: str, version: str, landed: float, timeout_s: float) -> float:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{url}/ping", timeout=2).json()
        except httpx.HTTPError:
            body = {}
        if str(body.get("model_version")) == str(version):
            return round(time.time() - landed, 2)
        time.sleep(0.02)
    raise TimeoutError(f"v{version} was not served within {timeout_s} s")


def _sample_predictions(url: str, path: Path, label: str, n: int = 5) -> list[tuple[str, Any]]:
    import httpx
    import pandas as pd

    frame = pd.read_csv(path).head(n)
    truth = frame.pop(label).tolist()
    response = httpx.post(
        f"{url}/invocations", json={"instances": frame.to_dict("records")}, timeout=10
    )
    response.raise_for_status()
    return list(zip(truth, response.json()["predictions"], strict=True))


def _row(name: str, record: dict[str, Any], served_s: float | None) -> dict[str, Any]:
    combined = ((record.get("metrics") or {}).get("candidate") or {}).get("combined") or {}
    return {
        "file": name,
        "decision": record["decision"],
        "version": record.get("version"),
        "champion": record.get("champion"),
        "accuracy": combined.get("accuracy"),
        "macro_f1": combined.get("macro_f1"),
        "run_seconds": record.get("seconds"),
        "landing_to_serving_s": served_s,
        "reasons": record.get("reasons"),
        "sha256": record.get("sha256"),
    }


def _say_record(say: Any, record: dict[str, Any], served_s: float | None) -> None:
    decision = record["decision"]
    color = {"promoted": "green", "rejected": "yellow"}.get(decision, "red")
    line = f"  [{color}]{decision}[/]"
    if record.get("version"):
        line += f" v{record['version']}"
    line += f", champion {('v' + str(record['champion'])) if record.get('champion') else 'none'}"
    if served_s is not None:
        line += f", serving {served_s:.2f} s after landing"
    say(line, highlight=False)
    for reason in (record.get("reasons") or [])[:4]:
        say(f"    - {reason}", highlight=False)


def _say_table(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="Summary", box=None)
    for col in (
        "file",
        "decision",
        "version",
        "champion after",
        "accuracy",
        "macro-F1",
        "run s",
        "landing→serving s",
    ):
        table.add_column(col)
    for r in summary["runs"]:
        table.add_row(
            r["file"],
            r["decision"],
            f"v{r['version']}" if r["version"] else "-",
            f"v{r['champion']}" if r["champion"] else "-",
            f"{r['accuracy']:.3f}" if r["accuracy"] is not None else "-",
            f"{r['macro_f1']:.3f}" if r["macro_f1"] is not None else "-",
            f"{r['run_seconds']:.2f}" if r["run_seconds"] is not None else "-",
            f"{r['landing_to_serving_s']:.2f}" if r["landing_to_serving_s"] else "-",
        )
    console.print()
    console.print(table)
    console.print(f"quarantine: {', '.join(summary['quarantine']) or 'empty'}", highlight=False)
    console.print(f"demo took {summary['seconds']:.1f} s", highlight=False)
