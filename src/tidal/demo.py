"""``tidal demo``: the whole loop, for real, in a fresh workspace.

A controller and an endpoint run in this process (as ``tidal up`` runs them); files land in
``incoming/`` one after another, and for each the demo waits for the decision and, when a
version is promoted, for the endpoint to answer with it. The story depends on the example:

tabular (and wine), about a minute and a half with the second act:
1. batch 1 → v1 promoted and served;
2. batch 2 → v2 registered, promoted only if not worse than v1 on the same data;
3. batch 3 with shuffled labels → rejected by the gate, champion unchanged;
4. a malformed file → rejected by validation, moved to quarantine/ with its reasons.

sentiment (MiniLM fine-tuned on movie reviews; about 11 minutes on two idle CPU cores):
1. 2,000 reviews → v1 promoted and served;
2. 4,000 more → v2 trained on all of them, promoted if not worse than v1 on the same reviews;
3. a malformed file → quarantined. (No shuffled-labels batch: another training on every
   accepted review would double the demo's time to show what the tabular story shows.)

Then the endpoint answers a few requests: rows of batch-2 for tabular examples, sentences
written for the demo for text ones. And the second act (``tidal.demo_monitor``) plays
``data/traffic.csv`` against the champion: drift found by ``tidal monitor``, late labels, a
retrain started by the policy, the gate, and a canary.
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

from tidal.errors import TidalError

Story = list[tuple[str, str]]

TABULAR_STORY: Story = [
    ("batch-1.csv", "first data: v1 should be promoted and served"),
    ("batch-2.csv", "more data: v2 is promoted only if not worse than v1"),
    ("batch-3-shuffled-labels.csv", "labels shuffled: the gate must reject it"),
    ("malformed.csv", "no label column, a text value in a number column: validation rejects it"),
]
TEXT_STORY: Story = [
    (
        "batch-1.csv",
        "2,000 reviews: MiniLM fine-tuned into v1, which should be promoted and served",
    ),
    (
        "batch-2.csv",
        "4,000 more reviews: v2 trains on all of them and should beat v1 on the same held-out "
        "reviews",
    ),
    ("malformed.csv", "no label column, a quarter of the texts empty: validation rejects it"),
]
STORIES: dict[str, Story] = {"tabular": TABULAR_STORY, "text": TEXT_STORY}
STORY = TABULAR_STORY  # the default example's story

TIMEOUTS_S = {"tabular": 120.0, "text": 1800.0}  # per decision: fine-tuning takes minutes on CPU

SENTENCES = [  # not from the corpus: what a user might type
    "a moving, beautifully acted film",
    "a tedious, overlong mess with nothing to say",
    "the plot is thin, but the jokes land and the cast is having a ball",
    "I wanted my two hours back before the opening credits ended",
    "an instant classic: smart, funny and surprisingly tender",
]


def story_of(example: str) -> Story:
    """The files the demo lands for ``example``, each with what should happen to it."""
    from tidal.examples import EXAMPLES

    return STORIES[EXAMPLES[example].task]


def run_demo(
    *,
    example: str = "tabular",
    keep: Path | None = None,
    console: Console | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Tell ``example``'s story; returns the summary (runs, champion, quarantine, predictions).

    ``timeout_s`` bounds the wait for each decision (default: by the example's task).
    """
    from tidal.cli import build_endpoint
    from tidal.controller import Controller
    from tidal.errors import UsageError
    from tidal.examples import EXAMPLES, init_workspace
    from tidal.serving.server import BackgroundServer
    from tidal.workspace import Workspace

    if example not in EXAMPLES:
        raise UsageError(
            f"unknown example {example!r}", hint=f"choose one of: {', '.join(sorted(EXAMPLES))}"
        )
    task = EXAMPLES[example].task
    if task == "text":
        _check_text_extra()
    wait_s = timeout_s if timeout_s is not None else TIMEOUTS_S[task]
    say = console.print if console else (lambda *a, **k: None)
    started = time.monotonic()
    folder = keep or Path(tempfile.mkdtemp(prefix="tidal-demo-"))
    if keep and (keep / ".tidal").exists():
        shutil.rmtree(keep / ".tidal")
    init_workspace(folder, example=example, force=True)
    from tidal.demo_monitor import act_overrides, run_act, traffic_sizes
    from tidal.serving.auth import new_key

    traffic = folder / "data" / "traffic.csv"
    act = act_overrides(*traffic_sizes(traffic, EXAMPLES[example].label_column))
    feedback_key, feedback_hash = new_key()  # the demo's label sender has its own key
    ws = Workspace.open(
        folder,
        overrides=act
        | {
            "controller": {"poll_interval_s": 0.2},
            "serving": act["serving"]
            | {"port": 0, "reload_interval_s": 0.1, "feedback_keys": [feedback_hash]},
        },
    )
    say(f"[bold]Tidal demo[/] ({example}) in {folder}", highlight=False)
    server = BackgroundServer(build_endpoint(ws), "127.0.0.1", 0)
    server.start()
    stop = threading.Event()
    status = console.status("") if console is not None and console.is_terminal else None
    controller = Controller(ws, progress=_progress(status))
    controller.source.settle_s = 0.0  # the demo's files land atomically
    loop = threading.Thread(target=controller.serve_forever, args=(stop,), daemon=True)
    loop.start()
    say(
        f"endpoint {server.url}, controller watching {ws.store.uri('incoming/')}\n", highlight=False
    )
    rows: list[dict[str, Any]] = []
    try:
        for name, story in story_of(example):
            path = folder / "data" / name
            say(f"[bold]→ {name}[/]: {story}", highlight=False)
            landed = time.time()
            _, sha = controller.ingest(path)
            if status is not None:
                status.update(f"{name}: waiting for the controller…")
                status.start()
            try:
                record = _wait_record(ws, sha, wait_s)
                served_s = None
                if record["decision"] == "promoted":
                    served_s = _wait_served(server.url, record["version"], landed, wait_s)
            finally:
                if status is not None:
                    status.stop()
            rows.append(_row(name, record, served_s))
            _say_record(say, record, served_s)
        predictions: list[dict[str, Any]] = []
        if not any(r["decision"] == "promoted" for r in rows):
            say("\nNo version was promoted, so the endpoint has nothing to serve.")
        elif task == "text":
            predictions = _text_predictions(server.url, SENTENCES)
            say("\nServed predictions (sentences written for the demo):")
        else:
            predictions = _sample_predictions(
                server.url, folder / "data" / "batch-2.csv", ws.config.data.label_column
            )
            say("\nServed predictions (first rows of batch-2.csv):")
        for item in predictions:
            say(_prediction_line(item), highlight=False)
        quarantined = [i.key for i in ws.store.list("quarantine")]
        monitoring = None
        if any(r["decision"] == "promoted" for r in rows):
            monitoring = run_act(
                ws,
                server.url,
                traffic,
                say=say,
                wait_record=_wait_record,
                say_record=_say_record,
                wait_s=wait_s,
                wait_served=_wait_served,
                feedback_key=feedback_key,
            )
    finally:
        stop.set()
        loop.join(timeout=30)
        server.stop()
    champion = ws.state.current_deployment(ws.model_name)
    summary = {
        "example": example,
        "workspace": str(folder),
        "endpoint": server.url,
        "runs": rows,
        "champion": champion.version if champion else None,
        "quarantine": quarantined,
        "predictions": predictions,
        "monitoring": monitoring,
        "seconds": round(time.monotonic() - started, 2),
    }
    if console is not None:
        _say_table(console, summary)
    if keep is None:
        shutil.rmtree(folder, ignore_errors=True)
        summary["workspace"] = None
    return summary


