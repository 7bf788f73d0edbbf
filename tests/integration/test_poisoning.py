"""An attacker sends flipped labels through /feedback: the production model must not change.

The attack of issue 11 on the tabular example (breast cancer): ordinary requests, then a late
label for every served row, each the opposite of the truth (684 of them here). Before:
/feedback took them without a key, the retrain policy trained on them, and the gate promoted
the retrain (it compared the models on the poisoned file's own test split); a clearly
malignant row was then served as benign. Now: without a key the labels are refused; with a key
(stolen, or a careless sender) they are checked against the champion's holdout error and
quarantined; and a poisoned file that reaches the gate anyway is compared with the champion on
the frozen holdout only.
"""

from __future__ import annotations

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
from tidal.serving.auth import key_id, new_key
from tidal.serving.server import BackgroundServer
from tidal.workspace import Workspace

LABEL = "diagnosis"
KEY, KEY_HASH = new_key()
SENDER = {"Authorization": f"Bearer {KEY}"}
FLIP = {"benign": "malignant", "malignant": "benign"}


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    init_workspace(tmp_path, example="tabular")
    ws = Workspace.open(
        tmp_path,
        overrides={
            "serving": {"port": 0, "capture_flush_interval_s": 0.2, "feedback_keys": [KEY_HASH]},
            "monitoring": {"min_samples": 50, "min_accuracy": 0.8, "min_labels": 50},
            "retrain": {"min_rows": 120, "cooldown_s": 0},
        },
    )
    controller = Controller(ws)
    record = controller.run_object(controller.ingest(tmp_path / "data" / "batch-1.csv")[0])
    assert record["decision"] == "promoted" and record["version"] == "1"
    return ws


def attack(ws: Workspace, url: str) -> list[dict[str, Any]]:
    """The attack as issue 11 found it: rows the model never trained on (batch-2's and the
    traffic's, each twice) with a huge mean radius, served 32 a request; then a label for each,
    the opposite of the truth. Before the fix the retrain on them was promoted, and a row with
    mean radius 100 was then served as benign."""
    data = ws.root / "data"
    frame = pd.concat([pd.read_csv(data / f) for f in ("batch-2.csv", "traffic.csv")] * 2,
                      ignore_index=True).assign(**{"mean radius": 100.0})  # fmt: skip
    truth = frame.pop(LABEL)
    labels = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for start in range(0, len(frame), 32):
            part = frame.iloc[start : start + 32]
            answer = http.post("/invocations", json={"instances": part.to_dict("records")})
            assert answer.status_code == 200, answer.text
            inference_id = answer.headers["x-inference-id"]
            labels += [
                {"inference_id": inference_id, "row": i, "label": FLIP[truth.iloc[start + i]]}
                for i in range(len(part))
            ]
    return labels


def malignant_row(ws: Workspace) -> dict[str, Any]:
    """A clearly malignant row: a malignant one of batch-2 with mean radius 100."""
    frame = pd.read_csv(ws.root / "data" / "batch-2.csv")
    row = frame[frame[LABEL] == "malignant"].iloc[0].drop(LABEL).to_dict()
    return row | {"mean radius": 100.0}


def served_label(url: str, row: dict[str, Any]) -> str:
    answer = httpx.post(f"{url}/invocations", json={"instances": [row]}, timeout=30)
    assert answer.status_code == 200, answer.text
    label: str = answer.json()["predictions"][0]["label"]
    return label


