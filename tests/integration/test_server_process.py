"""A real endpoint: a trained scikit-learn model, the deployment record in SQLite, uvicorn, HTTP."""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tidal.config import ServingConfig
from tidal.serving.gateway import build_app
from tidal.serving.runtime import Runtime
from tidal.serving.server import BackgroundServer
from tidal.serving.slot import ModelSlot, SingleVariantRouter
from tidal.state import State
from tidal.training.recipes.tabular import MODEL_FILE
from toy import train_houses


def median_seconds(call: Callable[[], object], times: int = 21) -> float:
    took = []
    for _ in range(times):
        start = time.perf_counter()
        call()
        took.append(time.perf_counter() - start)
    return statistics.median(took)


def test_real_server_serves_a_trained_model_and_refuses_a_tampered_one(tmp_path: Path) -> None:
    good = tmp_path / "models" / "1"
    state = State(tmp_path / "state.db")
    manifest_sha256 = train_houses(good)
    state.deploy("houses", "1", str(good), manifest_sha256, reason="first model")
    config = ServingConfig(reload_interval_s=0.05)
    runtime = Runtime(config)
    slot = ModelSlot(lambda: state.current_deployment("houses"), runtime.loader())
    app = build_app(config, SingleVariantRouter(slot), runtime)

    with (
        BackgroundServer(app, "127.0.0.1", 0) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        assert server.port != 0 and server.url.startswith("http://127.0.0.1:")
        ping = http.get("/ping")
        assert ping.status_code == 200
        assert ping.json() == {"status": "ready", "model_version": "1"}
        # a response that waits for a delayed ACK (Nagle) takes ~40 ms; a healthy one ~1 ms
        assert median_seconds(lambda: http.get("/ping")) < 0.02

        response = http.post(
            "/invocations",
            content="30,1\n180,4\n",
            headers={"Content-Type": "text/csv"},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert [p["label"] for p in body["predictions"]] == ["cheap", "dear"]
        assert body["predictions"][1]["score"] > 0.5
        assert set(body["predictions"][1]["probabilities"]) == {"cheap", "dear"}
        assert response.headers["x-inference-id"] == body["inference_id"]

        # A copy whose model file changed after its (intact) manifest was written.
        tampered = tmp_path / "models" / "2"
        shutil.copytree(good, tampered)
        with open(tampered / MODEL_FILE, "ab") as fh:
            fh.write(b"\0")
        state.deploy("houses", "2", str(tampered), manifest_sha256, reason="tampered copy")

        deadline = time.monotonic() + 10
        while slot.last_error is None:
            assert time.monotonic() < deadline, "the refresher never tried the new deployment"
            time.sleep(0.02)
        assert "sha256" in slot.last_error and "refusing" in slot.last_error
        assert "version 2" in slot.last_error

        assert http.get("/ping").json() == {"status": "ready", "model_version": "1"}
        again = http.post("/predict", json={"size": 190, "rooms": 4})
        assert again.status_code == 200
        assert again.json()["model_version"] == "1"
        assert again.json()["predictions"][0]["label"] == "dear"

    assert not server.running
