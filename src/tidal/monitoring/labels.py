"""Late labels joined incrementally: a pass reads the new labels and the traffic they name.

Inference ids are time-ordered (``tidal.serving.capture.new_inference_id``, the UUIDv7 layout):
an id names the hour of its request, and so the capture partition of its record (that hour, or
the next for a request that straddled it). A pass (``sync``):

1. takes in dropped label files, and reads the received label objects it has not read before
   (``seen`` source ``labels:<model>``) into the ``labels`` table of the state database, one row
   per (inference_id, row): a later label replaces an earlier one (``replaced`` counts them);
2. looks for each pending label's record in the capture objects of the hours its id names, each
   object read once per pass (lines of other ids are skipped unparsed), and stores what it finds
   beside the label: version, variant, time, predicted label, and the capture object that holds
   the input row (``source``; the input itself is read from there when a retrain needs it, so
   the state database does not keep a second copy of all labelled traffic);
3. a pending label looked for once its hours can no longer change (the hour's end plus
   ``LATE_S`` is past) is ``unmatched`` for good and never looked for again.

Labels whose ids carry no time (ids made before time-ordered ids) are looked for by one read of
all the capture, in the pass they arrive. A label whose id names a time that cannot be (more
than a day ahead, as a crafted id does) is counted (``invalid``) and given up at once: a bad
label never stops a pass. Each label keeps who sent it (``key_id``), and each pass writes one
``labels.received`` event per sender saying how many labels it took in.

So a pass costs the new labels and the hours they name, never all traffic; live quality
(``quality_report``) and the retrain policy's labelled rows (``labelled``) read the table: one
row per labelled prediction. The policy's check (``tidal.monitoring.trust``) may mark labels
``quarantined`` (the ``trust`` column): they are never trained on.

Live quality is kept counted as it is joined: ``label_cells`` holds, per version, variant,
minute (of the prediction), true label and predicted label, how many joined labels fall there,
and each pass adds its own (a replaced label moves from its old cell to its new one). A quality
report reads those cells, not the labelled rows, for any ``window_s`` that is a whole number of
minutes; other windows are counted from the rows.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from tidal.errors import TidalError
from tidal.monitoring.feedback import FeedbackStore, QualityReport, label_text, score
from tidal.monitoring.job import LATE_S
from tidal.serving.capture import CAPTURE_PREFIX, inference_time, read_object, read_predictions

if TYPE_CHECKING:
    from tidal.workspace import Workspace

HOUR_S = 3600.0
DAY_S = 86_400.0
PENDING, MATCHED, UNMATCHED = "pending", "matched", "unmatched"
Key = tuple[str, int]  # (inference_id, row)
Join = tuple[str, str | None, str | None, float | None, str | None, str | None]
Cell = tuple[str, str, int, str, str]  # version, variant, minute, label, predicted
CHUNK = 500  # ids per query when looking up labels already stored
QUARANTINED = "quarantined"
TRUSTED = f"(trust IS NULL OR trust != '{QUARANTINED}')"  # SQL: a label not quarantined

log = logging.getLogger("tidal.monitoring.labels")


@dataclass
class SyncResult:
    labels: int = 0  # new labels read this pass
    matched: int = 0  # labels joined to their prediction this pass
    objects: int = 0  # capture objects read this pass
    full_scan: bool = False  # labels of ids without a time made this pass read all capture
    invalid: int = 0  # labels whose id names an impossible time: given up, never looked for


def sync(ws: Workspace, *, now: float | None = None) -> SyncResult:
    """Take in new labels and join them and the pending ones (see the module docstring)."""
    now = time.time() if now is None else now
    result = SyncResult()
    new, replaced, objects = _new_labels(ws)
    result.labels = len(new) + sum(replaced.values())
    pending = _pending(ws)
    wanted = {key: inference_time(key[0]) for key in new} | {
        key: inference_time(key[0]) for key in pending
    }
    invalid = {
        key for key, when in wanted.items() if when is not None and not 0 <= when <= now + DAY_S
    }
    for key in invalid:
        del wanted[key]
    if invalid:
        result.invalid = len(invalid)
        log.warning(
            "%d labels name inference ids of impossible times (e.g. %s): given up",
            len(invalid),
            next(iter(invalid))[0][:40],
        )
    ids = {key[0] for key in wanted}
    found: dict[Key, Join] = {}
    read: set[str] = set()
    hours = {when // HOUR_S * HOUR_S for when in wanted.values() if when is not None}
    for hour in sorted(hours):
        for obj in _hour_objects(ws, hour) + _hour_objects(ws, hour + HOUR_S):
            if obj not in read:
                read.add(obj)
                _collect(ws, obj, ids, wanted, found)
    if any(when is None for when in wanted.values()):
        result.full_scan = True
        for info in ws.store.list(f"{CAPTURE_PREFIX}/{ws.model_name}"):
            if info.key not in read:
                read.add(info.key)
                _collect(ws, info.key, ids, wanted, found)
    result.objects = len(read)
    final = invalid | {
        key
        for key, when in wanted.items()
        if key not in found
        and (when is None or when // HOUR_S * HOUR_S + 2 * HOUR_S + LATE_S < now)
    }
    _store(ws, new, replaced, found, final, pending)
    if objects:
        ws.state.mark_seen(f"labels:{ws.model_name}", objects, objects[-1][0])
        _audit(ws, new, replaced)
    result.matched = len(found)
    return result


def quality_report(ws: Workspace, *, window_s: float) -> QualityReport:
    """Live quality from the labels table: accuracy and macro-F1 per version (and window)."""
    import pandas as pd

    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    model = ws.model_name
    with ws.state.tx() as db:
        db.row_factory = None
        distinct = db.execute("SELECT COUNT(*) FROM labels WHERE model=?", (model,)).fetchone()
        replaced = db.execute(  # indexed: labels_replaced
            "SELECT COALESCE(SUM(replaced), 0) FROM labels WHERE model=? AND replaced > 0",
            (model,),
        ).fetchone()
        if window_s % 60 == 0:  # from the counted cells
            cells = db.execute(
                "SELECT version, variant, CAST(minute * 60 / ? AS INTEGER) AS w, label,"
                " predicted, SUM(n) FROM label_cells WHERE model=? AND n > 0"
                " GROUP BY version, variant, w, label, predicted",
                (window_s, model),
            ).fetchall()
        else:
            cells = db.execute(
                "SELECT version, variant, CAST(ts / ? AS INTEGER) AS w, label, predicted,"
                " COUNT(*) FROM labels WHERE model=? AND status=?"
                " GROUP BY version, variant, w, label, predicted",
                (window_s, model, MATCHED),
            ).fetchall()
        missing = db.execute(  # indexed: labels_open
            f"SELECT inference_id FROM labels WHERE model=? AND status!='{MATCHED}' LIMIT 10",
            (model,),
        ).fetchall()
    frame = pd.DataFrame.from_records(
        cells, columns=["version", "variant", "window", "label", "predicted", "count"]
    ).assign(model=model)
    frame["ts"] = (frame["window"] + 0.5) * window_s  # the middle of its window
    matched = int(frame["count"].sum())
    report = QualityReport(
        window_s=window_s,
        labels=int(distinct[0]) + int(replaced[0]),
        duplicates=int(replaced[0]),
        matched=matched,
        unmatched=int(distinct[0]) - matched,
        unmatched_examples=[m[0] for m in missing],
    )
    return score(report, frame)


class Labelled(NamedTuple):
    """A label joined to its prediction: the input row, the label (as text), when it came,
    who sent it and where it is (to quarantine it)."""

    input: dict[str, Any]
    label: str
    received_at: float
    key_id: str
    inference_id: str
    row: int


def matched_rows(ws: Workspace) -> Iterator[tuple[dict[str, Any], str, float]]:
    """(input row, label as text, received_at) of every label joined to its prediction and not
    quarantined, oldest first (see ``labelled``)."""
    for found in labelled(ws):
        yield found.input, found.label, found.received_at


def labelled(ws: Workspace) -> Iterator[Labelled]:
    """Every label joined to its prediction and not quarantined, oldest first (labels are kept
    as ``feedback.label_text`` says: 1, 1.0 and "1" are one class). The inputs are read from
    the capture objects the join found them in, each object once; an input whose object is
    gone comes as an empty row (and is logged)."""
    rows = _rows(
        ws,
        "SELECT inference_id, row, label, received_at, input, source, key_id FROM labels"
        f" WHERE model=? AND status=? AND {TRUSTED} ORDER BY received_at",
        (ws.model_name, MATCHED),
    )
    wanted: dict[str, set[str]] = {}
    for r in rows:
        if r["input"] is None and r["source"]:
            wanted.setdefault(r["source"], set()).add(r["inference_id"])
    inputs: dict[Key, dict[str, Any]] = {}
    for source, ids in wanted.items():
        try:
            for record in read_object(ws.store, source, ids):
                inputs[record["inference_id"], int(record.get("row", 0))] = record["input"]
        except TidalError as exc:
            log.warning("the inputs of %d labels are not readable: %s", len(ids), exc)
    for r in rows:
        if r["input"] is not None:  # joined before 2026-11-22: the input was kept in the row
            given = json.loads(r["input"])
        else:
            given = inputs.get((r["inference_id"], r["row"])) or {}
        yield Labelled(
            given,
            r["label"],
            r["received_at"],
            r["key_id"] or "unknown",
            r["inference_id"],
            r["row"],
        )


def quarantine(ws: Workspace, keys: list[tuple[str, int]]) -> int:
    """Mark the labels of ``keys`` (inference_id, row) quarantined: never trained on again
    (a later label for the same row replaces it and is checked afresh). The number marked."""
    with ws.state.tx() as db:
        cursor = db.executemany(
            "UPDATE labels SET trust=? WHERE model=? AND inference_id=? AND row=?",
            [(QUARANTINED, ws.model_name, i, r) for i, r in keys],
        )
        return int(cursor.rowcount)


def quarantined(ws: Workspace) -> int:
    """How many of the model's labels are quarantined."""
    with ws.state.tx() as db:
        row = db.execute(
            "SELECT COUNT(*) FROM labels WHERE model=? AND trust=?", (ws.model_name, QUARANTINED)
        ).fetchone()
    return int(row[0])


