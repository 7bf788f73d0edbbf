"""The incremental label join: a pass reads the new labels and the capture hours they name."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tidal.monitoring.feedback import FeedbackStore, join
from tidal.monitoring.labels import matched_rows, quality_report, sync
from tidal.serving.capture import (
    CAPTURE_PREFIX,
    CaptureWriter,
    inference_time,
    new_inference_id,
    read_capture,
)
from tidal.workspace import Workspace
from toy import traffic_answers, traffic_rows


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    (tmp_path / "tidal.yaml").write_text("project: toy\n", encoding="utf-8")
    return Workspace.open(tmp_path)


def serve(ws: Workspace, at: float, requests: int) -> list[str]:
    """Capture ``requests`` two-row requests made at ``at``, one object each; their ids."""
    ids = []
    writer = CaptureWriter(ws.store, CAPTURE_PREFIX, flush_interval_s=60.0, clock=lambda: at)
    for i in range(requests):
        rows = traffic_rows(2, seed=i)
        ids.append(new_inference_id(at))
        writer.offer("toy", "1", "default", ids[-1], 1.0, rows, traffic_answers(rows))
        assert writer.flush()
    writer.close()
    return ids


def test_ids_name_their_time_and_sort_by_it() -> None:
    earlier, later = new_inference_id(1_700_000_000.0), new_inference_id(1_700_000_000.5)
    assert inference_time(earlier) == 1_700_000_000.0 and earlier < later
    assert len(earlier) == 32 and earlier[12] == "7"  # the UUIDv7 layout
    assert inference_time("9f0c" * 8) is None  # a uuid4 hex: no time in it


def test_a_pass_reads_only_the_hours_its_new_labels_name(ws: Workspace) -> None:
    now = time.time()
    old = serve(ws, now - 10 * 3600, 5)  # ten hours ago: 5 objects
    recent = serve(ws, now, 3)  # this hour: 3 objects
    feedback = FeedbackStore(ws.store)
    feedback.add([{"inference_id": i, "row": 1, "label": "high"} for i in recent])

    first = sync(ws)
    assert (first.labels, first.matched, first.objects) == (3, 3, 3)  # the 5 old ones unread
    assert not first.full_scan
    again = sync(ws)
    assert (again.labels, again.matched, again.objects) == (0, 0, 0)  # nothing new: no reading

    # a label of the old hour, for a row never served: looked for once, then unmatched for good
    feedback.add([{"inference_id": old[0], "row": 0, "label": "low"},
                  {"inference_id": old[1], "row": 7, "label": "low"}])  # fmt: skip
    third = sync(ws)
    assert (third.labels, third.matched, third.objects) == (2, 1, 5)
    assert sync(ws).objects == 0

    # a corrected label replaces the first one: counted, and the latest wins
    feedback.add([{"inference_id": recent[0], "row": 1, "label": "low"}])
    sync(ws)
    report = quality_report(ws, window_s=3600)
    assert (report.labels, report.duplicates, report.matched, report.unmatched) == (6, 1, 4, 1)
    (total,) = report.totals
    predicted = {(recent[i], 1): traffic_answers(traffic_rows(2, seed=i))[1]["label"]
                 for i in range(3)}  # fmt: skip
    predicted[(old[0], 0)] = traffic_answers(traffic_rows(2, seed=0))[0]["label"]
    given = {(recent[0], 1): "low", (recent[1], 1): "high", (recent[2], 1): "high",
             (old[0], 0): "low"}  # fmt: skip
    assert total.samples == 4
    assert total.correct == sum(predicted[key] == label for key, label in given.items())


def test_labels_of_ids_without_a_time_are_looked_for_in_all_traffic_once(
    ws: Workspace,
) -> None:
    now = time.time()
    serve(ws, now - 3 * 3600, 2)
    writer = CaptureWriter(ws.store, CAPTURE_PREFIX, flush_interval_s=60.0)
    rows = traffic_rows(1, seed=9)
    writer.offer("toy", "1", "default", "legacy-id", 1.0, rows, traffic_answers(rows))
    assert writer.flush()
    writer.close()
    FeedbackStore(ws.store).add([{"inference_id": "legacy-id", "label": "high"},
                                 {"inference_id": "never-served", "label": "high"}])  # fmt: skip

    found = sync(ws)
    assert found.full_scan and found.objects == 3 and found.matched == 1
    assert sync(ws).objects == 0  # the unmatched one is not looked for again


def test_a_crafted_id_is_counted_and_skipped_never_stopping_the_pass(ws: Workspace) -> None:
    # 'ffffffffffff7fff…' is time-ordered in form but names the year 10889: it crashed the pass
    # (ValueError in datetime) before; now it is given up at once, and the others are joined
    recent = serve(ws, time.time(), 2)
    FeedbackStore(ws.store).add(
        [{"inference_id": "ffffffffffff7fffffffffffffffffff", "label": "high"},
         *({"inference_id": i, "row": 1, "label": "high", } for i in recent)],
        key="sha256:0123456789ab",
    )  # fmt: skip

    found = sync(ws)

    assert (found.labels, found.matched, found.invalid) == (3, 2, 1)
    report = quality_report(ws, window_s=3600)
    assert (report.matched, report.unmatched) == (2, 1)
    assert sync(ws).invalid == 0  # given up for good: not looked for again
    (event,) = [e for e in ws.state.events(10) if e["kind"] == "labels.received"]
    assert event["data"]["key"] == "sha256:0123456789ab" and event["data"]["labels"] == 3
    assert "3 late labels from sha256:0123456789ab" in event["message"]


def test_quality_counted_by_sqlite_equals_the_row_by_row_join(ws: Workspace) -> None:
    # three versions over three hours, labels right about 70% of the time, some corrected
    import random

    rng = random.Random(4)
    now = time.time()
    writer = CaptureWriter(ws.store, CAPTURE_PREFIX, flush_interval_s=60.0)
    labels = []
    for i in range(600):
        at = now - 3 * 3600 + i * 18
        writer.clock = lambda at=at: at
        inference_id = new_inference_id(at)
        rows = traffic_rows(1, seed=i)
        version = str(1 + i % 3)
        writer.offer("toy", version, "default", inference_id, 1.0, rows, traffic_answers(rows))
        truth = traffic_answers(rows)[0]["label"]
        if rng.random() < 0.3:
            truth = "high" if truth == "low" else "low"
        labels.append({"inference_id": inference_id, "label": truth})
    assert writer.flush()
    writer.close()
    labels += [dict(x, label="high") for x in rng.sample(labels, 50)]  # corrections come later
    FeedbackStore(ws.store).add(labels)
    sync(ws)
    # 1800 s: from the counted cells; 1000 s (not whole minutes): from the rows
    for window_s in (1800, 1000):
        counted = quality_report(ws, window_s=window_s)
        captured = read_capture(ws.store, CAPTURE_PREFIX, "toy")
        expected = join(captured, labels, window_s=window_s)
        assert counted.matched == expected.matched == 600 and counted.duplicates == 50
        assert len(counted.windows) == len(expected.windows) > 6
        for mine, theirs in zip(counted.totals + counted.windows,
                                expected.totals + expected.windows, strict=True):  # fmt: skip
            assert (mine.version, mine.window_start, mine.samples, mine.correct) == (
                theirs.version, theirs.window_start, theirs.samples, theirs.correct
            )  # fmt: skip
            assert mine.macro_f1 == pytest.approx(theirs.macro_f1)


def test_a_label_that_comes_before_its_prediction_is_counted_once_it_is_joined(
    ws: Workspace,
) -> None:
    at = time.time()
    early = new_inference_id(at)
    FeedbackStore(ws.store).add([{"inference_id": early, "label": "high"}])
    sync(ws)
    report = quality_report(ws, window_s=3600)
    assert (report.matched, report.unmatched, report.totals) == (0, 1, [])
    writer = CaptureWriter(ws.store, CAPTURE_PREFIX, flush_interval_s=60.0, clock=lambda: at)
    rows = [{"x": 1.0, "color": "red"}]
    writer.offer("toy", "1", "default", early, 1.0, rows, traffic_answers(rows))  # "high"
    assert writer.flush()
    writer.close()
    assert sync(ws).matched == 1
    (total,) = quality_report(ws, window_s=3600).totals
    assert (total.samples, total.correct) == (1, 1)


def test_the_join_keeps_where_an_input_is_not_a_copy_of_it(ws: Workspace) -> None:
    at = time.time()
    ids = serve(ws, at, 3)
    FeedbackStore(ws.store).add([{"inference_id": i, "row": 1, "label": "high"} for i in ids])
    sync(ws)
    with ws.state.tx() as db:
        stored = db.execute("SELECT input, source FROM labels ORDER BY inference_id").fetchall()
    assert all(r["input"] is None and r["source"].startswith(CAPTURE_PREFIX) for r in stored)
    given = {tuple(sorted(row.items())) for row, _, _ in matched_rows(ws)}
    assert given == {tuple(sorted(traffic_rows(2, seed=i)[1].items())) for i in range(3)}

    # a capture object deleted since: its input comes back empty (a retrain counts it unusable)
    ws.store.delete(stored[0]["source"])
    inputs = [row for row, _, _ in matched_rows(ws)]
    assert sorted(len(row) for row in inputs) == [0, 2, 2]
