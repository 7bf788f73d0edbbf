"""The monitoring job: new captured traffic → windows per model version → drift reports.

Each model version gets its baseline when it is registered (``build_baseline``,
``save_baseline``); a text model's baseline holds a sketch of its own embeddings of the
training texts. ``MonitorJob.run_once`` then reads only the capture objects it has not read
before, bins their records per model version and window period against that version's
baseline (embedding a sample of the texts with the version's deployed model folder, when the
baseline has a sketch), adds them to the stored windows and judges the newest window touched:

    _tidal/baselines/v<version>.json                   Baseline.to_json
    _tidal/monitor/v<version>/window-<start>.json      the window's statistics and its objects
    _tidal/monitor/v<version>/report-latest.json       the newest report of the version

Windows are periods of ``window_s`` of time (by the rows' answer times), or, with
``window_rows``, runs of that many rows of a version in capture order (count windows: steady
sample sizes whatever the traffic). A count window, once full, is stored for good as
``window-n<index>.json``; the one still filling lives in ``count-open.json`` beside it, with the
objects the latest runs assigned, and is written after the full ones: a run cut short is redone
from it, and rows fall into the same windows again.

Incremental twice over. Listing: once a cursor exists, only the capture partitions from the
cursor's date (less ``LATE_S``, for writers that flush late) to ``now`` are listed, not all
traffic ever captured. Reading: an object already marked seen in the state database (``seen``
table, source ``monitor:<model>``) is skipped, and each window names the objects merged into it,
so a run cut short between writing windows and marking objects seen never counts an object
twice when it runs again.

A drifted report records a ``drift`` event (once per version and window, not on every run)
and sends a ``drift`` alert keyed ``drift-v<version>`` (the alerter de-duplicates repeats).
Records of a version without a baseline are counted and reported as ``no_baseline``. When a
sketched version's model folder is gone (or unreadable), its texts are binned without a sample,
the embedding check is skipped, and a warning is logged once per job: never a failed run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tidal.errors import NotFound, TidalError
from tidal.monitoring.baseline import Baseline, TextBaseline
from tidal.monitoring.drift import DriftReport, Status, Thresholds, WindowStats, compare
from tidal.monitoring.embedding import Embedder
from tidal.serving.capture import CAPTURE_PREFIX, read_object
from tidal.workspace import META

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from tidal.artifact import Manifest
    from tidal.storage import ObjectInfo
    from tidal.workspace import Workspace

log = logging.getLogger("tidal.monitoring")

BASELINES = f"{META}/baselines"
MONITOR = f"{META}/monitor"
WINDOW_S = 3600.0
LATE_S = 6 * 3600.0  # how late a capture object may land after its partition's hour
NO_BASELINE = "no_baseline"
EVENT = "drift"


# -- baselines --------------------------------------------------------------------------------


def baseline_key(version: str) -> str:
    return f"{BASELINES}/v{version}.json"


def text_features(ws: Workspace, manifest: Manifest) -> list[str]:
    """The string features holding free text: a text task's text column (or all its strings)."""
    data = ws.config.data
    if data.task != "text":
        return []
    strings = [f.name for f in manifest.features if f.type == "string"]
    return [data.text_column] if data.text_column in strings else strings


def build_baseline(
    ws: Workspace,
    frame: pd.DataFrame,
    manifest: Manifest,
    predictions: Sequence[Any] | None = None,
    model_dir: Path | None = None,
) -> Baseline:
    """The baseline of a model with ``manifest`` trained on ``frame``.

    ``predictions`` are the model's predicted labels on the holdout (see
    ``holdout_predictions``); the text features follow the workspace's ``data`` section. With
    text features, the model in ``model_dir`` (a Hugging Face text model; others have none)
    embeds the sketch of each.
    """
    text = text_features(ws, manifest)
    embedder = None
    if text and model_dir is not None:
        try:
            embedder = Embedder.load(model_dir)
        except TidalError as exc:
            log.warning("baseline without an embedding sketch: %s", exc)
    return Baseline.from_frame(frame, manifest.features, predictions, text=text, embedder=embedder)