def matched_since(ws: Workspace, cutoff: float | None, labels: list[str]) -> int:
    """How many labels joined to their prediction arrived after ``cutoff`` (all, when None)
    with a label among ``labels`` (as ``label_text``): a count without reading any input."""
    marks = ",".join("?" * len(labels))
    with ws.state.tx() as db:
        row = db.execute(
            f"SELECT COUNT(*) FROM labels WHERE model=? AND status=? AND received_at>?"
            f" AND label IN ({marks}) AND {TRUSTED}",
            (ws.model_name, MATCHED, -1.0 if cutoff is None else cutoff, *labels),
        ).fetchone()
    return int(row[0])


# -- steps ------------------------------------------------------------------------------------


def _new_labels(ws: Workspace) -> tuple[dict[Key, dict[str, Any]], dict[Key, int], list[Any]]:
    """The labels of the label objects not read before, the latest per (inference_id, row);
    how many each replaced among them; and the objects, to mark read once stored."""
    feedback = FeedbackStore(ws.store)
    feedback.ingest_dropped()
    source = f"labels:{ws.model_name}"
    infos = [i for i in feedback.files() if not ws.state.is_seen(source, i.key, i.mtime, i.size)]
    latest: dict[Key, dict[str, Any]] = {}
    replaced: dict[Key, int] = {}
    for x in feedback.read(infos):  # oldest first: the latest wins
        key = (str(x["inference_id"]), int(x.get("row", 0)))
        if key in latest:
            replaced[key] = replaced.get(key, 0) + 1
        latest[key] = x
    return latest, replaced, [(i.key, i.mtime, i.size) for i in infos]


