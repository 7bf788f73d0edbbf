"""The retrain policy on the real loop: a drift alarm, late labels, a retrain through the gate."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tidal.cli import build_endpoint
from tidal.cli_monitor import check
from tidal.controller import Controller
from tidal.examples import init_workspace
from tidal.monitoring.policy import decisions
from tidal.overview import status
from tidal.serving.auth import new_key
from tidal.serving.server import BackgroundServer
from tidal.workspace import Workspace

SHIFTED = "mean radius"


KEY, KEY_HASH = new_key()
SENDER = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    init_workspace(tmp_path, example="tabular")
    ws = Workspace.open(
        tmp_path,
        overrides={
            "serving": {
                "port": 0,
                "capture_flush_interval_s": 0.2,
                "feedback_keys": [KEY_HASH],
            },
            "monitoring": {"min_samples": 50},
            "retrain": {"min_rows": 120, "cooldown_s": 3600, "max_runs_per_day": 2},
        },
    )
    record = Controller(ws).run_object(Controller(ws).ingest(tmp_path / "data" / "batch-1.csv")[0])
    assert record["decision"] == "promoted" and record["version"] == "1"
    return ws


def serve_shifted(ws: Workspace, url: str, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Send ``frame``'s rows with SHIFTED tripled; returns a label for each served row."""
    label = ws.config.data.label_column
    rows = frame.drop(columns=[label]).assign(**{SHIFTED: frame[SHIFTED] * 3})
    answer = httpx.post(
        f"{url}/invocations", json={"instances": rows.to_dict("records")}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    inference_id = answer.headers["x-inference-id"]
    return [
        {"inference_id": inference_id, "row": i, "label": truth}
        for i, truth in enumerate(frame[label])
    ]


def test_an_alarm_with_enough_labels_retrains_through_the_gate(ws: Workspace) -> None:
    traffic = pd.read_csv(ws.root / "data" / "batch-2.csv")
    with BackgroundServer(build_endpoint(ws), "127.0.0.1", 0) as server:
        labels = serve_shifted(ws, server.url, traffic.iloc[:100])
        labels += serve_shifted(ws, server.url, traffic.iloc[100:200])
        # the first 80 labels arrive: drift stands, but too few labelled rows
        assert (
            httpx.post(
                f"{server.url}/feedback", json={"labels": labels[:80]}, headers=SENDER
            ).status_code
            == 202
        )
        time.sleep(0.6)  # the capture writer flushes every 0.2 s
        first = check(ws)
        assert first["versions"]["1"]["status"] == "drifted"
        assert SHIFTED in first["versions"]["1"]["drifted"]
        skip = first["retrain"]
        assert skip["action"] == "skip" and skip["reason"] == "too_few_rows"
        assert skip["new_rows"] == 80 and "retrain.min_rows is 120" in skip["message"]
        assert skip["alarms"][0]["kind"] == "drift"
        # the same skip again: one decision, repeated, not one row per pass
        again = check(ws)["retrain"]
        assert again["id"] == skip["id"] and again["repeats"] == 2
        # the other labels arrive: 200 labelled rows → a retrain
        assert (
            httpx.post(
                f"{server.url}/feedback", json={"labels": labels[80:]}, headers=SENDER
            ).status_code
            == 202
        )
        retrain = check(ws)["retrain"]
    assert retrain["action"] == "retrain", retrain
    assert retrain["new_rows"] == 200 and retrain["rows"] == 200
    landed = ws.store.get_bytes(ws.store.key_of(retrain["source"])).decode().splitlines()
    rows = [json.loads(line) for line in landed]
    assert len(rows) == 200
    label = ws.config.data.label_column
    assert [r[label] for r in rows[:5]] == traffic[label].iloc[:5].tolist()
    assert rows[0][SHIFTED] == pytest.approx(traffic[SHIFTED].iloc[0] * 3)  # what was served
    # the retrain run goes through the same loop: trained, judged against v1, registered
    record = Controller(ws).wait_for(retrain["run_id"], timeout_s=120)
    assert record["decision"] in ("promoted", "rejected")
    assert record["champion_before"] == "1" and record["metrics"]["champion"] is not None
    assert len(record["training_sets"]) == 2  # batch-1's train split and the labelled rows
    # right after it: the cooldown holds the next one back, and status shows the decision
    after = decisions(ws)
    assert [d.action for d in after] == ["retrain", "skip"]
    state = status(ws, check_endpoint=False)
    assert (
        state["retrain"]["action"] == "retrain" and state["retrain"]["run_id"] == record["run_id"]
    )


@pytest.fixture
def bare(tmp_path: Path) -> Workspace:
    """A workspace whose schema is known (x, color → label), with no model trained."""
    from tidal.data.schema import infer_schema
    from tidal.pipeline import SCHEMA_KEY
    from toy import traffic_answers, traffic_rows

    (tmp_path / "tidal.yaml").write_text("project: toy\n", encoding="utf-8")
    ws = Workspace.open(tmp_path)
    rows = traffic_rows(50, seed=0)
    frame = pd.DataFrame(rows).assign(label=[a["label"] for a in traffic_answers(rows)])
    ws.store.put_bytes(SCHEMA_KEY, infer_schema(frame, ws.config.data).to_json().encode())
    return ws


def test_labelled_rows_join_late_labels_to_the_served_inputs(bare: Workspace) -> None:
    from tidal.monitoring.feedback import FeedbackStore
    from tidal.monitoring.policy import labelled_rows
    from tidal.serving.capture import CAPTURE_PREFIX, CaptureWriter
    from toy import traffic_answers, traffic_rows

    served = traffic_rows(4, seed=3)
    writer = CaptureWriter(bare.store, CAPTURE_PREFIX, flush_interval_s=60.0)
    writer.offer("toy", "1", "default", "req-1", 1.0, served, traffic_answers(served))
    assert writer.flush()
    writer.close()
    feedback = FeedbackStore(bare.store)
    feedback.add([{"inference_id": "req-1", "row": 0, "label": "low"}])
    feedback.add([
        {"inference_id": "req-1", "row": 0, "label": "high"},  # later: this label wins
        {"inference_id": "req-1", "row": 1, "label": "medium"},  # not a class of the schema
        {"inference_id": "req-1", "row": 3, "label": "low"},
        {"inference_id": "never-served", "label": "low"},  # no input to train on
    ])  # fmt: skip

    found = labelled_rows(bare)

    assert found.rows == [served[0] | {"label": "high"}, served[3] | {"label": "low"}]
    assert found.unusable == 1
    assert found.since(None) == 2 and found.since(max(found.received_at)) == 0


def test_budgets_and_cooldown_are_checked_in_order(bare: Workspace) -> None:
    from tidal.monitoring.policy import Alarm, _decide

    ws = bare

    alarms = [Alarm("drift", "1", SHIFTED)]
    now = time.time()
    # a retrain ten minutes ago whose run trained for 5,000 s
    run, _ = ws.state.enqueue(ws.model_name, "s3://x/incoming/retrain-a.jsonl", "a" * 64, "train")
    ws.state.step_done(run.id, "train", "evaluate", {"train_seconds": 5000.0}, 5000.0)
    ws.state.finish(run.id, decision="rejected", record={"decision": "rejected"})
    ws.state.add_retrain_decision(
        ws.model_name,
        "retrain",
        {"action": "retrain", "reason": "retrain", "message": "", "alarms": [], "at": now - 600,
         "run_id": run.id, "cutoff": now - 600},
    )  # fmt: skip
    cfg = ws.config.retrain
    assert _decide(ws, alarms, now).reason == "cooldown"  # cooldown_s 3600: 50 min to go
    cfg.cooldown_s = 60
    cfg.max_runs_per_day = 1
    assert _decide(ws, alarms, now).reason == "runs_budget"
    cfg.max_runs_per_day = 5
    cfg.max_compute_s_per_day = 4000
    decision = _decide(ws, alarms, now)
    assert decision.reason == "compute_budget" and "5000 s" in decision.message
    cfg.max_compute_s_per_day = 10_000
    assert _decide(ws, alarms, now).reason == "too_few_rows"  # no labels at all
    cfg.triggers = ["quality"]
    assert _decide(ws, alarms, now).reason == "not_triggered"
    cfg.enabled = False
    assert _decide(ws, alarms, now).reason == "disabled"


def test_labels_that_cannot_be_checked_are_never_trained_on(bare: Workspace) -> None:
    from tidal.monitoring.feedback import FeedbackStore
    from tidal.monitoring.policy import Alarm, _decide
    from tidal.serving.capture import CAPTURE_PREFIX, CaptureWriter
    from toy import traffic_answers, traffic_rows

    served = traffic_rows(4, seed=3)
    writer = CaptureWriter(bare.store, CAPTURE_PREFIX, flush_interval_s=60.0)
    writer.offer("toy", "1", "default", "req-1", 1.0, served, traffic_answers(served))
    assert writer.flush()
    writer.close()
    FeedbackStore(bare.store).add(
        [{"inference_id": "req-1", "row": i, "label": "low"} for i in range(4)]
    )
    # a champion whose files are gone: the check cannot run, so nothing lands
    bare.state.deploy(bare.model_name, "1", str(bare.root / "gone"), "0" * 64, "test")
    bare.config.retrain.min_rows = 1
    decision = _decide(bare, [Alarm("quality", "1", "accuracy")], time.time())
    assert decision.action == "skip" and decision.reason == "unchecked", decision
    assert "nothing is trained on them" in decision.message
    assert bare.store.list("incoming") == []