def training_frame(ws: Workspace, train_uris: Sequence[str]) -> pd.DataFrame:
    """The training sets the prepare step listed (``train_uris``), as one frame."""
    import pandas as pd

    from tidal.data.prepare import from_jsonl

    frames = [from_jsonl(ws.store.get_bytes(ws.store.key_of(uri))) for uri in train_uris]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def holdout_predictions(
    ws: Workspace, model_dir: Path, manifest_sha256: str | None = None
) -> list[Any]:
    """The labels the model in ``model_dir`` predicts for the frozen holdout (none: [])."""
    from tidal.artifact import load_predictor
    from tidal.data.prepare import from_jsonl
    from tidal.pipeline import HOLDOUT_KEY

    try:
        holdout = from_jsonl(ws.store.get_bytes(HOLDOUT_KEY))
    except NotFound:
        return []
    predictor = load_predictor(model_dir, manifest_sha256)
    names = predictor.manifest.feature_names
    if holdout.empty:
        return []
    rows = holdout[names].astype(object).where(holdout[names].notna(), None).to_dict("records")
    return [p["label"] for p in predictor.predict(rows)]


def baseline_for_run(
    ws: Workspace,
    prepared: Mapping[str, Any],
    model_dir: Path,
    manifest_sha256: str | None = None,
) -> Baseline:
    """The baseline for the register step: ``prepared`` is the prepare step's output."""
    from tidal.artifact import MANIFEST, Manifest

    manifest = Manifest.from_json((model_dir / MANIFEST).read_text(encoding="utf-8"))
    frame = training_frame(ws, prepared["train_uris"])
    predictions = holdout_predictions(ws, model_dir, manifest_sha256)
    return build_baseline(ws, frame, manifest, predictions, model_dir)


def save_baseline(ws: Workspace, version: str, baseline: Baseline) -> str:
    """Store ``baseline`` as the baseline of ``version``; returns its URI."""
    key = baseline_key(version)
    ws.store.put_bytes(key, baseline.to_json().encode())
    return ws.store.uri(key)


def load_baseline(ws: Workspace, version: str) -> Baseline | None:
    """The stored baseline of ``version``, or None when it has none."""
    try:
        return Baseline.from_json(ws.store.get_bytes(baseline_key(version)).decode())
    except NotFound:
        return None


# -- the job ----------------------------------------------------------------------------------


