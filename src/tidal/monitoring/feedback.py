"""Live quality from late labels: store the true labels users send back, join them to capture.

A label is ``{"inference_id": str, "label": str | number | bool, "row": int >= 0}`` (``row``
defaults to 0: the row's index in its request, as in the capture records). Labels arrive two ways:

- ``POST /feedback`` (see ``feedback_routes``), which calls ``FeedbackStore.add``: one JSON Lines
  object per call, written atomically at ``{prefix}/received/{YYYYmmddTHHMMSS}-{uuid8}.jsonl``;
- a file dropped in ``feedback/`` of the workspace store (CSV with a header, or JSON Lines, with
  the columns inference_id, label and optionally row), taken in by ``ingest_dropped``: a good
  file is rewritten as one received object and removed; a bad one is moved whole to
  ``{prefix}/rejected/`` beside a ``.reason.json`` saying every problem found. Nothing of a bad
  file is ever received, and nothing is half-written.

Every received line carries ``received_at`` (unix seconds), so when the same (inference_id, row)
is labelled twice the latest label wins; the replaced ones are counted (``duplicates``). It
also carries ``key``, who sent it: the id of the feedback key (``sha256:`` and a prefix of the
key's hash, never the key), ``anonymous`` when ``serving.feedback_open`` let a request in
without one, or ``file:<name>`` for a dropped file.

``join`` matches labels to captured records on (inference_id, row) with one pandas merge and
computes, per model, version, variant and time window (of the captured record's ``ts``):
accuracy, macro-F1 (over the classes seen in that group's labels or predictions, as
``sklearn.metrics.f1_score(average="macro")``) and the number of labelled samples. Labels with
no captured prediction are counted (``unmatched``), never silently dropped. Labels and
predictions are compared as text, so ``1``, ``1.0`` and ``"1"`` are the same class.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from tidal.errors import InvalidInput

if TYPE_CHECKING:
    import pandas as pd

    from tidal.storage import ObjectInfo, Store

DEFAULT_PREFIX = "_tidal/feedback"
DROPPED_PREFIX = "feedback"
MAX_LABELS = 10_000  # per call of add (and per POST /feedback)
MAX_ID_LENGTH = 256
FIELDS = ("inference_id", "label", "row")
SHAPE = (
    'each label is {"inference_id": "<id from the X-Inference-Id header>", '
    '"label": <string, number or boolean>, "row": <row index in the request, default 0>}'
)
_MAX_PROBLEMS = 5  # listed in one error message
ANONYMOUS = "anonymous"
ID_HEX = 32  # an inference id: 32 hex digits (tidal.serving.capture.new_inference_id)
MAX_FUTURE_S = 300.0  # clock skew allowed for the time in an id
_YEAR_S = 31_556_952.0


def check_inference_id(inference_id: str, *, now: float | None = None) -> str | None:
    """Why ``inference_id`` cannot be an id the endpoint gave (None: it can): ids are 32
    lowercase hex digits, and a time-ordered one names a time that is not in the future."""
    from tidal.serving.capture import inference_time

    shown = repr(inference_id[:40] + ("…" if len(inference_id) > 40 else ""))
    if len(inference_id) != ID_HEX or inference_id.strip("0123456789abcdef"):
        return f"inference_id {shown} is not {ID_HEX} lowercase hex digits"
    when = inference_time(inference_id)
    now = time.time() if now is None else now
    if when is not None and when > now + MAX_FUTURE_S:
        year = 1970 + int(when // _YEAR_S)
        return f"inference_id {shown} names a time in the future (the year {year})"
    return None


# -- validation --------------------------------------------------------------------------------


def validate_labels(items: Any, *, max_items: int | None = MAX_LABELS) -> list[dict[str, Any]]:
    """The labels in canonical form (inference_id, label, row); InvalidInput naming every bad
    item (the first few) and what is allowed. ``max_items`` None: no limit."""
    if not isinstance(items, list):
        raise InvalidInput(f"labels must be a list, got {type(items).__name__}; {SHAPE}")
    if max_items is not None and len(items) > max_items:
        raise InvalidInput(
            f"{len(items)} labels in one batch, at most {max_items} are taken; "
            "send them in several batches"
        )
    problems: list[str] = []
    clean: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        problem = _problem(item)
        if problem is None:
            row = item.get("row", 0)
            label = item["label"]
            if type(label) is float and label.is_integer():
                label = int(label)
            clean.append({"inference_id": item["inference_id"], "label": label, "row": int(row)})
        else:
            problems.append(f"label {index}: {problem}")
    if problems:
        shown = "; ".join(problems[:_MAX_PROBLEMS])
        more = len(problems) - _MAX_PROBLEMS
        if more > 0:
            shown += f"; and {more} more"
        raise InvalidInput(f"{shown}. {SHAPE}")
    return clean


def _problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return f"expected an object, got {type(item).__name__}"
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        return f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(FIELDS)}"
    inference_id = item.get("inference_id")
    if not isinstance(inference_id, str) or not inference_id.strip():
        return "'inference_id' missing or not a non-empty string"
    if len(inference_id) > MAX_ID_LENGTH:
        return f"'inference_id' longer than {MAX_ID_LENGTH} characters"
    if "label" not in item:
        return "'label' missing"
    label = item["label"]
    if label is None or isinstance(label, (dict, list)):
        return f"'label' must be a string, number or boolean, got {json.dumps(label)}"
    if isinstance(label, float) and not math.isfinite(label):
        return f"'label' must be a finite number, got {label}"
    if isinstance(label, str) and not label:
        return "'label' is an empty string"
    row = item.get("row", 0)
    if isinstance(row, bool) or not isinstance(row, int) or row < 0:
        return f"'row' must be an integer >= 0, got {json.dumps(row)}"
    return None


# -- the store ---------------------------------------------------------------------------------


class FeedbackStore:
    """Received labels under ``prefix`` of ``store``; every object is immutable once written."""

    def __init__(self, store: Store, prefix: str = DEFAULT_PREFIX) -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def __repr__(self) -> str:
        return f"FeedbackStore({self.store.uri(self.prefix)!r})"

    def add(
        self, labels: list[dict[str, Any]], *, max_items: int = MAX_LABELS, key: str | None = None
    ) -> int:
        """Validate ``labels`` and write them as one object; the number written (0: nothing).
        ``key``: who sent them (a key id, see the module docstring)."""
        clean = validate_labels(labels, max_items=max_items)
        if clean:
            self._write(clean, key=key)
        return len(clean)

    def files(self) -> list[ObjectInfo]:
        """The received objects, oldest first."""
        return [i for i in self.store.list(f"{self.prefix}/received") if i.key.endswith(".jsonl")]

    def rejected(self) -> list[ObjectInfo]:
        """Rejected dropped files and their ``.reason.json``."""
        return self.store.list(f"{self.prefix}/rejected")

    def labels(self) -> list[dict[str, Any]]:
        """Every received label, with its ``received_at``, oldest first."""
        return self.read(self.files())

    def read(self, objects: Iterable[ObjectInfo]) -> list[dict[str, Any]]:
        """The labels of received ``objects``, oldest first (keys of one second differ by a
        random part, so the order is ``received_at``'s)."""
        found = [
            orjson.loads(line)
            for info in objects
            for line in self.store.get_bytes(info.key).splitlines()
            if line.strip()
        ]
        found.sort(key=lambda label: label.get("received_at") or 0.0)  # stable
        return found

    def ingest_dropped(self, dropped: str = DROPPED_PREFIX) -> int:
        """Take in the label files dropped under ``dropped``; the number of labels received.

        A good file becomes one received object, then is removed; a bad one is moved whole to
        ``rejected/`` with a ``.reason.json``. A file that is being written (a temporary name)
        is left for the next call."""
        received = 0
        for info in self.store.list(dropped.strip("/")):
            if info.name.endswith(".reason.json"):
                continue
            data = self.store.get_bytes(info.key)
            try:
                clean = validate_labels(_parse(info.name, data), max_items=None)
            except InvalidInput as exc:
                self._reject(info.key, info.name, exc.message)
                continue
            if clean:
                self._write(clean, source=info.key, key=f"file:{info.name}")
            self.store.delete(info.key)
            received += len(clean)
        return received

    def _write(
        self, clean: list[dict[str, Any]], source: str | None = None, key: str | None = None
    ) -> str:
        now = time.time()
        target = f"{self.prefix}/received/{_stamp(now)}-{uuid.uuid4().hex[:8]}.jsonl"
        extra: dict[str, Any] = {"received_at": now}
        if source is not None:
            extra["source"] = source
        if key is not None:
            extra["key"] = key
        lines = [json.dumps({**label, **extra}, ensure_ascii=False) for label in clean]
        self.store.put_bytes(target, ("\n".join(lines) + "\n").encode())
        return target

    def _reject(self, key: str, name: str, reason: str) -> None:
        target = f"{self.prefix}/rejected/{_stamp(time.time())}-{uuid.uuid4().hex[:8]}-{name}"
        body = {"file": self.store.uri(key), "moved_to": self.store.uri(target), "reason": reason}
        # the reason first: if the move fails the file stays where it was and is tried again
        self.store.put_bytes(f"{target}.reason.json", json.dumps(body, indent=2).encode())
        self.store.move(key, target)


def ingest_dropped(store: Store, prefix: str = DEFAULT_PREFIX) -> int:
    """Take in the label files dropped in ``feedback/`` of ``store`` (see FeedbackStore)."""
    return FeedbackStore(store, prefix).ingest_dropped()


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%dT%H%M%S")


def _parse(name: str, data: bytes) -> list[dict[str, Any]]:
    """The items of a dropped CSV (header inference_id,label[,row]) or JSON Lines file."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{name} is not UTF-8 text: {exc}") from exc
    lower = name.lower()
    if lower.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        columns = reader.fieldnames or []
        missing = [c for c in ("inference_id", "label") if c not in columns]
        if missing:
            raise InvalidInput(
                f"column(s) {', '.join(missing)} missing in {name}; expected columns: "
                f"inference_id, label and optionally row (found: {', '.join(columns) or 'none'})"
            )
        items: list[dict[str, Any]] = []
        for number, raw in enumerate(reader, start=2):
            item: dict[str, Any] = {k: v for k, v in raw.items() if k in FIELDS}
            if None in raw:
                raise InvalidInput(f"{name} line {number}: more values than columns")
            row = item.get("row")
            if row is None or row == "":
                item.pop("row", None)
            elif row.strip().isdigit():
                item["row"] = int(row)
            items.append(item)
        return items
    if lower.endswith((".jsonl", ".ndjson")):
        items = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except ValueError as exc:
                raise InvalidInput(f"{name} line {number} is not JSON: {exc}") from exc
        return items
    raise InvalidInput(
        f"{name}: unsupported file type; drop a .csv (header inference_id,label[,row]) "
        "or a .jsonl file with one label object per line"
    )


# -- the join ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityGroup:
    """Quality of one model version (and variant) in one window; ``window_start`` None: all."""

    model: str
    version: str
    variant: str
    window_start: float | None
    window_end: float | None
    samples: int
    correct: int
    accuracy: float
    macro_f1: float


@dataclass(frozen=True)
class QualityAlarm:
    group: QualityGroup
    metric: str  # "accuracy" or "macro_f1"
    value: float
    floor: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.group), "metric": self.metric, "value": self.value,
                "floor": self.floor}  # fmt: skip


@dataclass
class QualityReport:
    """What ``join`` found; ``windows`` per time window, ``totals`` per version over all."""

    window_s: float
    labels: int  # labels given, duplicates included
    duplicates: int  # labels replaced by a later one for the same (inference_id, row)
    matched: int  # distinct labels joined to a captured prediction
    unmatched: int  # distinct labels with no captured prediction
    unmatched_examples: list[str] = field(default_factory=list)
    windows: list[QualityGroup] = field(default_factory=list)
    totals: list[QualityGroup] = field(default_factory=list)

    def alarms(
        self,
        min_accuracy: float | None = None,
        min_macro_f1: float | None = None,
        min_samples: int = 100,
    ) -> list[QualityAlarm]:
        """Groups (totals and windows) below a floor with at least ``min_samples`` labels."""
        found = []
        for group in [*self.totals, *self.windows]:
            if group.samples < min_samples:
                continue
            for metric, floor in (("accuracy", min_accuracy), ("macro_f1", min_macro_f1)):
                value = getattr(group, metric)
                if floor is not None and value < floor:
                    found.append(QualityAlarm(group, metric, value, floor))
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "labels": self.labels,
            "duplicates": self.duplicates,
            "matched": self.matched,
            "unmatched": self.unmatched,
            "unmatched_examples": self.unmatched_examples,
            "totals": [asdict(g) for g in self.totals],
            "windows": [asdict(g) for g in self.windows],
        }


def label_text(value: Any) -> str | None:
    """A label as the text it is compared by: 1, 1.0 and "1" are one class."""
    if type(value) is str:
        return value
    if value is None:
        return None
    if type(value) is float and value.is_integer():
        return str(int(value))
    if type(value) is bool:
        return "true" if value else "false"
    return str(value)


GROUP = ["model", "version", "variant"]


def join(
    captured_records: Iterable[dict[str, Any]],
    labels: Iterable[dict[str, Any]],
    *,
    window_s: float = 3600.0,
) -> QualityReport:
    """Join ``labels`` (in arrival order) to ``captured_records`` (the capture format)."""
    import pandas as pd

    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    text = label_text
    captured = pd.DataFrame.from_records(
        [
            (
                r["inference_id"],
                r.get("row", 0),
                r["ts"],
                r.get("model", ""),
                str(r.get("version", "")),
                r.get("variant") or "default",
                text((r.get("output") or {}).get("label")),
            )
            for r in captured_records
        ],
        columns=["inference_id", "row", "ts", *GROUP, "predicted"],
    )
    given = pd.DataFrame.from_records(
        [(x["inference_id"], x.get("row", 0), text(x["label"]), x.get("received_at"))
         for x in labels],
        columns=["inference_id", "row", "label", "received_at"],
    )  # fmt: skip
    keys = ["inference_id", "row"]
    for frame in (captured, given):
        frame["row"] = frame["row"].astype("int64")
    # the latest label wins: arrival order, made stable by received_at where it is known
    if given["received_at"].notna().any():
        given = given.sort_values("received_at", kind="stable", na_position="first")
    distinct = given.drop_duplicates(keys, keep="last")
    captured = captured.drop_duplicates(keys, keep="last")
    merged = distinct.merge(captured, on=keys, how="left", indicator=True)
    found = merged["_merge"] == "both"
    unmatched = merged.loc[~found, "inference_id"]
    report = QualityReport(
        window_s=window_s,
        labels=len(given),
        duplicates=len(given) - len(distinct),
        matched=int(found.sum()),
        unmatched=len(unmatched),
        unmatched_examples=unmatched.head(10).tolist(),
    )
    return score(report, merged.loc[found].copy())


def score(report: QualityReport, matched: pd.DataFrame) -> QualityReport:
    """``report`` with its groups: ``matched`` has one row per labelled prediction, with the
    columns model, version, variant, ts, label and predicted (labels as ``label_text``); or,
    with a column ``count``, one row per that many alike (a confusion-matrix cell)."""
    window_s = report.window_s
    if "count" not in matched:
        matched["count"] = 1
    matched["window_start"] = (matched["ts"] // window_s) * window_s
    matched["correct"] = matched["label"] == matched["predicted"]
    matched["hits"] = matched["count"] * matched["correct"]
    report.totals = _groups(matched, GROUP, None)
    report.windows = _groups(matched, [*GROUP, "window_start"], window_s)
    return report


def _groups(matched: pd.DataFrame, by: list[str], window_s: float | None) -> list[QualityGroup]:
    import pandas as pd

    if matched.empty:
        return []
    summary = matched.groupby(by, sort=True).agg(samples=("count", "sum"), correct=("hits", "sum"))
    summary["macro_f1"] = _macro_f1(matched, by)
    groups = []
    for key, row in summary.iterrows():
        values = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        start = float(values["window_start"]) if window_s is not None else None
        samples, correct = int(row["samples"]), int(row["correct"])
        f1 = row["macro_f1"]
        groups.append(
            QualityGroup(
                model=str(values["model"]),
                version=str(values["version"]),
                variant=str(values["variant"]),
                window_start=start,
                window_end=None if start is None or window_s is None else start + window_s,
                samples=samples,
                correct=correct,
                accuracy=correct / samples,
                macro_f1=0.0 if pd.isna(f1) else float(f1),
            )
        )
    return groups


def _macro_f1(matched: pd.DataFrame, by: list[str]) -> pd.Series:
    """Per group, the mean over its classes (true or predicted) of 2·tp / (n_true + n_pred)."""
    import pandas as pd

    true = matched.groupby([*by, "label"])["count"].sum()
    predicted = matched.groupby([*by, "predicted"])["count"].sum()
    predicted.index = predicted.index.set_names([*by, "label"])
    hits = matched.groupby([*by, "label"])["hits"].sum()
    counts = pd.concat({"true": true, "predicted": predicted, "tp": hits}, axis=1).fillna(0)
    f1 = 2 * counts["tp"] / (counts["true"] + counts["predicted"])
    return f1.groupby(level=list(range(len(by)))).mean()