def _pending(ws: Workspace) -> dict[Key, str]:
    """Pending labels: their label (as text)."""
    rows = _rows(  # indexed: labels_open (its condition is spelled out for the planner)
        ws,
        f"SELECT inference_id, row, label FROM labels WHERE model=? AND status!='{MATCHED}'"
        f" AND status='{PENDING}'",
        (ws.model_name,),
    )
    return {(r["inference_id"], r["row"]): r["label"] for r in rows}


def _audit(ws: Workspace, new: dict[Key, dict[str, Any]], replaced: dict[Key, int]) -> None:
    """One ``labels.received`` event per sender of this pass's labels: who sent how many."""
    senders: dict[str, list[float]] = {}
    for key, x in new.items():
        at = float(x.get("received_at") or 0.0)
        senders.setdefault(str(x.get("key") or "unknown"), []).extend(
            [at] * (1 + replaced.get(key, 0))
        )
    for sender, times in sorted(senders.items()):
        first, last = min(times), max(times)
        ws.state.event(
            "labels.received",
            f"{len(times)} late labels from {sender} received between "
            f"{datetime.fromtimestamp(first, UTC):%Y-%m-%d %H:%M:%S} and "
            f"{datetime.fromtimestamp(last, UTC):%H:%M:%S} UTC",
            model=ws.model_name,
            data={"key": sender, "labels": len(times), "first_at": first, "last_at": last},
        )


def _hour_objects(ws: Workspace, hour: float) -> list[str]:
    try:
        when = datetime.fromtimestamp(hour, UTC)
    except (ValueError, OverflowError, OSError):  # not a time: no capture hour holds it
        return []
    prefix = f"{CAPTURE_PREFIX}/{ws.model_name}/date={when:%Y-%m-%d}/hour={when:%H}"
    return [i.key for i in ws.store.list(prefix)]


