"""The monitoring report end to end: capture → monitor job → late labels → one HTML file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tidal.monitoring.baseline import Baseline
from tidal.monitoring.feedback import FeedbackStore
from tidal.monitoring.job import CAPTURE_PREFIX, MonitorJob, save_baseline
from tidal.monitoring.report import write_report
from tidal.serving.capture import CaptureWriter
from tidal.workspace import Workspace
from toy import TRAFFIC_FEATURES as FEATURES
from toy import traffic_answers, traffic_rows

T0 = 1_790_000_000.0 // 3600 * 3600  # an hour's start
CHROMIUM = Path("/usr/bin/chromium")


def monitored(tmp_path: Path) -> Workspace:
    """Two hours of traffic of v1: in distribution, then x shifted by 1.5 std; late labels."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "tidal.yaml").write_text("project: toy\n", encoding="utf-8")
    ws = Workspace.open(tmp_path)
    frame = pd.DataFrame(traffic_rows(2000, seed=0))
    holdout = [a["label"] for a in traffic_answers(traffic_rows(500, seed=1))]
    save_baseline(ws, "1", Baseline.from_frame(frame, FEATURES, holdout))
    clock = [T0 + 60]
    writer = CaptureWriter(ws.store, CAPTURE_PREFIX, flush_interval_s=60.0, clock=lambda: clock[0])
    labels = []
    try:
        for hour, shift in ((0, 0.0), (1, 1.5)):
            for i in range(30):  # 30 requests of 10 rows per hour
                clock[0] = T0 + hour * 3600 + 60 * i
                batch = traffic_rows(10, seed=100 * hour + i, shift=shift)
                rid = f"h{hour}-r{i}"
                writer.offer(
                    "toy", "1", "default", rid, 5.0 + i + 20 * hour, batch, traffic_answers(batch)
                )
                # the truth is "high" iff x > shift: right on every row in distribution
                labels += [
                    {"inference_id": rid, "row": j, "label": "high" if r["x"] > shift else "low"}
                    for j, r in enumerate(batch)
                ]
        assert writer.flush()
    finally:
        writer.close()
    summary = MonitorJob(ws).run_once(now=T0 + 2 * 3600)
    assert summary["versions"]["1"]["status"] == "drifted"
    assert FeedbackStore(ws.store).add(labels) == 600
    return ws


def test_report_draws_drift_quality_and_latency_in_one_file(tmp_path: Path) -> None:
    ws = monitored(tmp_path / "ws")
    out = tmp_path / "report.html"
    drawn = write_report(ws, out, now=T0 + 2 * 3600)

    assert drawn["plots"] == {
        "distributions": True,
        "drift_over_time": True,
        "quality_over_time": True,
        "latency": True,
    }
    assert drawn["versions"] == ["1"]
    assert drawn["features"][0] == {"version": "1", "name": "x"}  # the drifted one first
    page = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page)
    assert "<script" not in page and "@import" not in page
    assert page.count("<svg") == len(drawn["features"]) + 3
    assert "No data yet" not in page
    assert "x (v1) — PSI" in page and "drifted" in page
    assert "n=300" in page  # the samples per quality window
    assert "p99" in page and "latency (ms)" in page


def test_report_renders_in_a_browser(tmp_path: Path) -> None:
    """What a person sees: the page renders to a non-trivial image (where chromium is)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    out = tmp_path / "report.html"
    write_report(monitored(tmp_path / "ws"), out, now=T0 + 2 * 3600)
    shot = tmp_path / "report.png"
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
         f"--screenshot={shot}", "--window-size=1200,2400", out.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert shot.stat().st_size > 20_000


def test_report_without_monitoring_says_no_data_yet(tmp_path: Path) -> None:
    (tmp_path / "tidal.yaml").write_text("project: toy\n", encoding="utf-8")
    out = tmp_path / "report.html"
    drawn = write_report(Workspace.open(tmp_path), out, now=T0)
    assert not any(drawn["plots"].values())
    page = out.read_text(encoding="utf-8")
    assert page.count("No data yet") == 4 and page.count("<svg") == 4


def test_report_without_labels_has_no_quality_plot(tmp_path: Path) -> None:
    ws = monitored(tmp_path / "ws")
    for info in FeedbackStore(ws.store).files():
        ws.store.delete(info.key)
    drawn = write_report(ws, tmp_path / "r.html")
    assert drawn["plots"]["quality_over_time"] is False
    assert "no late labels matched" in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert drawn["plots"]["latency"] and drawn["plots"]["drift_over_time"]
