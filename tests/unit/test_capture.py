"""Data capture on a ``file://`` store: records land under the documented keys, sampling, a full
buffer, and a store that fails, hangs and recovers while the request path never notices."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tidal.errors import StorageUnavailable
from tidal.serving.capture import EAGER_ROWS, CaptureWriter, read_capture
from tidal.serving.metrics import ServingMetrics
from tidal.storage import Store, open_store

NEW_YEAR = 1767225600.25  # 2026-01-01T00:00:00.25Z
KEY = re.compile(
    r"capture/iris/date=2026-01-01/hour=00/20260101T000000-(\d{6})-[0-9a-f]{8}\.(jsonl|parquet)"
)


class FlakyStore(Store):
    """A file store whose writes fail while ``down``, or wait for ``release`` while ``hang``."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.down = False
        self.hang = False
        self.release = threading.Event()
        self.attempts = 0
        self.during_put: Callable[[], None] | None = None

    def put_bytes(self, key: str, data: bytes) -> None:
        self.attempts += 1
        if self.during_put is not None:
            self.during_put()
        if self.hang:
            self.release.wait(10)
        if self.down:
            raise StorageUnavailable(f"storage {self.root} unreachable: connection refused")
        super().put_bytes(key, data)


@pytest.fixture
def store(tmp_path: Path) -> FlakyStore:
    return FlakyStore((tmp_path / "bucket").as_uri())


@pytest.fixture
def writer(store: FlakyStore) -> Iterator[Callable[..., CaptureWriter]]:
    """Writers on ``store`` that flush only when told, unless the test says otherwise."""
    made: list[CaptureWriter] = []

    def make(**options: Any) -> CaptureWriter:
        options = {"flush_interval_s": 60.0, "clock": lambda: NEW_YEAR, **options}
        made.append(CaptureWriter(store, "capture", **options))
        return made[-1]

    yield make
    store.release.set()
    for each in made:
        each.close(timeout_s=2)


