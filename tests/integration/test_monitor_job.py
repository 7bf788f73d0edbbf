"""The monitoring job end to end on a file store: capture → windows → drift report → alarm."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tidal.artifact import Manifest
from tidal.monitoring.job import (
    CAPTURE_PREFIX,
    MonitorJob,
    build_baseline,
    load_baseline,
    save_baseline,
)
from tidal.monitoring.report import write_report
from tidal.serving.capture import CaptureWriter
from tidal.workspace import Workspace
from toy import TRAFFIC_FEATURES as FEATURES
from toy import traffic_answers, traffic_rows


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    (tmp_path / "tidal.yaml").write_text("project: toy\n", encoding="utf-8")
    return Workspace.open(tmp_path)


@pytest.fixture
def capture(ws: Workspace) -> Iterator[CaptureWriter]:
    writer = CaptureWriter(ws.store, CAPTURE_PREFIX, flush_interval_s=60.0)
    yield writer
    writer.close()


def send(capture: CaptureWriter, version: str, batch: list[dict[str, Any]], rid: str) -> None:
    assert capture.offer("toy", version, "default", rid, 1.0, batch, traffic_answers(batch)) == len(
        batch
    )
    assert capture.flush()


def make_baseline(ws: Workspace) -> None:
    frame = pd.DataFrame(traffic_rows(2000, seed=0))
    manifest = Manifest("python", "tabular", FEATURES, ["high", "low"], "label")
    holdout = [a["label"] for a in traffic_answers(traffic_rows(500, seed=1))]
    uri = save_baseline(ws, "1", build_baseline(ws, frame, manifest, holdout))
    assert uri.endswith("_tidal/baselines/v1.json")


def test_baseline_round_trips_through_the_store(ws: Workspace) -> None:
    assert load_baseline(ws, "1") is None
    make_baseline(ws)
    loaded = load_baseline(ws, "1")
    assert loaded is not None
    assert list(loaded.features) == ["x", "color"]
    assert loaded.rows == 2000
    assert set(loaded.predictions) == {"high", "low"}


def test_run_once_reads_new_traffic_only_and_alarms_on_drift(
    ws: Workspace, capture: CaptureWriter
) -> None:
    make_baseline(ws)
    job = MonitorJob(ws)

    send(capture, "1", traffic_rows(300, seed=2), "calm")
    first = job.run_once()
    assert (first["objects"], first["records"]) == (1, 300)
    v1 = first["versions"]["1"]
    assert v1["status"] in ("ok", "insufficient_data")
    assert (v1["rows"], v1["records"], v1["drifted"]) == (300, 300, [])
    assert not [e for e in ws.state.events() if e["kind"] in ("drift", "alert")]

    send(capture, "1", traffic_rows(300, seed=3, shift=3.0), "shifted")
    second = job.run_once()
    assert (second["objects"], second["records"]) == (1, 300)
    v1 = second["versions"]["1"]
    assert v1["status"] == "drifted"
    assert v1["rows"] == 600  # merged into the stored window of the period
    assert v1["drifted"][0] == "x"
    report = json.loads(ws.store.get_bytes(v1["report"]))
    assert report["status"] == "drifted" and report["version"] == "1"
    window_key = f"_tidal/monitor/v1/window-{int(v1['window_start'])}.json"
    assert ws.store.exists(window_key)
    kinds = [e["kind"] for e in ws.state.events()]
    assert kinds.count("drift") == 1 and kinds.count("alert") == 1
    alert = next(e for e in ws.state.events() if e["kind"] == "alert")
    assert alert["data"]["key"] == "drift-v1"
    assert alert["data"]["data"]["drifted"][0] == "x"

    third = job.run_once()
    assert (third["objects"], third["records"], third["versions"]) == (0, 0, {})
    assert job.latest_report("1") == report  # nothing new: the report stays as it was


def test_a_version_without_baseline_is_reported(ws: Workspace, capture: CaptureWriter) -> None:
    make_baseline(ws)
    send(capture, "2", traffic_rows(50, seed=4), "unknown")
    result = MonitorJob(ws).run_once()
    assert result["versions"] == {"2": {"status": "no_baseline", "records": 50}}
    assert not ws.store.list("_tidal/monitor/v2")


def test_an_interrupted_run_never_counts_an_object_twice(
    ws: Workspace, capture: CaptureWriter
) -> None:
    make_baseline(ws)
    send(capture, "1", traffic_rows(250, seed=5), "once")
    job = MonitorJob(ws)
    job.run_once()
    with ws.state.tx() as db:  # as if the run had died after the windows, before marking
        db.execute("DELETE FROM seen")
    again = job.run_once()
    assert again["records"] == 250  # read again, but the window already holds that object
    assert again["versions"]["1"]["rows"] == 250


def test_count_windows_hold_a_fixed_number_of_rows_in_capture_order(
    ws: Workspace, capture: CaptureWriter
) -> None:
    make_baseline(ws)
    job = MonitorJob(ws, window_rows=200)
    send(capture, "1", traffic_rows(250, seed=2), "calm-1")
    send(capture, "1", traffic_rows(200, seed=3), "calm-2")
    first = job.run_once()["versions"]["1"]
    # 450 rows: two full windows of 200 stored for good (the newest judged), 50 in the open one
    full = sorted(i.name for i in ws.store.list("_tidal/monitor/v1") if i.name.startswith("w"))
    assert full == ["window-n0.json", "window-n1.json"]
    assert (first["rows"], first["records"]) == (200, 450)
    report = job.latest_report("1")
    assert report is not None and report["window_index"] == 1 and report["window_rows"] == 200
    opened = json.loads(ws.store.get_bytes("_tidal/monitor/v1/count-open.json"))
    assert (opened["index"], opened["window"]["stats"]["rows"]) == (2, 50)
    send(capture, "1", traffic_rows(20, seed=9), "few")
    assert job.run_once()["versions"]["1"]["rows"] == 70  # none filled: the open one is judged

    # shifted traffic fills the open window (130 rows, judged full) and the next one (100 of 200)
    send(capture, "1", traffic_rows(230, seed=4, shift=3.0), "shifted")
    second = job.run_once()["versions"]["1"]
    assert second["rows"] == 200 and job.latest_report("1")["window_index"] == 2  # type: ignore[index]
    third_window = json.loads(ws.store.get_bytes("_tidal/monitor/v1/window-n2.json"))
    assert third_window["stats"]["rows"] == 200 and third_window["index"] == 2
    assert third_window["first_ts"] <= third_window["last_ts"]

    # a run cut short before its objects were marked read is redone: nothing counted twice
    with ws.state.tx() as db:
        db.execute("DELETE FROM seen")
    again = job.run_once()["versions"]["1"]
    assert again["records"] == 700 and again["rows"] == 100  # all read again, none added
    opened = json.loads(ws.store.get_bytes("_tidal/monitor/v1/count-open.json"))
    assert (opened["index"], opened["window"]["stats"]["rows"]) == (3, 100)
    assert json.loads(ws.store.get_bytes("_tidal/monitor/v1/window-n2.json")) == third_window

    # window_rows changed: the open window (100 shifted rows) takes 150 more and is judged full
    send(capture, "1", traffic_rows(250, seed=5, shift=3.0), "more")
    bigger = MonitorJob(ws, window_rows=250).run_once()["versions"]["1"]
    assert (bigger["rows"], bigger["status"], bigger["drifted"][0]) == (250, "drifted", "x")
    assert ws.store.exists("_tidal/monitor/v1/window-n3.json")

    # the report draws the full count windows over time, each at its first row's time
    drawn = write_report(ws, ws.root / "report.html")
    assert drawn["plots"]["drift_over_time"]
    page = (ws.root / "report.html").read_text(encoding="utf-8")
    assert "window-n" not in page and page.count("<svg") >= 2


def test_window_rows_must_be_positive(ws: Workspace) -> None:
    with pytest.raises(ValueError, match="window_rows must be at least 1"):
        MonitorJob(ws, window_rows=0)
