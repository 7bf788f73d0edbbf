"""Data capture: what the endpoint was asked and what it answered, stored off the request path.

The request path calls ``CaptureWriter.offer`` once per answered request. It decides sampling
(``random() < sample_rate``, per request), then appends one tuple per request to an in-memory
deque: no I/O, one short lock, whatever the store is doing. A small request (at most
``EAGER_ROWS`` rows, the usual online call) has its rows and predictions encoded to JSON right
there, by orjson in C (about 5 µs for a row of 30 numbers): the buffer then holds bytes, which
the garbage collector never scans, instead of thousands of live dicts that made it run a
hundred times as often and cost the endpoint more than the encoding. A bigger request is kept by
reference and encoded by the flusher, off the request path. When ``max_buffer_records`` rows
wait, new rows are dropped and counted (``buffer_full``): capture never slows serving down and
never blocks it.

A daemon thread flushes every ``flush_interval_s``, or as soon as ``flush_records`` rows wait. It
takes about ``flush_records`` rows (a request is never split), groups them by model and hour (UTC,
of the request), and writes one object per group with ``store.put_bytes`` at

    {prefix}/{model}/date=YYYY-MM-DD/hour=HH/{YYYYmmddTHHMMSS}-{seq:06d}-{uuid8}.jsonl|.parquet

(the time is the first row's, ``seq`` counts this writer's objects, ``uuid8`` tells writers
apart), so keys sort by time within a partition. A failed write (store down, refused, slow) puts
its rows back for the next try a flush interval later; past ``max_buffer_records`` the oldest
rows go first (``store_error``), so at most ``max_buffer_records`` rows wait plus one batch in
flight. One warning is logged per distinct failure, one line when writes work again. Serialization
happens in the flusher, which yields the GIL every 256 rows so the event loop is not kept waiting.
``close()`` makes one last try; what cannot be written then is dropped (``shutdown``). Every row
offered is counted once: ``offered == captured + sum(dropped.values()) + pending``.

JSON Lines objects have one line per request, its rows and their predictions in order:

    {"inference_id": "9f0c...", "ts": 1767225600.25, "model": "iris", "version": "3",
     "variant": "default", "latency_ms": 1.9,
     "inputs": [{"sepal_length": 5.1, ...}, ...],
     "outputs": [{"label": "setosa", "score": 0.97, "probabilities": {"setosa": 0.97, ...}}, ...]}

``read_object`` and ``read_capture`` give one record per row:

    {"inference_id": "9f0c...", "row": 0, "ts": 1767225600.25, "model": "iris",
     "version": "3", "variant": "default", "latency_ms": 1.9,
     "input": {"sepal_length": 5.1, ...}, "output": {"label": "setosa", ...}}

``ts`` is when the request was answered (unix seconds, taken by ``offer``), ``row`` the row's
index in its request, ``input`` the row as the model received it, ``output`` the model's
prediction for it. (Lines in that per-row shape, as Tidal wrote them before 2026-11-22, read back
unchanged.) Parquet files have one row per row: the columns inference_id, row, ts, model,
version, variant, latency_ms, label, score, ``input`` and ``probabilities`` as JSON strings, and
``in.<feature>`` per input feature; they keep label, score and probabilities of the output only.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Container, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tidal.serving.metrics import ServingMetrics
    from tidal.storage import Store

try:  # orjson where installed (a serving dependency); the standard library otherwise
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, default=_plain, option=_ORJSON)

    _ORJSON = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS  # labels 0/1 as keys

    def _loads(line: bytes) -> Any:
        return orjson.loads(line)  # 6× json.loads: half the monitor's CPU per record
except ImportError:  # pragma: no cover - depends on the environment

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, default=_plain, ensure_ascii=False, separators=(",", ":")).encode()

    def _loads(line: bytes) -> Any:
        return json.loads(line)


CAPTURE_PREFIX = "_tidal/capture"  # where an endpoint of a workspace writes its records

log = logging.getLogger("tidal.serving.capture")

Format = Literal["jsonl", "parquet"]
DropReason = Literal["buffer_full", "store_error", "shutdown", "encode_error"]
FIELDS = ("inference_id", "row", "ts", "model", "version", "variant", "latency_ms")
EAGER_ROWS = 16  # requests of at most this many rows are encoded by offer (see above)
# A buffered request: (head, number of rows, payload); head is (inference_id, ts, model, version,
# variant, latency_ms), payload its JSON Lines line (a small request, in JSON Lines), else
# (rows, predictions).
Head = tuple[str, float, str, str, str, float]
Payload = bytes | tuple[list[dict[str, Any]], list[dict[str, Any]]]
Entry = tuple[Head, int, Payload]


def _plain(value: Any) -> Any:
    """JSON for what the encoder does not know: numpy scalars and arrays, anything else as text."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)