def _check_text_extra() -> None:
    """Refuse a text story up front when the text extra or the reviews are missing."""
    from tidal.examples import require_sentiment

    require_sentiment()


def _progress(status: Any) -> Any:
    """A pipeline progress callback that shows the step (and training steps) on ``status``."""

    def report(step: str, info: dict[str, Any]) -> None:
        if status is None:
            return
        event = info.get("event")
        if event == "start":
            status.update(f"{step}…")
        elif event == "progress":
            line = f"{step}: step {info.get('step')}/{info.get('total')}"
            if isinstance(info.get("loss"), float):
                line += f", loss {info['loss']:.3f}"
            if isinstance(info.get("eta_s"), (int, float)):
                line += f", about {info['eta_s']:.0f} s left"
            status.update(line)

    return report


def _wait_record(ws: Any, sha: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = ws.state.run_by_sha(ws.model_name, sha)
        if run is not None and run.record is not None and run.status.value in ("done", "failed"):
            record: dict[str, Any] = run.record
            return record
        time.sleep(0.05)
    raise TidalError(
        f"no decision within {timeout_s:.0f} s",
        hint="a busy machine trains slowly; look at the workspace with --keep DIR and "
        "'tidal status'",
    )


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
    raise TidalError(f"v{version} was not served within {timeout_s:.0f} s")


def _sample_predictions(url: str, path: Path, label: str, n: int = 5) -> list[dict[str, Any]]:
    """The served predictions for the first ``n`` rows of ``path``, with their true labels."""
    import httpx
    import pandas as pd

    frame = pd.read_csv(path).head(n)
    truth = frame.pop(label).tolist()
    response = httpx.post(
        f"{url}/invocations", json={"instances": frame.to_dict("records")}, timeout=10
    )
    response.raise_for_status()
    return [
        {"truth": t, "label": p["label"], "score": p["score"]}
        for t, p in zip(truth, response.json()["predictions"], strict=True)
    ]


def _text_predictions(url: str, sentences: list[str]) -> list[dict[str, Any]]:
    """The served predictions for ``sentences``, sent as the bare strings a text model takes."""
    import httpx

    response = httpx.post(f"{url}/invocations", json={"inputs": sentences}, timeout=30)
    response.raise_for_status()
    return [
        {"text": text, "label": p["label"], "score": p["score"]}
        for text, p in zip(sentences, response.json()["predictions"], strict=True)
    ]


def _prediction_line(item: dict[str, Any]) -> str:
    predicted = f"predicted {item['label']!s:<10} score {item['score']:.3f}"
    if "text" in item:
        return f"  {predicted}  {item['text']!r}"
    return f"  truth {item['truth']!s:<10} {predicted}"


def _row(name: str, record: dict[str, Any], served_s: float | None) -> dict[str, Any]:
    metrics = record.get("metrics") or {}
    candidate = metrics.get("candidate") or {}
    combined = candidate.get("combined") or {}
    champion = (metrics.get("champion") or {}).get("combined") or {}
    rollout = record.get("rollout_status")  # set by the demo's second act after its canary
    return {
        "file": name,
        "decision": f"canary {rollout}" if rollout else record["decision"],
        "version": record.get("version"),
        "champion": record.get("champion"),
        "accuracy": combined.get("accuracy"),
        "macro_f1": combined.get("macro_f1"),
        "holdout_accuracy": (candidate.get("holdout") or {}).get("accuracy"),
        "champion_accuracy": champion.get("accuracy"),  # the champion before, on the same rows
        "run_seconds": record.get("seconds"),
        "landing_to_serving_s": served_s,
        "reasons": record.get("reasons"),
        "sha256": record.get("sha256"),
    }


def _say_record(
    say: Any, record: dict[str, Any], served_s: float | None, *, rollout: str = "rollout"
) -> None:
    """The run's decision in one line, then its metrics and reasons. A version that passed the
    gate while a champion serves is not the champion yet: its ``rollout`` (the strategy's name)
    starts, and decides."""
    decision = record["decision"]
    color = {"promoted": "green", "rejected": "yellow"}.get(decision, "red")
    serving = f"v{record['champion']}" if record.get("champion") else "none"
    if decision == "promoted" and record.get("champion") not in (None, record.get("version")):
        line = (
            f"  [green]registered v{record['version']}[/] (gate passed); {rollout} starting, "
            f"champion stays {serving} until it completes"
        )
    else:
        line = f"  [{color}]{decision}[/]"
        if record.get("version"):
            line += f" v{record['version']}"
        line += f", champion {serving}"
    if served_s is not None:
        line += f", serving {served_s:.2f} s after landing"
    say(line, highlight=False)
    metrics = record.get("metrics") or {}
    candidate = (metrics.get("candidate") or {}).get("combined")
    if candidate:
        line = f"    accuracy {candidate['accuracy']:.3f}, macro-F1 {candidate['macro_f1']:.3f}"
        champion = (metrics.get("champion") or {}).get("combined")
        if champion:
            line += (
                f" (champion v{record.get('champion_before')} on the same rows: "
                f"{champion['accuracy']:.3f} / {champion['macro_f1']:.3f})"
            )
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
        "holdout acc",
        "champion before acc",
        "run s",
        "landing→serving s",
    ):
        table.add_column(col)
    act = summary.get("monitoring") or {}
    retrain = (
        [_row(Path(act["run"]["source"]).name, act["run"], act.get("served_s"))]
        if act.get("run")
        else []
    )
    for r in summary["runs"] + retrain:
        table.add_row(
            r["file"],
            r["decision"],
            f"v{r['version']}" if r["version"] else "-",
            f"v{r['champion']}" if r["champion"] else "-",
            _number(r["accuracy"]),
            _number(r["macro_f1"]),
            _number(r["holdout_accuracy"]),
            _number(r["champion_accuracy"]),
            _number(r["run_seconds"], 2),
            _number(r["landing_to_serving_s"], 2),
        )
    console.print()
    console.print(table)
    console.print(f"quarantine: {', '.join(summary['quarantine']) or 'empty'}", highlight=False)
    console.print(f"demo took {summary['seconds']:.1f} s", highlight=False)


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
