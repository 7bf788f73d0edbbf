"""Data capture on a real S3 server (SeaweedFS), then on an S3 endpoint that is gone.

The unreachable store is opened as a user's config would open it (``open_store`` with an
endpoint on a closed 127.0.0.1 port, the SDK's default retries), so each write fails only after
several seconds of retries: the request path must not notice, and every lost row is counted.
"""

from __future__ import annotations

import re
import socket
import time
from typing import TYPE_CHECKING

import pytest

from tidal.serving.capture import CaptureWriter, read_capture
from tidal.serving.metrics import ServingMetrics
from tidal.storage import open_store

if TYPE_CHECKING:
    from conftest import SeaweedS3  # tests/integration/conftest.py, which starts the server

pytestmark = pytest.mark.s3

KEY = re.compile(
    r"capture/iris/date=\d{4}-\d\d-\d\d/hour=\d\d/\d{8}T\d{6}-\d{6}-[0-9a-f]{8}\.(jsonl|parquet)"
)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


def request(i: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    rows: list[dict[str, object]] = [{"x": float(i), "colour": "red"}, {"x": -1.0, "colour": "b"}]
    predictions: list[dict[str, object]] = [
        {"label": "yes", "score": 0.8, "probabilities": {"yes": 0.8, "no": 0.2}},
        {"label": "no", "score": 0.6, "probabilities": {"yes": 0.4, "no": 0.6}},
    ]
    return rows, predictions


@pytest.mark.parametrize("format", ["jsonl", "parquet"])
def test_captured_rows_reach_the_bucket(seaweed: SeaweedS3, format: str) -> None:
    if format == "parquet":
        pytest.importorskip("pyarrow")
    bucket = seaweed.create_bucket("capture")
    store = open_store(f"s3://{bucket}/tidal", **seaweed.store_options())
    metrics = ServingMetrics()
    capture = CaptureWriter(
        store, "capture", flush_interval_s=0.1, flush_records=30, format=format, metrics=metrics
    )
    for i in range(50):
        assert capture.offer("iris", "3", "blue", f"req{i}", 2.5, *request(i)) == 2
    capture.close(timeout_s=10)

    stats = capture.stats()
    assert (stats["captured"], stats["pending"], stats["dropped"]) == (100, 0, {})
    listed = seaweed.client().list_objects_v2(Bucket=bucket, Prefix="tidal/capture/")
    keys = [o["Key"].removeprefix("tidal/") for o in listed["Contents"]]
    assert len(keys) >= 2 and all(KEY.fullmatch(k) and k.endswith(format) for k in keys), keys
    records = list(read_capture(store, "capture", "iris"))
    assert [(r["inference_id"], r["row"]) for r in records] == [
        (f"req{i}", row) for i in range(50) for row in (0, 1)
    ]
    assert records[2]["input"] == {"x": 1.0, "colour": "red"}
    assert records[3]["output"] == {
        "label": "no",
        "score": 0.6,
        "probabilities": {"yes": 0.4, "no": 0.6},
    }
    assert metrics.capture_records.labels("iris", "3", "blue").value == 100


def test_an_unreachable_store_costs_serving_nothing_and_every_lost_row_is_counted() -> None:
    pytest.importorskip("s3fs")
    store = open_store(
        "s3://gone/tidal",
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        key="tidal-test",
        secret="not-a-secret",
    )
    metrics = ServingMetrics()
    capture = CaptureWriter(
        store,
        "capture",
        flush_interval_s=0.05,
        flush_records=100,
        max_buffer_records=400,
        metrics=metrics,
    )
    costs = []
    for i in range(1000):  # spread over ~0.5 s, while the flusher's first write is failing
        rows, predictions = request(i)
        started = time.perf_counter()
        capture.offer("iris", "3", "blue", f"req{i}", 2.5, rows, predictions)
        costs.append(time.perf_counter() - started)
        if i % 10 == 0:
            time.sleep(0.005)
    costs.sort()
    print(
        f"offer, store unreachable: median {costs[500] * 1e6:.1f} µs, max {costs[-1] * 1e6:.0f} µs"
    )
    assert sum(costs) < 1.0  # 1,000 calls in well under 1 ms each
    assert costs[500] < 100e-6

    started = time.monotonic()
    capture.close(timeout_s=0.5)  # the write in flight hangs in the SDK's retries
    assert time.monotonic() - started < 2.0
    capture.close(timeout_s=20)  # wait for it to fail and the thread to end
    stats = capture.stats()
    print(stats)
    assert stats["captured"] == 0 and stats["pending"] == 0
    assert stats["offered"] == 2000 == sum(stats["dropped"].values())
    assert stats["dropped"]["buffer_full"] >= 1000
    assert stats["dropped"]["shutdown"] >= 300
    assert stats["failures"] >= 1 and "unreachable" in stats["last_error"]
    by_reason = {
        reason: metrics.capture_drops.labels("iris", "3", "blue", reason).value
        for reason in stats["dropped"]
    }
    assert by_reason == stats["dropped"]
