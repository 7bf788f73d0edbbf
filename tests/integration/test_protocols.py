"""Protocols against a real endpoint (uvicorn, worker processes, a trained scikit-learn model):
the Triton client speaking Open Inference Protocol v2 unchanged, Prometheus metrics, capture,
and a Schemathesis run over the endpoint's own OpenAPI document that must find no 500."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tidal.config import ServingConfig
from tidal.serving.capture import read_capture
from tidal.serving.gateway import build_app
from tidal.serving.runtime import CAPTURE_PREFIX, Runtime
from tidal.serving.server import BackgroundServer
from tidal.serving.slot import ModelSlot, SingleVariantRouter
from tidal.state import State
from tidal.storage import Store
from toy import train_houses

tritonclient_http = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Store]]:
    tmp = tmp_path_factory.mktemp("protocols")
    state = State(tmp / "state.db")
    model = tmp / "models" / "1"
    state.deploy("houses", "1", str(model), train_houses(model), reason="test")
    store = Store(f"file://{tmp / 'store'}")
    config = ServingConfig(capture_flush_interval_s=0.2)
    runtime = Runtime(config, store=store, flavors=["sklearn"])
    slot = ModelSlot(lambda: state.current_deployment("houses"), runtime.loader())
    with BackgroundServer(build_app(config, SingleVariantRouter(slot), runtime)) as server:
        yield server.url, store


def test_the_triton_client_infers_unchanged(served: tuple[str, Store]) -> None:
    url, _ = served
    client = tritonclient_http.InferenceServerClient(url.removeprefix("http://"))
    try:
        check_triton(client)
    finally:
        client.close()


def check_triton(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("houses")
    metadata = client.get_model_metadata("houses")
    assert [i["name"] for i in metadata["inputs"]] == ["size", "rooms"]

    size = tritonclient_http.InferInput("size", [2], "FP64")
    size.set_data_from_numpy(np.array([30.0, 180.0]))
    rooms = tritonclient_http.InferInput("rooms", [2], "INT64")
    rooms.set_data_from_numpy(np.array([1, 4], dtype=np.int64))
    outputs = [tritonclient_http.InferRequestedOutput("label", binary_data=False)]
    result = client.infer("houses", [size, rooms], outputs=outputs)
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    assert labels == ["cheap", "dear"]

    with pytest.raises(tritonclient_http.InferenceServerException) as refused:
        client.infer("mansions", [size, rooms])
    assert "not served here" in str(refused.value)


def test_metrics_and_capture_follow_the_requests(served: tuple[str, Store]) -> None:
    url, store = served
    ids = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for size in (25.0, 175.0, 60.0):
            answer = http.post("/invocations", json={"instances": [{"size": size, "rooms": 2}]})
            assert answer.status_code == 200
            ids.append(answer.json()["inference_id"])
        assert http.post("/invocations", json={"instances": [{"size": "big"}]}).status_code == 422
        metrics = http.get("/metrics").text
    labelled = re.findall(r"^tidal_requests_total\{(.*)\} ", metrics, re.M)  # any label order
    assert any({'model="houses"', 'version="1"', 'variant="primary"'} <= set(labels.split(","))
               for labels in labelled), metrics  # fmt: skip
    assert 'code="422"' in metrics and "tidal_request_duration_seconds_bucket" in metrics
    assert "tidal_cold_starts_total" in metrics and "tidal_batch_size_bucket" in metrics

    deadline = time.monotonic() + 10
    while True:  # the capture writer flushes every 0.2 s, off the request path
        records = list(read_capture(store, CAPTURE_PREFIX, "houses"))
        if {r["inference_id"] for r in records} >= set(ids):
            break
        assert time.monotonic() < deadline, f"captured {len(records)} records"
        time.sleep(0.1)
    record = next(r for r in records if r["inference_id"] == ids[1])
    assert record["input"] == {"size": 175.0, "rooms": 2}
    assert record["output"]["label"] == "dear"
    assert record["version"] == "1" and record["variant"] == "primary"
    assert record["latency_ms"] > 0


@pytest.mark.skipif(
    shutil.which("schemathesis", path=str(Path(sys.executable).parent)) is None,
    reason="schemathesis is not installed",
)
def test_schemathesis_finds_no_server_error(served: tuple[str, Store], tmp_path: Path) -> None:
    url, _ = served
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "30",
            "--phases",
            "examples,coverage,fuzzing",
            "--generation-deterministic",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,  # its cache folder goes there
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