class CaptureWriter:
    """Buffers sampled requests and writes their rows to ``store`` under ``prefix`` in a thread.

    The flusher thread starts with the writer; ``close()`` stops it. ``offer`` is for the request
    path (the event loop; other threads may call it too) and keeps references to the ``rows`` and
    ``predictions`` it is given, so they must not change afterwards. ``flush`` and ``close``
    block on the store and belong off the event loop.
    """

    def __init__(
        self,
        store: Store,
        prefix: str,
        *,
        sample_rate: float = 1.0,
        flush_interval_s: float = 5.0,
        flush_records: int = 1000,
        max_buffer_records: int = 100_000,
        format: Format = "jsonl",
        metrics: ServingMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be between 0 and 1, got {sample_rate}")
        if format not in ("jsonl", "parquet"):
            raise ValueError(f"capture format must be 'jsonl' or 'parquet', got {format!r}")
        if flush_records < 1 or max_buffer_records < 1 or flush_interval_s <= 0:
            raise ValueError("flush_records, max_buffer_records and flush_interval_s must be > 0")
        self.store = store
        self.prefix = prefix.strip("/")
        self.sample_rate = sample_rate
        self.flush_interval_s = flush_interval_s
        self.flush_records = flush_records
        self.max_buffer_records = max_buffer_records
        self.format = format
        self.metrics = metrics
        self.clock = clock
        self._buffer: deque[Entry] = deque()
        self._lock = threading.Lock()  # the counters below; held for a few operations only
        self._queued = 0  # rows in the buffer
        self._in_flight = 0  # rows taken by a flush that has not ended
        self._requests = self._sampled = self._offered = self._captured = self._failures = 0
        self._dropped: Counter[str] = Counter()
        self._flushing = threading.Lock()  # one flush at a time (the thread, flush(), close())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._writer_id = uuid.uuid4().hex[:8]
        self._seq = 0
        self._last_error: str | None = None  # the latest failure, kept after recovery
        self._failing: str | None = None  # the failure warned about; None once writes work
        self._last_flush_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="tidal-capture", daemon=True)
        self._thread.start()

    # -- the request path ---------------------------------------------------------------------

    def offer(
        self,
        model: str,
        version: str,
        variant: str,
        inference_id: str,
        latency_ms: float,
        rows: list[dict[str, Any]],
        predictions: list[dict[str, Any]],
    ) -> int:
        """Buffer this request's rows if it is sampled; the number of rows kept."""
        rate = self.sample_rate
        n = len(rows) if rate >= 1.0 or (rate > 0.0 and random.random() < rate) else 0
        if n != len(predictions):
            n = min(n, len(predictions))
        head = (inference_id, self.clock(), model, version, variant, latency_ms)
        whole = n == len(rows) == len(predictions)
        payload: Payload = (rows, predictions) if whole else (rows[:n], predictions[:n])
        if 0 < n <= EAGER_ROWS and self.format == "jsonl":
            with contextlib.suppress(Exception):  # else the flusher counts an encode_error
                payload = _line(head, *payload)
        lock = self._lock
        lock.acquire()
        try:
            self._requests += 1
            if not n:
                return 0
            self._sampled += 1
            self._offered += n
            room = self.max_buffer_records - self._queued
            stopped = self._stop.is_set()
            kept = 0 if stopped else n if n <= room else max(room, 0)
            if kept:
                if kept < n:  # the rows that fit, as lists
                    payload = (rows[:kept], predictions[:kept])
                self._buffer.append((head, kept, payload))
                self._queued += kept
            if kept < n:
                reason: DropReason = "shutdown" if stopped else "buffer_full"
                self._dropped[reason] += n - kept
            wake = self._queued >= self.flush_records
        finally:
            lock.release()
        if kept < n and self.metrics is not None:
            self.metrics.capture_dropped(model, version, variant, n - kept, reason)
        if wake and not self._wake.is_set():
            self._wake.set()
        return kept

    # -- the flusher ----------------------------------------------------------------------------

    def _run(self) -> None:
        ok = True
        while not self._stop.is_set():
            # woken early by a full batch, unless the store just failed: then wait it out
            (self._wake if ok else self._stop).wait(self.flush_interval_s)
            self._wake.clear()
            ok = self.flush()  # after close(), or during it, this is the last try
        self._drop_pending("shutdown")

    def flush(self) -> bool:
        """Write every buffered row now; False when a write failed (its rows stay buffered)."""
        with self._flushing:
            while self._buffer:
                if not self._write(self._take()):
                    return False
            return True

    def _take(self) -> list[Entry]:
        """Requests from the front of the buffer, about ``flush_records`` rows (each popleft is
        atomic, so this holds the lock only to move the count: ``offer`` never waits on it)."""
        taken: list[Entry] = []
        rows = 0
        popleft = self._buffer.popleft
        try:
            while rows < self.flush_records:
                entry = popleft()
                taken.append(entry)
                rows += entry[1]
        except IndexError:
            pass
        with self._lock:
            self._queued -= rows
            self._in_flight += rows
        return taken

    def _write(self, batch: list[Entry]) -> bool:
        """One object per model and hour; on a failure the rest goes back to the buffer."""
        groups: dict[tuple[str, int], list[Entry]] = {}
        for entry in batch:
            groups.setdefault((entry[0][2], int(entry[0][1] // 3600)), []).append(entry)
        for done, ((model, _), entries) in enumerate(groups.items()):
            try:
                key, data = self._encode(model, entries)
            except Exception:  # a bug or a value no encoder takes: trying again will not help
                log.exception("capture could not encode %d rows of %s", _rows(entries), model)
                self._count(entries, "encode_error")
                continue
            try:
                self.store.put_bytes(key, data)
            except Exception as exc:
                self._failed(exc, [e for group in list(groups.values())[done:] for e in group])
                return False
            self._last_flush_at = self.clock()
            self._count(entries, None)
        if self._failing is not None:
            log.info("capture writes to %s work again", self.store.uri(self.prefix))
            self._failing = None
        return True

    def _encode(self, model: str, entries: list[Entry]) -> tuple[str, bytes]:
        self._seq += 1
        first = datetime.fromtimestamp(entries[0][0][1], UTC)
        key = (
            f"{self.prefix}/{model}/date={first:%Y-%m-%d}/hour={first:%H}/"
            f"{first:%Y%m%dT%H%M%S}-{self._seq:06d}-{self._writer_id}.{self.format}"
        )
        if self.format == "parquet":
            return key, _parquet(entries)
        lines: list[bytes] = []
        rows = 0
        for head, n, payload in entries:
            lines.append(payload if isinstance(payload, bytes) else _line(head, *payload))
            rows += n
            if rows >= 256:
                rows = 0
                time.sleep(0)  # let the event loop have the GIL: it waits 5 ms otherwise
        lines.append(b"")
        return key, b"\n".join(lines)

    def _failed(self, exc: Exception, entries: list[Entry]) -> None:
        error = f"{type(exc).__name__}: {exc}"[:500]
        if error != self._failing:
            log.warning(
                "capture could not write to %s (%s); its rows stay buffered and are tried "
                "again in %g s",
                self.store.uri(self.prefix),
                error,
                self.flush_interval_s,
            )
        self._failing = self._last_error = error
        lost: list[Entry] = []
        with self._lock:  # back in front, in their order; past the bound the oldest go first
            self._failures += 1
            self._buffer.extendleft(reversed(entries))
            rows = _rows(entries)
            self._in_flight -= rows
            self._queued += rows
            while self._queued > self.max_buffer_records:
                lost.append(self._buffer.popleft())
                self._queued -= lost[-1][1]
        if lost:
            self._count(lost, "store_error", taken=False)

    def _drop_pending(self, reason: DropReason) -> None:
        lost: list[Entry] = []
        with self._lock:
            while self._buffer:
                lost.append(self._buffer.popleft())
            self._queued = 0
        if lost:
            log.warning("capture dropped %d unwritten rows (%s)", _rows(lost), reason)
            self._count(lost, reason, taken=False)

    def _count(
        self, entries: list[Entry], dropped: DropReason | None, *, taken: bool = True
    ) -> None:
        """Count rows written (``dropped`` None) or lost, in stats and per variant metrics;
        ``taken``: the rows were in flight (else they were just removed from the buffer)."""
        rows = _rows(entries)
        with self._lock:
            if taken:
                self._in_flight -= rows
            if dropped is None:
                self._captured += rows
            else:
                self._dropped[dropped] += rows
        if self.metrics is None:
            return
        per_variant: Counter[tuple[str, str, str]] = Counter()
        for head, n, _ in entries:
            per_variant[head[2], head[3], head[4]] += n
        for (model, version, variant), n in per_variant.items():
            if dropped is None:
                self.metrics.captured(model, version, variant, n)
            else:
                self.metrics.capture_dropped(model, version, variant, n, dropped)

    # -- the owner's side -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts in rows: ``offered == captured + sum(dropped.values()) + pending``."""
        with self._lock:
            return {
                "requests": self._requests,
                "sampled": self._sampled,
                "offered": self._offered,
                "captured": self._captured,
                "dropped": dict(self._dropped),
                "pending": self._queued + self._in_flight,
                "failures": self._failures,
                "last_error": self._last_error,
                "last_flush_at": self._last_flush_at,
            }

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is left (one try) and stop; rows still unwritten are dropped (shutdown).

        A write still hanging after ``timeout_s`` is left to finish in its daemon thread; the
        rows waiting behind it are dropped now."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._drop_pending("shutdown")

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rows(entries: list[Entry]) -> int:
    return sum(entry[1] for entry in entries)


def _line(head: Head, rows: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> bytes:
    """A request's JSON Lines line (without its newline)."""
    inference_id, ts, model, version, variant, latency_ms = head
    return _dumps({
        "inference_id": inference_id,
        "ts": ts,
        "model": model,
        "version": version,
        "variant": variant,
        "latency_ms": latency_ms,
        "inputs": rows,
        "outputs": predictions,
    })  # fmt: skip


def _records(entries: list[Entry]) -> Iterator[dict[str, Any]]:
    for (inference_id, ts, model, version, variant, latency_ms), _, payload in entries:
        if isinstance(payload, bytes):
            line = _loads(payload)
            rows, predictions = line["inputs"], line["outputs"]
        else:
            rows, predictions = payload
        for row, (given, answer) in enumerate(zip(rows, predictions, strict=False)):
            yield {
                "inference_id": inference_id,
                "row": row,
                "ts": ts,
                "model": model,
                "version": version,
                "variant": variant,
                "latency_ms": latency_ms,
                "input": given,
                "output": answer,
            }


# -- inference ids ----------------------------------------------------------------------------


def new_inference_id(at: float | None = None) -> str:
    """A request's id: 32 hex digits in the UUIDv7 layout (48 bits of unix milliseconds,
    version 7, 74 random bits), so ids sort by time and name the capture hour of their record
    (``inference_time``), and a late label finds its prediction without reading all traffic.
    ``at``: the time to put in it (unix seconds), else now."""
    ms = time.time_ns() // 1_000_000 if at is None else int(at * 1000)
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits; 74 used
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64 | (0b10 << 62)
    return f"{value | (rand & ((1 << 62) - 1)):032x}"


def inference_time(inference_id: str) -> float | None:
    """The unix time (seconds) a ``new_inference_id`` was made; None for other ids."""
    if len(inference_id) != 32 or inference_id[12] != "7":
        return None
    try:
        return int(inference_id[:12], 16) / 1000
    except ValueError:
        return None


# -- the formats ------------------------------------------------------------------------------


def _parquet(entries: list[Entry]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = list(_records(entries))
    columns: dict[str, list[Any]] = {name: [r[name] for r in records] for name in FIELDS}
    outputs = [r["output"] for r in records]
    columns["label"] = [o.get("label") for o in outputs]
    columns["score"] = [o.get("score") for o in outputs]
    columns["input"] = [_dumps(r["input"]).decode() for r in records]
    columns["probabilities"] = [
        None if o.get("probabilities") is None else _dumps(o["probabilities"]).decode()
        for o in outputs
    ]
    features = dict.fromkeys(name for r in records for name in r["input"])
    for feature in features:
        columns[f"in.{feature}"] = [r["input"].get(feature) for r in records]
    arrays = {}
    for name, values in columns.items():
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in one column: as JSON text
            arrays[name] = pa.array([None if v is None else _dumps(v).decode() for v in values])
    out = io.BytesIO()
    pq.write_table(pa.table(arrays), out)
    return out.getvalue()


def read_capture(store: Store, prefix: str, model: str) -> Iterator[dict[str, Any]]:
    """Every captured record of ``model`` under ``prefix``, object by object in key order."""
    for info in store.list(f"{prefix.strip('/')}/{model}"):
        yield from read_object(store, info.key)


def read_object(
    store: Store, key: str, ids: Container[str] | None = None
) -> Iterator[dict[str, Any]]:
    """The records of one capture object (JSON Lines or Parquet); other objects have none.
    ``ids``: only the records of these inference ids; a JSON Lines line of another id is
    skipped unparsed (its id is read from where the writer puts it, first)."""
    for line in _lines(store, key, ids):
        inputs = line.pop("inputs", None)
        if inputs is None:  # a record already: a line of one row, as written before 2026-11-22
            yield line
            continue
        outputs = line.pop("outputs")
        for row, (given, answer) in enumerate(zip(inputs, outputs, strict=False)):
            yield {
                "inference_id": line["inference_id"],
                "row": row,
                **line,
                "input": given,
                "output": answer,
            }


def read_predictions(
    store: Store, key: str, ids: Container[str] | None = None
) -> Iterator[tuple[str, int, dict[str, Any], dict[str, Any]]]:
    """(inference_id, row, line, output) per row of one capture object, as ``read_object``
    without building a record per row: ``line`` holds ts, model, version, variant and
    latency_ms of the row's request (and more keys, to be ignored)."""
    for line in _lines(store, key, ids):
        inference_id = str(line.get("inference_id"))
        outputs = line.get("outputs")
        if outputs is None:
            yield inference_id, int(line.get("row", 0)), line, line.get("output") or {}
            continue
        for row, answer in enumerate(outputs):
            yield inference_id, row, line, answer


_ID_OPENS = b'{"inference_id":"'  # how every line this module writes starts


def _lines(store: Store, key: str, ids: Container[str] | None) -> Iterator[dict[str, Any]]:
    """The parsed lines of a capture object: one per request (or per row, in objects written
    before 2026-11-22, and in Parquet); with ``ids``, those of these inference ids only."""
    if key.endswith(".jsonl"):
        opens = len(_ID_OPENS)
        for line in store.get_bytes(key).splitlines():
            if ids is not None and line.startswith(_ID_OPENS):
                if line[opens : line.find(b'"', opens)].decode() not in ids:
                    continue
                yield _loads(line)
            elif line.strip():
                record = _loads(line)
                if ids is None or record.get("inference_id") in ids:
                    yield record
    elif key.endswith(".parquet"):
        for record in _read_parquet(store.get_bytes(key)):
            if ids is None or record["inference_id"] in ids:
                yield record


def _read_parquet(data: bytes) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for row in pq.read_table(io.BytesIO(data)).to_pylist():
        record = {name: row[name] for name in FIELDS}
        record["input"] = json.loads(row["input"])
        probabilities = row["probabilities"]
        record["output"] = {
            "label": row["label"],
            "score": row["score"],
            "probabilities": None if probabilities is None else json.loads(probabilities),
        }
        yield record