def test_flipped_labels_are_refused_then_quarantined_and_the_champion_stays(
    ws: Workspace,
) -> None:
    with BackgroundServer(build_endpoint(ws), "127.0.0.1", 0) as server:
        labels = attack(ws, server.url)
        # anonymous: refused, nothing stored
        refused = httpx.post(f"{server.url}/feedback", json={"labels": labels})
        assert refused.status_code == 401
        # with a feedback key: taken in, with its provenance...
        sent = httpx.post(f"{server.url}/feedback", json={"labels": labels}, headers=SENDER)
        assert sent.status_code == 202 and sent.json() == {"accepted": len(labels)}
        time.sleep(0.6)  # the capture writer flushes every 0.2 s
        summary = check(ws)
        # ...seen as a quality drop, but quarantined by the check, never trained on
        assert summary["quality"]["alarms"], summary["quality"]
        decision = summary["retrain"]
        assert decision["action"] == "skip" and decision["reason"] == "quarantined", decision
        (sender,) = decision["checks"]["senders"]
        assert sender["key"] == key_id(KEY_HASH) and sender["quarantined"]
        assert sender["labels"] == len(labels) and sender["confident"] > 0.8 * len(labels)
        assert sender["rate"] > 0.9 and sender["p_value"] < 1e-100
        assert "contradict" in decision["message"]
        events = ws.state.events(50)
        (quarantined,) = [e for e in events if e["kind"] == "labels.quarantined"]
        assert quarantined["data"]["marked"] == len(labels)
        (received,) = [e for e in events if e["kind"] == "labels.received"]
        assert received["data"]["key"] == key_id(KEY_HASH)
        assert KEY not in str(events)
        # the next pass: nothing left to train on, no retrain, still v1
        assert check(ws)["retrain"]["reason"] == "too_few_rows"
        assert [r.id for r in ws.state.runs(ws.model_name)] == [1]
        assert ws.state.current_deployment(ws.model_name).version == "1"
        assert served_label(server.url, malignant_row(ws)) == "malignant"


def test_a_poisoned_retrain_that_slips_past_the_check_is_judged_on_the_holdout(
    ws: Workspace,
) -> None:
    ws.config.retrain.trust_margin = 1.0  # the check turned off: nothing is doubted
    with BackgroundServer(build_endpoint(ws), "127.0.0.1", 0) as server:
        labels = attack(ws, server.url)
        sent = httpx.post(f"{server.url}/feedback", json={"labels": labels}, headers=SENDER)
        assert sent.status_code == 202
        time.sleep(0.6)
        decision = check(ws)["retrain"]
        assert decision["action"] == "retrain", decision
        # one sender may bring at most validation.max_file_share of the training set
        assert decision["capped"] == {key_id(KEY_HASH): len(labels) - decision["rows"]}
        record = Controller(ws).wait_for(decision["run_id"], timeout_s=180)
        assert record["decision"] == "rejected", record
        # the comparison left the poisoned test split out, and the holdout said no
        untrusted = [r for r in record["reasons"] if "untrusted" in r]
        assert untrusted and untrusted[0].startswith("test:retrain-")
        combined = record["metrics"]["candidate"]["combined"]
        assert combined == record["metrics"]["candidate"]["holdout"]
        assert any("frozen holdout" in r and "never promoted" in r for r in record["reasons"])
        assert ws.state.current_deployment(ws.model_name).version == "1"
        assert served_label(server.url, malignant_row(ws)) == "malignant"


def test_rows_that_copy_the_frozen_holdout_are_rejected_as_leakage(ws: Workspace) -> None:
    from tidal.data.prepare import from_jsonl
    from tidal.pipeline import HOLDOUT_KEY

    holdout = from_jsonl(ws.store.get_bytes(HOLDOUT_KEY))
    batch = pd.read_csv(ws.root / "data" / "batch-2.csv")
    # the holdout's rows sent again, some with the other label: they must not train or test
    copies = holdout.assign(**{LABEL: [FLIP[x] if i % 2 else x for i, x in
                                       enumerate(holdout[LABEL])]})  # fmt: skip
    path = ws.root / "with-holdout.csv"
    pd.concat([batch, copies[batch.columns]], ignore_index=True).to_csv(path, index=False)
    controller = Controller(ws)
    record = controller.run_object(controller.ingest(path)[0])
    (note,) = record["notes"]
    assert note.startswith(f"{len(holdout)} rows of with-holdout.csv have the features of rows")
    assert "rejected (leakage)" in note
    prepared = ws.state.step_outputs(record["run_id"])["prepare"]["rows"]
    assert prepared["train"] + prepared["test"] == len(batch)