@dataclass
class _Window:
    """A stored window: its statistics and the capture objects merged into it."""

    stats: WindowStats
    objects: list[str]

    def to_json(self) -> str:
        stats = json.loads(self.stats.to_json())
        return json.dumps({"stats": stats, "objects": self.objects}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> _Window:
        data = json.loads(text)
        return cls(WindowStats.from_json(json.dumps(data["stats"])), data["objects"])


class MonitorJob:
    """Checks new captured traffic of the workspace's model against its versions' baselines."""

    def __init__(
        self,
        ws: Workspace,
        *,
        thresholds: Thresholds | None = None,
        window_s: float = WINDOW_S,
        window_rows: int | None = None,
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if window_rows is not None and window_rows < 1:
            raise ValueError(f"window_rows must be at least 1, got {window_rows}")
        self.ws = ws
        self.thresholds = thresholds or Thresholds()
        self.window_s = window_s
        self.window_rows = window_rows
        self.model = ws.model_name
        self.source = f"monitor:{self.model}"
        self.prefix = f"{CAPTURE_PREFIX}/{self.model}"
        self._unembedded: set[str] = set()  # versions whose embedder is missing, warned once

    def run_once(self, now: float | None = None) -> dict[str, Any]:
        """Read the new capture objects, update the windows, judge them; a JSON-ready summary.

        ``{"model", "checked_at", "objects", "records", "versions": {version: summary}}``;
        a version's summary is its report's ``status``, ``rows`` (in the window), ``records``
        (new this run), ``window_start``, ``drifted``, ``worst`` and ``report`` (the key), or
        ``{"status": "no_baseline", "records": n}``.
        """
        now = time.time() if now is None else now
        state, store = self.ws.state, self.ws.store
        new = [i for i in self._list(now) if not state.is_seen(self.source, i.key, i.mtime, i.size)]
        by_version: dict[str, dict[str, list[dict[str, Any]]]] = {}
        records = 0
        for info in new:
            for record in read_object(store, info.key):
                records += 1
                version = str(record.get("version"))
                by_version.setdefault(version, {}).setdefault(info.key, []).append(record)
        versions = {
            version: self._check(version, objects, now)
            for version, objects in sorted(by_version.items())
        }
        if new:
            cursor = max([i.key for i in new] + [state.cursor(self.source) or ""])
            state.mark_seen(self.source, [(i.key, i.mtime, i.size) for i in new], cursor)
        return {
            "model": self.model,
            "checked_at": now,
            "objects": len(new),
            "records": records,
            "versions": versions,
        }

    def latest_report(self, version: str) -> dict[str, Any] | None:
        """The newest stored report of ``version`` (``DriftReport.to_dict`` and where), or None."""
        try:
            return dict(json.loads(self.ws.store.get_bytes(self._report_key(version))))
        except NotFound:
            return None

    # -- steps --------------------------------------------------------------------------------

    def _list(self, now: float) -> list[ObjectInfo]:
        """Capture objects in the partitions that may hold new ones (all, the first time)."""
        store, cursor = self.ws.store, self.ws.state.cursor(self.source)
        first = _partition_date(cursor) if cursor else None
        if first is None:
            return store.list(self.prefix)
        day = (first - timedelta(seconds=LATE_S)).date()
        last = datetime.fromtimestamp(now + LATE_S, UTC).date()
        found: list[ObjectInfo] = []
        while day <= last:
            found += store.list(f"{self.prefix}/date={day:%Y-%m-%d}")
            day += timedelta(days=1)
        return found

    def _check(
        self, version: str, objects: dict[str, list[dict[str, Any]]], now: float
    ) -> dict[str, Any]:
        records = sum(len(r) for r in objects.values())
        baseline = load_baseline(self.ws, version)
        if baseline is None:
            return {"status": NO_BASELINE, "records": records}
        if self.window_rows is not None:
            return self._check_counted(version, baseline, objects, records, now)
        periods: dict[float, dict[str, list[dict[str, Any]]]] = {}
        for key, rows in objects.items():
            for record in rows:
                start = self._period(record.get("ts"), now)
                periods.setdefault(start, {}).setdefault(key, []).append(record)
        embedder = self._embedder(version, baseline)
        windows = {
            start: self._merge(version, baseline, start, parts, embedder)
            for start, parts in periods.items()
        }
        start = max(windows)
        report = compare(baseline, windows[start].stats, self.thresholds)
        return self._report(version, report, start, records, now)

    def _merge(
        self,
        version: str,
        baseline: Baseline,
        start: float,
        parts: dict[str, list[dict[str, Any]]],
        embedder: Embedder | None = None,
    ) -> _Window:
        key = self._window_key(version, start)
        try:
            window = _Window.from_json(self.ws.store.get_bytes(key).decode())
        except NotFound:
            window = _Window(WindowStats.empty(baseline), [])
        if window.stats.fingerprint != baseline.fingerprint:  # the baseline was recomputed
            window = _Window(WindowStats.empty(baseline), [])
        done = set(window.objects)
        fresh = [rows for name, rows in parts.items() if name not in done]
        if not fresh:
            return window
        rows = [r for part in fresh for r in part]
        added = WindowStats.from_records(baseline, rows, embedder=embedder)
        window = _Window(window.stats.merge(added), window.objects + sorted(set(parts) - done))
        self.ws.store.put_bytes(key, window.to_json().encode())
        return window

    def _check_counted(
        self,
        version: str,
        baseline: Baseline,
        objects: dict[str, list[dict[str, Any]]],
        records: int,
        now: float,
    ) -> dict[str, Any]:
        """Count windows: the new rows, object by object in key order, fill the open window;
        each time it holds ``window_rows`` it is stored as full and a new one opens. The
        newest window filled this run is judged; when none was, the open one."""
        assert self.window_rows is not None
        size, store = self.window_rows, self.ws.store
        key = f"{MONITOR}/v{version}/count-open.json"
        try:
            doc = json.loads(store.get_bytes(key))
            window: _Window | None = _Window.from_json(json.dumps(doc["window"]))
            index, first, last = int(doc["index"]), doc.get("first_ts"), doc.get("last_ts")
            done = set(doc.get("objects", []))
        except NotFound:
            window, index, first, last, done = None, 0, None, None, set()
        if window is None or window.stats.fingerprint != baseline.fingerprint:
            window, first, last = _Window(WindowStats.empty(baseline), []), None, None
        embedder = self._embedder(version, baseline)
        rows = [r for name in sorted(objects) if name not in done for r in objects[name]]
        # judged: the newest window this run filled, else the open one (min_samples guards it)
        judged, filled = (window, index, first, last), False
        at = 0  # rows[:at] are in windows
        while at < len(rows) or window.stats.rows >= size:
            if window.stats.rows >= size:  # full: stored for good, and a new one opens
                judged, filled = (window, index, first, last), True
                full = json.loads(window.to_json()) | {
                    "index": index,
                    "first_ts": first,
                    "last_ts": last,
                }
                store.put_bytes(self._window_key(version, f"n{index}"), json.dumps(full).encode())
                window, index = _Window(WindowStats.empty(baseline), []), index + 1
                first = last = None
                continue
            part = rows[at : at + size - window.stats.rows]
            at += len(part)
            times = [t for r in part if isinstance(t := r.get("ts"), (int, float))] or [now]
            first = min(times) if first is None else first
            last = max([*times, last or 0.0])
            added = WindowStats.from_records(baseline, part, embedder=embedder)
            window = _Window(window.stats.merge(added), window.objects)
            if not filled:
                judged = (window, index, first, last)
        assigned = sorted(set(objects) | (done if window.stats.rows else set()))
        opened = {
            "index": index,
            "first_ts": first,
            "last_ts": last,
            "objects": assigned,
            "window": json.loads(window.to_json()),
        }
        store.put_bytes(key, json.dumps(opened, separators=(",", ":")).encode())
        window, index, first, last = judged
        report = compare(baseline, window.stats, self.thresholds)
        summary = self._report(
            version, report, float(first if first is not None else now), records, now,
            extra={"window_index": index, "window_rows": size, "window_end": last},
        )  # fmt: skip
        return summary

    def _embedder(self, version: str, baseline: Baseline) -> Embedder | None:
        """The version's embedder when its baseline has a text sketch; None (warned once per
        job) when the model folder is missing or unreadable."""
        sketched = any(isinstance(f, TextBaseline) and f.sketch for f in baseline.features.values())
        if not sketched:
            return None
        try:
            embedder = Embedder.for_version(self.ws, version)
            problem = None if embedder is not None else "no model folder of it was found"
        except (TidalError, OSError) as exc:
            embedder, problem = None, str(exc)
        if problem and version not in self._unembedded:
            self._unembedded.add(version)
            log.warning(
                "%s v%s: text embedding drift skipped: %s (deploy or download the version "
                "into .tidal/models/v%s to check it)",
                self.model,
                version,
                problem,
                version,
            )
        return embedder

    def _report(
        self,
        version: str,
        report: DriftReport,
        start: float,
        records: int,
        now: float,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        previous = self.latest_report(version)
        key = self._report_key(version)
        doc = report.to_dict() | {
            "version": version,
            "window_start": start,
            "window_s": self.window_s,
            "checked_at": now,
            **(extra or {}),
        }
        self.ws.store.put_bytes(key, json.dumps(doc, separators=(",", ":")).encode())
        summary = {
            "status": str(report.status),
            "rows": report.rows,
            "records": records,
            "window_start": start,
            "drifted": report.drifted,
            "worst": report.worst.name if report.worst else None,
            "report": key,
        }
        if report.status == Status.DRIFTED:
            self._alarm(version, summary, previous)
        return summary

    def _alarm(
        self, version: str, summary: dict[str, Any], previous: dict[str, Any] | None
    ) -> None:
        from tidal.alerts import send_alert

        drifted = summary["drifted"] or ["predictions"]
        since = datetime.fromtimestamp(summary["window_start"], UTC)
        message = (
            f"{self.model} v{version}: drift in {', '.join(drifted[:5])}"
            f"{' and more' if len(drifted) > 5 else ''} "
            f"({summary['rows']} rows in the window from {since:%Y-%m-%d %H:%M} UTC)"
        )
        data = {"version": version} | summary
        fresh = previous is None or not (
            previous.get("status") == Status.DRIFTED
            and previous.get("window_start") == summary["window_start"]
        )
        if fresh:  # one event per version and window; the alert de-duplicates itself
            self.ws.state.event(EVENT, message, model=self.model, data=data)
        send_alert(self.ws, EVENT, message, key=f"drift-v{version}", data=data)

    # -- places -------------------------------------------------------------------------------

    def _period(self, ts: Any, now: float) -> float:
        t = ts if isinstance(ts, (int, float)) else now
        return float(t // self.window_s * self.window_s)

    def _window_key(self, version: str, start: float | str) -> str:
        name = start if isinstance(start, str) else str(int(start))
        return f"{MONITOR}/v{version}/window-{name}.json"

    def _report_key(self, version: str) -> str:
        return f"{MONITOR}/v{version}/report-latest.json"


def _partition_date(key: str) -> datetime | None:
    """The hour of a capture key's ``date=YYYY-MM-DD/hour=HH`` partition (UTC), or None."""
    parts = dict(p.split("=", 1) for p in key.split("/") if p.startswith(("date=", "hour=")))
    try:
        return datetime.strptime(f"{parts['date']} {parts['hour']}", "%Y-%m-%d %H").replace(
            tzinfo=UTC
        )
    except (KeyError, ValueError):
        return None
