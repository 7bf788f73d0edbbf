"""Late labels through the endpoint: POST /feedback joined to captured predictions."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tidal.cli import build_endpoint
from tidal.cli_monitor import check
from tidal.deploy import promote
from tidal.serving.auth import key_id, new_key
from tidal.serving.capture import new_inference_id
from tidal.serving.server import BackgroundServer
from tidal.workspace import Workspace
from toy import register_toy_model


def test_late_labels_give_live_accuracy_per_version(tmp_path: Path) -> None:
    key, digest = new_key()
    (tmp_path / "tidal.yaml").write_text(
        "project: toy\nserving:\n  reload_interval_s: 0.1\n  capture_flush_interval_s: 0.2\n"
        f"  feedback_keys: ['{digest}']\nmonitoring:\n  min_accuracy: 0.9\n  min_labels: 20\n"
    )
    ws = Workspace.open(tmp_path)
    promote(ws, register_toy_model(ws, 1, "good"), reason="first")
    labels = []
    sender = {"Authorization": f"Bearer {key}"}
    with BackgroundServer(build_endpoint(ws)) as server, httpx.Client(base_url=server.url) as http:
        for x in range(1, 41):  # the model says "big" for every x > 0
            answer = http.post("/invocations", json={"instances": [{"x": x}]}, timeout=30)
            assert answer.status_code == 200
            truth = "big" if x <= 30 else "small"  # the last 10 were really small: 75% right
            labels.append({"inference_id": answer.headers["x-inference-id"], "label": truth})
        labels.append({"inference_id": new_inference_id(), "label": "big"})  # never served
        # without a key nobody may label: labels can retrain the model
        anonymous = http.post("/feedback", json={"labels": labels})
        assert anonymous.status_code == 401
        accepted = http.post("/feedback", json={"labels": labels}, headers=sender)
        assert accepted.status_code == 202 and accepted.json() == {"accepted": 41}
        bad = http.post("/feedback", json=[{"inference_id": new_inference_id()}], headers=sender)
        assert bad.status_code == 422 and "'label' missing" in bad.json()["error"]["message"]
        crafted = {"inference_id": "ffffffffffff7fffffffffffffffffff", "label": "big"}
        refused = http.post("/feedback", json=crafted, headers=sender)
        assert refused.status_code == 400 and "year 10889" in refused.json()["error"]["message"]
        time.sleep(0.6)  # the capture writer flushes every 0.2 s
    quality = check(ws)["quality"]
    assert quality["matched"] == 40 and quality["unmatched"] == 1
    (total,) = quality["totals"]
    assert total["version"] == "1" and total["samples"] == 40
    assert total["accuracy"] == 0.75
    # under monitoring.min_accuracy (0.9) with enough labels: an alarm, and an alert sent
    (alarm,) = quality["alarms"]
    assert alarm["metric"] == "accuracy" and alarm["value"] == 0.75 and alarm["floor"] == 0.9
    assert any(e["kind"] == "alert" and "accuracy" in e["message"] for e in ws.state.events(5))
    # the audit log says who sent the labels (the key's id, never the key)
    (received,) = [e for e in ws.state.events(20) if e["kind"] == "labels.received"]
    assert received["data"] == received["data"] | {"key": key_id(digest), "labels": 41}
    assert key not in received["message"]