def _collect(
    ws: Workspace, obj: str, ids: set[str], wanted: dict[Key, Any], found: dict[Key, Join]
) -> None:
    for inference_id, row, line, output in read_predictions(ws.store, obj, ids):
        if (inference_id, row) in wanted:
            found[inference_id, row] = (
                MATCHED,
                str(line.get("version", "")),
                line.get("variant") or "default",
                line.get("ts"),
                label_text(output.get("label")),
                obj,
            )


def _store(
    ws: Workspace,
    new: dict[Key, dict[str, Any]],
    replaced: dict[Key, int],
    found: dict[Key, Join],
    final: set[Key],
    pending: dict[Key, str],
) -> None:
    """Write each new label once, joined where its prediction was found; then the pending
    labels found or given up this pass; and count the joined ones into their quality cells. A
    label for a row labelled before replaces it and keeps the prediction it was joined to."""
    unmatched: Join = (UNMATCHED, None, None, None, None, None)
    waiting: Join = (PENDING, None, None, None, None, None)

    def joined(key: Key) -> Join:
        return found.get(key) or (unmatched if key in final else waiting)

    added: list[Cell] = []  # a joined label each (counted at once: Counter.update is C)
    removed: list[Cell] = []  # a replaced label each

    model = ws.model_name
    now = time.time()
    with ws.state.tx() as db:
        before = _stored(db, model, new)
        fresh, again = [], []
        for key, x in new.items():
            label, at = label_text(x["label"]), float(x.get("received_at") or now)
            n = replaced.get(key, 0)
            old = before.get(key)
            if old is None:
                join = joined(key)
                fresh.append((model, key[0], key[1], label, at, n, *join, x.get("key")))
            else:  # a row joined before keeps its join (its label changes cell); a pending
                join = joined(key)  # one takes this pass's
                if old[1] == MATCHED:
                    join = old[1:]
                    removed.append(_cell(join, old[0]))
                again.append((label, at, 1 + n, *join, x.get("key"), model, key[0], key[1]))
            if join[0] == MATCHED:
                added.append(_cell(join, label))
        fresh.sort()  # in key order: each row lands at the end of the table's B-tree
        db.executemany(
            "INSERT INTO labels(model, inference_id, row, label, received_at, replaced, status,"
            " version, variant, ts, predicted, source, key_id)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            fresh,
        )
        db.executemany(
            "UPDATE labels SET label=?, received_at=?, replaced=replaced+?, status=?, version=?,"
            " variant=?, ts=?, predicted=?, source=?, key_id=?, trust=NULL"
            " WHERE model=? AND inference_id=? AND row=?",
            again,
        )
        later = [key for key in (set(found) | final) - set(new) if key in pending]
        added += [_cell(found[key], pending[key]) for key in later if key in found]
        cells = Counter(added)
        cells.subtract(removed)
        db.executemany(
            "UPDATE labels SET status=?, version=?, variant=?, ts=?, predicted=?, source=?"
            " WHERE model=? AND inference_id=? AND row=? AND status=?",
            [(*joined(key), model, key[0], key[1], PENDING) for key in later],
        )
        db.executemany(
            "INSERT INTO label_cells(model, version, variant, minute, label, predicted, n)"
            " VALUES (?,?,?,?,?,?,?) ON CONFLICT(model, version, variant, minute, label,"
            " predicted) DO UPDATE SET n = n + excluded.n",
            [(model, *cell, n) for cell, n in cells.items() if n],
        )


def _cell(join: Join | tuple[Any, ...], label: str | None) -> Cell:
    """The quality cell of a joined label: version, variant, minute, label, predicted."""
    ts = join[3]
    minute = int(ts // 60) if isinstance(ts, (int, float)) else 0
    return (join[1] or "", join[2] or "", minute, label or "", join[4] or "")


def _stored(db: sqlite3.Connection, model: str, keys: dict[Key, Any]) -> dict[Key, tuple[Any, ...]]:
    """The labels already stored for ``keys``: (label, status, version, variant, ts,
    predicted, source) by key; a lookup of the primary key, ``CHUNK`` ids a query."""
    ids = sorted({key[0] for key in keys})
    found: dict[Key, tuple[Any, ...]] = {}
    for i in range(0, len(ids), CHUNK):
        part = ids[i : i + CHUNK]
        for r in db.execute(
            "SELECT inference_id, row, label, status, version, variant, ts, predicted, source"
            f" FROM labels WHERE model=? AND inference_id IN ({','.join('?' * len(part))})",
            (model, *part),
        ):
            key = (r[0], r[1])
            if key in keys:
                found[key] = tuple(r)[2:]
    return found


def _rows(ws: Workspace, sql: str, args: tuple[Any, ...]) -> list[Any]:
    with ws.state.tx() as db:
        return db.execute(sql, args).fetchall()