def rows(n: int, start: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    inputs = [
        {"x": float(i), "colour": "red" if i % 2 else "blue"} for i in range(start, start + n)
    ]
    outputs = [
        {"label": "yes", "score": 0.75, "probabilities": {"yes": 0.75, "no": 0.25}} for _ in inputs
    ]
    return inputs, outputs


def offer(writer: CaptureWriter, n: int = 1, *, request: str = "req", start: int = 0) -> int:
    inputs, outputs = rows(n, start)
    return writer.offer("iris", "3", "blue", request, 1.5, inputs, outputs)


def balanced(stats: dict[str, Any]) -> bool:
    return bool(
        stats["offered"] == stats["captured"] + sum(stats["dropped"].values()) + stats["pending"]
    )


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# -- what lands where ---------------------------------------------------------------------------


def test_one_line_per_request_under_the_documented_key_read_back_one_record_per_row(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    capture = writer()
    assert offer(capture, 3, request="first") == 3
    inputs, outputs = rows(1)
    assert capture.offer("wine", "7", "green", "second", 2.0, inputs, outputs) == 1
    assert capture.flush()

    keys = [info.key for info in store.list("capture")]
    assert len(keys) == 2  # one object per model
    (iris,) = [k for k in keys if k.startswith("capture/iris/")]
    assert KEY.fullmatch(iris), iris
    assert re.fullmatch(r"capture/wine/date=2026-01-01/hour=00/.+\.jsonl", keys[1])
    given, answers = rows(3)
    (line,) = store.get_bytes(iris).decode().splitlines()
    assert json.loads(line) == {
        "inference_id": "first",
        "ts": NEW_YEAR,
        "model": "iris",
        "version": "3",
        "variant": "blue",
        "latency_ms": 1.5,
        "inputs": given,
        "outputs": answers,
    }
    assert list(read_capture(store, "capture", "iris")) == [
        {
            "inference_id": "first",
            "row": i,
            "ts": NEW_YEAR,
            "model": "iris",
            "version": "3",
            "variant": "blue",
            "latency_ms": 1.5,
            "input": given[i],
            "output": answers[i],
        }
        for i in range(3)
    ]
    assert [r["inference_id"] for r in read_capture(store, "capture", "wine")] == ["second"]
    stats = capture.stats()
    assert (stats["offered"], stats["captured"], stats["pending"]) == (4, 4, 0)
    assert stats["last_flush_at"] == NEW_YEAR


def test_a_small_request_is_encoded_at_once_and_a_big_one_when_flushed(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    capture = writer()
    small, small_answers = rows(EAGER_ROWS)
    big, big_answers = rows(EAGER_ROWS + 1)
    capture.offer("iris", "3", "blue", "small", 1.0, small, small_answers)
    capture.offer("iris", "3", "blue", "big", 1.0, big, big_answers)
    # the small one was copied (as JSON) when offered; the big one is kept by reference, so a
    # caller must leave its rows alone until the flush
    small[0]["x"] = -1.0
    assert capture.flush()
    records = list(read_capture(store, "capture", "iris"))
    assert len(records) == 2 * EAGER_ROWS + 1
    assert records[0]["input"]["x"] == 0.0
    assert [r["row"] for r in records if r["inference_id"] == "big"] == list(range(EAGER_ROWS + 1))
    assert [r["input"] for r in records if r["inference_id"] == "big"] == big


def test_lines_of_one_row_as_written_before_read_back_unchanged(store: FlakyStore) -> None:
    old = {
        "inference_id": "old",
        "row": 0,
        "ts": NEW_YEAR,
        "model": "iris",
        "version": "1",
        "variant": "primary",
        "latency_ms": 2.0,
        "input": {"x": 1.0},
        "output": {"label": "yes"},
    }
    store.put_bytes("capture/iris/date=2026-01-01/hour=00/old.jsonl", json.dumps(old).encode())
    assert list(read_capture(store, "capture", "iris")) == [old]


def test_rows_are_partitioned_by_the_hour_they_were_answered(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    now = [NEW_YEAR + 3599.0]  # 00:59:59
    capture = writer(clock=lambda: now[0])
    offer(capture, 2, request="before")
    now[0] += 2.0  # 01:00:01
    offer(capture, 1, request="after")
    capture.flush()
    keys = [info.key for info in store.list("capture/iris")]
    assert [k.split("/")[3] for k in keys] == ["hour=00", "hour=01"]
    assert keys[1].split("/")[-1].startswith("20260101T010001-")
    assert [r["inference_id"] for r in read_capture(store, "capture", "iris")] == [
        "before",
        "before",
        "after",
    ]


def test_a_full_batch_flushes_at_once_and_big_backlogs_come_in_several_objects(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    capture = writer(flush_records=10)  # the interval is a minute: only the batch size wakes it
    for i in range(25):
        offer(capture, 1, request=f"r{i}")
    wait_for(lambda: capture.stats()["captured"] == 25)
    objects = store.list("capture/iris")
    assert len(objects) >= 3  # ~10 rows each; a request is never split
    seqs = [int(m.group(1)) for o in objects if (m := KEY.fullmatch(o.key))]
    assert seqs == sorted(seqs) and len(seqs) == len(objects)
    assert [r["inference_id"] for r in read_capture(store, "capture", "iris")] == [
        f"r{i}" for i in range(25)
    ]


def test_the_interval_flushes_what_waits(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    capture = writer(flush_interval_s=0.05)
    offer(capture, 2)
    wait_for(lambda: capture.stats()["captured"] == 2)
    assert len(list(read_capture(store, "capture", "iris"))) == 2


def test_parquet_has_flat_columns_and_reads_back_as_the_same_records(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    capture = writer(format="parquet")
    offer(capture, 3, request="p")
    capture.flush()
    (info,) = store.list("capture/iris")
    assert KEY.fullmatch(info.key) and info.key.endswith(".parquet")
    local = store.root.removeprefix("file://") + "/" + info.key
    table = pq.read_table(local)
    assert table.column_names == [
        "inference_id", "row", "ts", "model", "version", "variant", "latency_ms",
        "label", "score", "input", "probabilities", "in.x", "in.colour",
    ]  # fmt: skip
    assert table.column("in.x").to_pylist() == [0.0, 1.0, 2.0]
    assert json.loads(table.column("probabilities")[0].as_py()) == {"yes": 0.75, "no": 0.25}
    records = list(read_capture(store, "capture", "iris"))
    assert [r["row"] for r in records] == [0, 1, 2]
    assert records[1]["input"] == {"x": 1.0, "colour": "red"}
    assert records[1]["output"] == {
        "label": "yes",
        "score": 0.75,
        "probabilities": {"yes": 0.75, "no": 0.25},
    }


# -- sampling and a full buffer -----------------------------------------------------------------


def test_sampling_zero_keeps_nothing_and_one_keeps_everything(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    never, always = writer(sample_rate=0.0), writer(sample_rate=1.0)
    assert [offer(never, 2) for _ in range(100)] == [0] * 100
    assert [offer(always, 2) for _ in range(100)] == [2] * 100
    never.flush()
    always.flush()
    assert never.stats() | {"last_flush_at": None} == {
        "requests": 100,
        "sampled": 0,
        "offered": 0,
        "captured": 0,
        "dropped": {},
        "pending": 0,
        "failures": 0,
        "last_error": None,
        "last_flush_at": None,
    }
    assert always.stats()["captured"] == 200
    assert len(list(read_capture(store, "capture", "iris"))) == 200


def test_sampling_half_keeps_about_half_of_the_requests_whole(
    writer: Callable[..., CaptureWriter],
) -> None:
    capture = writer(sample_rate=0.5)
    kept = [offer(capture, 3) for _ in range(4000)]
    assert set(kept) == {0, 3}  # a request is sampled whole or not at all
    sampled = kept.count(3)
    assert 1800 < sampled < 2200  # binomial(4000, 0.5): sd ~32, so this is over 6 sd
    assert capture.stats()["sampled"] == sampled


def test_a_full_buffer_drops_new_rows_and_counts_them(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    metrics = ServingMetrics()
    capture = writer(max_buffer_records=5, metrics=metrics)
    assert offer(capture, 3, request="a") == 3
    assert offer(capture, 3, request="b") == 2  # the first two rows of b fit
    assert offer(capture, 3, request="c") == 0
    stats = capture.stats()
    assert stats["dropped"] == {"buffer_full": 4}
    assert stats["pending"] == 5 and balanced(stats)
    assert metrics.capture_drops.labels("iris", "3", "blue", "buffer_full").value == 4
    capture.flush()
    records = list(read_capture(store, "capture", "iris"))
    assert [(r["inference_id"], r["row"]) for r in records] == [
        ("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1),
    ]  # fmt: skip
    assert metrics.capture_records.labels("iris", "3", "blue").value == 5
    assert offer(capture, 3, request="d") == 3  # room again once written


# -- a store that fails, hangs, recovers ----------------------------------------------------------


def test_a_failing_store_keeps_rows_warns_once_and_writes_them_when_it_recovers(
    store: FlakyStore, writer: Callable[..., CaptureWriter], caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ServingMetrics()
    capture = writer(metrics=metrics, flush_records=10_000)  # only this test's flush() calls
    store.down = True
    started = time.perf_counter()
    for i in range(1000):
        offer(capture, 1, request=f"r{i}")
    assert time.perf_counter() - started < 0.5  # the request path never touches the store

    with caplog.at_level(logging.INFO, logger="tidal.serving.capture"):
        assert capture.flush() is False
        assert capture.flush() is False
        stats = capture.stats()
        assert stats["failures"] == 2 and stats["pending"] == 1000 and stats["captured"] == 0
        assert "connection refused" in stats["last_error"]
        store.down = False
        assert capture.flush() is True
    messages = [r.getMessage() for r in caplog.records]
    assert sum("could not write" in m for m in messages) == 1  # one warning per distinct failure
    assert sum("work again" in m for m in messages) == 1
    stats = capture.stats()
    assert (stats["captured"], stats["pending"], stats["dropped"]) == (1000, 0, {})
    assert "connection refused" in stats["last_error"]  # kept after recovery, for stats
    records = list(read_capture(store, "capture", "iris"))
    assert [r["inference_id"] for r in records] == [f"r{i}" for i in range(1000)]  # in order
    assert metrics.capture_records.labels("iris", "3", "blue").value == 1000


def test_rows_put_back_after_a_failure_beyond_the_bound_lose_the_oldest_first(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    metrics = ServingMetrics()
    capture = writer(max_buffer_records=10, metrics=metrics)
    for i in range(10):
        offer(capture, 1, request=f"old{i}")
    store.down = True
    # while the 10 rows are in flight, 5 new rows arrive; 15 rows come back for a room of 10

    def five_new() -> None:
        for i in range(5):
            offer(capture, 1, request=f"new{i}")

    store.during_put = five_new
    assert capture.flush() is False
    store.during_put = None
    stats = capture.stats()
    assert stats["dropped"] == {"store_error": 5} and stats["pending"] == 10 and balanced(stats)
    assert metrics.capture_drops.labels("iris", "3", "blue", "store_error").value == 5
    store.down = False
    assert capture.flush()
    kept = [r["inference_id"] for r in read_capture(store, "capture", "iris")]
    assert kept == [f"old{i}" for i in range(5, 10)] + [f"new{i}" for i in range(5)]


def test_the_flusher_thread_retries_after_an_interval_and_serving_never_waits(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    store.down = True
    capture = writer(flush_interval_s=0.05, flush_records=10)
    for i in range(50):
        offer(capture, 1, request=f"r{i}")
    wait_for(lambda: capture.stats()["failures"] >= 2)
    store.down = False
    wait_for(lambda: capture.stats()["captured"] == 50)
    assert balanced(capture.stats())


def test_close_writes_what_is_left_and_drops_what_cannot_be_written(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    fine = writer()
    offer(fine, 4)
    fine.close()
    assert fine.stats()["captured"] == 4

    broken = writer(metrics=(metrics := ServingMetrics()))
    offer(broken, 3)
    store.down = True
    broken.close()
    stats = broken.stats()
    assert stats["dropped"] == {"shutdown": 3} and stats["pending"] == 0 and balanced(stats)
    assert metrics.capture_drops.labels("iris", "3", "blue", "shutdown").value == 3
    assert offer(broken, 2) == 0  # closed: counted, never buffered
    assert broken.stats()["dropped"] == {"shutdown": 5}


def test_close_gives_up_on_a_write_that_hangs(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    capture = writer(flush_records=5)
    store.hang = store.down = True
    for i in range(5):
        offer(capture, 1, request=f"r{i}")  # wakes the flusher, whose write hangs
    wait_for(lambda: store.attempts == 1)
    started = time.perf_counter()
    for i in range(1000):
        offer(capture, 1, request=f"later{i}")
    assert time.perf_counter() - started < 0.5
    capture.close(timeout_s=0.2)
    assert time.perf_counter() - started < 2.0
    stats = capture.stats()
    assert stats["dropped"] == {"shutdown": 1000} and stats["pending"] == 5  # still in flight
    store.release.set()  # the write ends (failing): its rows are the last ones dropped
    capture.close(timeout_s=5)
    stats = capture.stats()
    assert stats["dropped"] == {"shutdown": 1005} and stats["pending"] == 0 and balanced(stats)
    assert stats["failures"] == 1


def test_values_json_does_not_know_are_written_as_text_and_integer_labels_as_keys(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    np = pytest.importorskip("numpy")
    capture = writer()
    given = [{"when": Path("/x"), "n": np.int64(3)}]
    answer = [{"label": 1, "score": np.float32(0.5), "probabilities": {0: 0.5, 1: 0.5}}]
    capture.offer("iris", "3", "blue", "odd", 1.0, given, answer)
    assert capture.flush()
    (record,) = read_capture(store, "capture", "iris")
    assert record["input"] == {"when": "/x", "n": 3}
    assert record["output"] == {"label": 1, "score": 0.5, "probabilities": {"0": 0.5, "1": 0.5}}
    assert capture.stats()["dropped"] == {}


def test_offer_costs_a_few_microseconds(
    store: FlakyStore, writer: Callable[..., CaptureWriter]
) -> None:
    store.down = True  # the flusher fails at once and waits a minute; close() drops the rest
    capture = writer(max_buffer_records=10_000_000)
    inputs, outputs = rows(100)
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        capture.offer("iris", "3", "blue", "id", 1.5, inputs, outputs)
    per_call = (time.perf_counter() - started) / n
    print(f"offer of a 100-row request: {per_call * 1e6:.2f} µs")
    assert per_call < 50e-6  # ~2 µs measured; one append per request, whatever its rows


def test_open_store_paths_work_too(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "plain"))
    with CaptureWriter(store, "/capture/", clock=lambda: NEW_YEAR) as capture:
        offer(capture, 1)
    assert KEY.fullmatch(store.list("capture")[0].key)
