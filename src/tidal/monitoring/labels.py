"""Late labels joined incrementally: a pass reads the new labels and the traffic they name.

Inference ids are time-ordered (``tidal.serving.capture.new_inference_id``, the UUIDv7 layout):
an id names the hour of its request, and so the capture partition of its record (that hour, or
the next for a request that straddled it). A pass (``sync``):

1. takes in dropped label files, and reads the received label objects it has not read before
   (``seen`` source ``labels:<model>``) into the ``labels`` table of the state database, one row
   per (inference_id, row): a later label replaces an earlier one (``replaced`` counts them);
2. looks for each pending label's record in the capture objects of the hours its id names, each
   object read once per pass, and stores what it finds beside the label: version, variant,
   time, predicted label and the input row;
3. a pending label looked for once its hours can no longer change (the hour's end plus
   ``LATE_S`` is past) is ``unmatched`` for good and never looked for again.

Labels whose ids carry no time (ids made before time-ordered ids) are looked for by one read of
all the capture, in the pass they arrive. So a pass costs the new labels and the hours they
name, never all traffic; live quality (``quality_report``) and the retrain policy's labelled
rows (``matched_rows``) read the table: one row per labelled prediction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tidal.monitoring.feedback import FeedbackStore, QualityReport, join
from tidal.monitoring.job import LATE_S, read_records
from tidal.serving.capture import CAPTURE_PREFIX, inference_time

if TYPE_CHECKING:
    from tidal.workspace import Workspace

HOUR_S = 3600.0
PENDING, MATCHED, UNMATCHED = "pending", "matched", "unmatched"


@dataclass
class SyncResult:
    labels: int = 0  # new labels read this pass
    matched: int = 0  # labels joined to their prediction this pass
    objects: int = 0  # capture objects read this pass
    full_scan: bool = False  # labels of ids without a time made this pass read all capture


def sync(ws: Workspace, *, now: float | None = None) -> SyncResult:
    """Take in new labels and join the pending ones (see the module docstring)."""
    now = time.time() if now is None else now
    result = SyncResult()
    result.labels = _take_in(ws)
    pending = _pending(ws)
    if not pending:
        return result
    timed: dict[float, list[tuple[str, int]]] = {}
    untimed: list[tuple[str, int]] = []
    for key, when in pending.items():
        if when is None:
            untimed.append(key)
        else:
            timed.setdefault(when // HOUR_S * HOUR_S, []).append(key)
    found: dict[tuple[str, int], dict[str, Any]] = {}
    wanted = set(pending)
    read: set[str] = set()
    for hour in sorted(timed):
        for obj in _hour_objects(ws, hour) + _hour_objects(ws, hour + HOUR_S):
            if obj not in read:
                read.add(obj)
                _collect(read_records(ws.store, obj), wanted, found)
    if untimed:
        result.full_scan = True
        for info in ws.store.list(f"{CAPTURE_PREFIX}/{ws.model_name}"):
            if info.key not in read:
                read.add(info.key)
                _collect(read_records(ws.store, info.key), wanted, found)
    result.objects = len(read)
    final = [
        key
        for key, when in pending.items()
        if key not in found
        and (when is None or when // HOUR_S * HOUR_S + 2 * HOUR_S + LATE_S < now)
    ]
    _store(ws, found, final)
    result.matched = len(found)
    return result


def quality_report(ws: Workspace, *, window_s: float) -> QualityReport:
    """Live quality from the labels table: accuracy and macro-F1 per version (and window)."""
    rows = _rows(ws, "SELECT * FROM labels WHERE model=?", (ws.model_name,))
    captured = [
        {
            "inference_id": r["inference_id"],
            "row": r["row"],
            "ts": r["ts"],
            "model": ws.model_name,
            "version": r["version"],
            "variant": r["variant"],
            "output": {"label": json.loads(r["predicted"])},
        }
        for r in rows
        if r["status"] == MATCHED
    ]
    given = [
        {"inference_id": r["inference_id"], "row": r["row"], "label": json.loads(r["label"]),
         "received_at": r["received_at"]}
        for r in rows
    ]  # fmt: skip
    report = join(captured, given, window_s=window_s)
    report.duplicates = sum(r["replaced"] for r in rows)
    report.labels = len(rows) + report.duplicates
    return report


def matched_rows(ws: Workspace) -> Iterator[tuple[dict[str, Any], Any, float]]:
    """(input row, label, received_at) of every label joined to its prediction, oldest first."""
    for r in _rows(
        ws,
        "SELECT input, label, received_at FROM labels WHERE model=? AND status=?"
        " ORDER BY received_at",
        (ws.model_name, MATCHED),
    ):
        yield json.loads(r["input"]), json.loads(r["label"]), r["received_at"]


# -- steps ------------------------------------------------------------------------------------


def _take_in(ws: Workspace) -> int:
    """Read the label objects not read before into the table; the number of labels read."""
    feedback = FeedbackStore(ws.store)
    feedback.ingest_dropped()
    source = f"labels:{ws.model_name}"
    new = [i for i in feedback.files() if not ws.state.is_seen(source, i.key, i.mtime, i.size)]
    labels = [
        json.loads(line)
        for info in new
        for line in ws.store.get_bytes(info.key).splitlines()
        if line.strip()
    ]
    labels.sort(key=lambda x: x.get("received_at") or 0.0)  # stable: the latest wins
    with ws.state.tx() as db:
        for x in labels:
            db.execute(
                "INSERT INTO labels(model, inference_id, row, label, received_at, status)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT(model, inference_id, row) DO UPDATE SET"
                " label=excluded.label, received_at=excluded.received_at,"
                " replaced=replaced+1",
                (
                    ws.model_name,
                    str(x["inference_id"]),
                    int(x.get("row", 0)),
                    json.dumps(x["label"]),
                    float(x.get("received_at") or time.time()),
                    PENDING,
                ),
            )
    if new:
        ws.state.mark_seen(source, [(i.key, i.mtime, i.size) for i in new], new[-1].key)
    return len(labels)


def _pending(ws: Workspace) -> dict[tuple[str, int], float | None]:
    """Pending labels and the time their ids name (None: the id has none)."""
    rows = _rows(
        ws,
        "SELECT inference_id, row FROM labels WHERE model=? AND status=?",
        (ws.model_name, PENDING),
    )
    return {(r["inference_id"], r["row"]): inference_time(r["inference_id"]) for r in rows}


def _hour_objects(ws: Workspace, hour: float) -> list[str]:
    when = datetime.fromtimestamp(hour, UTC)
    prefix = f"{CAPTURE_PREFIX}/{ws.model_name}/date={when:%Y-%m-%d}/hour={when:%H}"
    return [i.key for i in ws.store.list(prefix)]


def _collect(
    records: Iterable[dict[str, Any]],
    wanted: set[tuple[str, int]],
    found: dict[tuple[str, int], dict[str, Any]],
) -> None:
    for record in records:
        key = (str(record.get("inference_id")), int(record.get("row", 0)))
        if key in wanted:
            found[key] = record


def _store(
    ws: Workspace, found: dict[tuple[str, int], dict[str, Any]], final: list[tuple[str, int]]
) -> None:
    with ws.state.tx() as db:
        for (inference_id, row), r in found.items():
            db.execute(
                "UPDATE labels SET status=?, version=?, variant=?, ts=?, predicted=?, input=?"
                " WHERE model=? AND inference_id=? AND row=?",
                (
                    MATCHED,
                    str(r.get("version", "")),
                    r.get("variant") or "default",
                    r.get("ts"),
                    json.dumps((r.get("output") or {}).get("label")),
                    json.dumps(r.get("input") or {}),
                    ws.model_name,
                    inference_id,
                    row,
                ),
            )
        db.executemany(
            "UPDATE labels SET status=? WHERE model=? AND inference_id=? AND row=?",
            [(UNMATCHED, ws.model_name, i, row) for i, row in final],
        )


def _rows(ws: Workspace, sql: str, args: tuple[Any, ...]) -> list[Any]:
    with ws.state.tx() as db:
        return db.execute(sql, args).fetchall()
