"""The serverless endpoint with real worker processes: scale to zero, cold start, crashes,
memory limits, errors and metrics. The model is a ``python``-flavor folder whose inference.py
misbehaves on chosen inputs, so each failure can be caused on purpose."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tidal.artifact import Feature, Manifest, write_manifest
from tidal.config import ServingConfig
from tidal.serving.auth import new_key
from tidal.serving.gateway import build_app
from tidal.serving.runtime import Runtime
from tidal.serving.server import BackgroundServer
from tidal.serving.slot import ModelSlot, SingleVariantRouter
from tidal.state import State
from toy import slow_launcher_site

KEY, KEY_HASH = new_key()
AUTH = {"Authorization": f"Bearer {KEY}"}

INFERENCE = """
import os
import time


def model_fn(model_dir):
    ballast = os.environ.get("TIDAL_TEST_BALLAST_MB")
    return {
        "gate": os.path.join(model_dir, "..", "release"),
        "ballast": bytearray(int(ballast) * 1024 * 1024) if ballast else None,
    }


def predict_fn(rows, model):
    out = []
    for row in rows:
        x = row["x"]
        if x == 13:
            raise RuntimeError("unlucky input")
        if x == 7:  # slow: held at the worker until the test releases it (10 s at most)
            deadline = time.monotonic() + 10
            while not os.path.exists(model["gate"]) and time.monotonic() < deadline:
                time.sleep(0.01)
        if x == 500:
            grown = bytearray(500 * 1024 * 1024)  # grows past serving.memory_mb
            grown[::4096] = b"x" * len(grown[::4096])
            time.sleep(3)
        out.append("big" if x > 0 else "small")
    return out
"""


def write_model(folder: Path) -> str:
    folder.mkdir(parents=True)
    (folder / "inference.py").write_text(textwrap.dedent(INFERENCE))
    manifest = Manifest("python", "tabular", [Feature("x", "number")], ["big", "small"], "label")
    return write_manifest(folder, manifest)


@dataclass
class Endpoint:
    url: str
    http: httpx.Client
    slot: ModelSlot
    runtime: Runtime

    gate: Path

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.http.get("/admin/workers", headers=AUTH).json()
        return status

    def workers(self) -> list[int]:
        return [w["pid"] for v in self.status()["variants"] for w in v["workers"]]

    def wait_until(self, what: str, check: Callable[[dict[str, Any]], bool]) -> None:
        """Poll /admin/workers until ``check`` holds for the (only) variant's status."""
        deadline = time.monotonic() + 20
        while True:
            status = self.status()
            if check({**status["variants"][0], "total_in_flight": status["in_flight"]}):
                return
            assert time.monotonic() < deadline, f"never {what}: {status}"
            time.sleep(0.02)

    def release(self) -> None:
        """Let the slow (x = 7) requests finish."""
        self.gate.touch()

    def predict(self, x: float) -> httpx.Response:
        return self.http.post("/invocations", json={"instances": [{"x": x}]})

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture
def endpoint(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    overrides = getattr(request, "param", {})
    settings = {"reload_interval_s": 0.1, "idle_timeout_s": 1.5, "worker_idle_s": 1.0}
    config = ServingConfig(**{**settings, **overrides}, api_keys=[KEY_HASH])
    state = State(tmp_path / "state.db")
    model = tmp_path / "models" / "1"
    state.deploy("toy", "1", str(model), write_model(model), reason="test")
    runtime = Runtime(config, flavors=["python"])
    slot = ModelSlot(lambda: state.current_deployment("toy"), runtime.loader())
    app = build_app(config, SingleVariantRouter(slot), runtime)
    with (
        BackgroundServer(app, "127.0.0.1", 0) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        yield Endpoint(server.url, http, slot, runtime, tmp_path / "models" / "release")
        launcher = runtime.launcher.pid
    assert (launcher is not None and not psutil.pid_exists(launcher)) or _zombie(launcher)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def gone(pids: list[int], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and not _zombie(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_scales_to_zero_and_a_cold_request_is_held_not_refused(endpoint: Endpoint) -> None:
    assert endpoint.workers() == []  # idle from the start: nothing loaded
    # ready once the launcher has imported its libraries: a request will start a worker fast
    deadline = time.monotonic() + 30
    while endpoint.http.get("/ping").status_code != 200:
        assert time.monotonic() < deadline, "/ping never answered 200"
        time.sleep(0.05)
    assert endpoint.workers() == []
    started = time.perf_counter()
    first = endpoint.predict(5)
    cold = time.perf_counter() - started
    assert first.status_code == 200, first.text
    assert first.json()["predictions"][0]["label"] == "big"
    assert cold < 2.0
    (pid,) = endpoint.workers()
    worker = psutil.Process(pid)
    assert worker.ppid() == endpoint.runtime.launcher.pid  # forked from the launcher
    assert endpoint.metric("tidal_cold_starts_total") == 1

    # no request for idle_timeout_s (1.5 s): the worker exits and its memory goes with it
    assert gone([pid], within_s=5), "the idle worker did not exit"
    assert endpoint.workers() == []
    assert psutil.Process(endpoint.runtime.launcher.pid).children() == []
    assert endpoint.metric("tidal_workers") == 0

    again = endpoint.predict(-1)
    assert again.status_code == 200 and again.json()["predictions"][0]["label"] == "small"
    assert endpoint.metric("tidal_cold_starts_total") == 2


def test_a_model_that_raises_fails_its_request_and_the_worker_stays(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    assert endpoint.predict(1).status_code == 200
    (pid,) = endpoint.workers()
    with caplog.at_level("ERROR", logger="tidal.serving"):
        bad = endpoint.predict(13)
    assert bad.status_code == 500
    error = bad.json()["error"]
    assert error["code"] == "prediction_failed" and error["id"].startswith("err_")
    assert "the model raised" in error["message"]
    # the worker's traceback is in the endpoint's log under the error id
    assert error["id"] in caplog.text and "unlucky input" in caplog.text
    assert bad.headers["x-inference-id"] == bad.json()["inference_id"]
    assert endpoint.workers() == [pid]
    assert endpoint.predict(2).status_code == 200


@pytest.mark.parametrize("endpoint", [{"max_workers": 1}], indirect=True)
def test_a_killed_worker_s_requests_are_retried_once_on_a_fresh_one(endpoint: Endpoint) -> None:
    assert endpoint.predict(1).status_code == 200
    (pid,) = endpoint.workers()

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=endpoint.url, timeout=30) as client:
            slow = [
                asyncio.create_task(client.post("/invocations", json={"instances": [{"x": 7}]}))
                for _ in range(3)
            ]
            # one slow request at the worker, two queued behind it
            await asyncio.to_thread(
                endpoint.wait_until, "busy", lambda v: v["queued"] == 2 and v["in_flight"] == 3
            )
            os.kill(pid, signal.SIGKILL)
            endpoint.release()
            return list(await asyncio.gather(*slow))

    answers = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert all(a.json()["predictions"][0]["label"] == "big" for a in answers)
    (fresh,) = endpoint.workers()
    assert fresh != pid
    assert endpoint.metric("tidal_worker_restarts_total") == 1
    assert endpoint.predict(3).status_code == 200


@pytest.mark.parametrize("endpoint", [{"memory_mb": 64}], indirect=True)
def test_memory_limit_refuses_a_model_that_does_not_fit(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.environ["TIDAL_TEST_BALLAST_MB"] = "200"  # read by model_fn in the forked worker
    try:
        endpoint.runtime.launcher.stop()  # the launcher forks with its own environment
        answer = endpoint.predict(1)
    finally:
        del os.environ["TIDAL_TEST_BALLAST_MB"]
    assert answer.status_code == 503
    message = answer.json()["error"]["message"]
    assert "serving.memory_mb = 64 MB" in message, message
    assert answer.headers["retry-after"] == "1"
    assert endpoint.workers() == []


@pytest.mark.parametrize("endpoint", [{"memory_mb": 300}], indirect=True)
def test_a_worker_growing_past_its_memory_is_replaced(endpoint: Endpoint) -> None:
    assert endpoint.predict(1).status_code == 200
    (pid,) = endpoint.workers()
    grown = endpoint.predict(500)  # allocates 500 MB, then is killed and retried once
    assert grown.status_code == 500 and grown.json()["error"]["code"] == "worker_crashed"
    assert not psutil.pid_exists(pid) or _zombie(pid)
    assert endpoint.metric("tidal_worker_restarts_total") == 2
    assert endpoint.predict(1).status_code == 200


@pytest.mark.parametrize("endpoint", [{"max_concurrency": 2, "max_workers": 1}], indirect=True)
def test_beyond_max_concurrency_requests_get_429_with_retry_after(endpoint: Endpoint) -> None:
    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=endpoint.url, timeout=30) as client:
            slow = [
                asyncio.create_task(client.post("/invocations", json={"instances": [{"x": 7}]}))
                for _ in range(2)
            ]
            await asyncio.to_thread(
                endpoint.wait_until, "full", lambda v: v["total_in_flight"] == 2
            )
            extra = await client.post("/invocations", json={"instances": [{"x": 1}]})
            endpoint.release()
            return [extra, *await asyncio.gather(*slow)]

    extra, *slow = asyncio.run(scenario())
    assert extra.status_code == 429 and extra.headers["retry-after"] == "1"
    assert "max_concurrency = 2" in extra.json()["error"]["message"]
    assert [s.status_code for s in slow] == [200, 200]
    assert endpoint.metric("tidal_rejected_total") == 1


def slow_then(
    endpoint: Endpoint, xs: list[float], until: Callable[[dict[str, Any]], bool] | None = None
) -> list[httpx.Response]:
    """One slow request held at a worker, then one request per x sent while it is held; all
    released once ``until`` holds (default: all of them are in flight)."""

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=endpoint.url, timeout=30) as client:
            first = asyncio.create_task(client.post("/invocations", json={"instances": [{"x": 7}]}))
            # held at a started worker, not merely admitted: requests sent while the first
            # worker is still starting would join its first batch instead of queueing behind it
            await asyncio.to_thread(
                endpoint.wait_until,
                "busy",
                lambda v: v["in_flight"] == 1 and any(w["busy"] for w in v["workers"]),
            )
            rest = [
                asyncio.create_task(client.post("/invocations", json={"instances": [{"x": x}]}))
                for x in xs
            ]
            await asyncio.to_thread(
                endpoint.wait_until,
                "ready to release",
                until or (lambda v: v["in_flight"] == len(xs) + 1),
            )
            endpoint.release()
            return [await first, *await asyncio.gather(*rest)]

    return asyncio.run(scenario())


@pytest.mark.parametrize("endpoint", [{"max_workers": 1, "max_batch_size": 8}], indirect=True)
def test_queued_requests_share_batches_and_a_bad_one_fails_alone(endpoint: Endpoint) -> None:
    xs = [20.0 + i for i in range(19)] + [13.0]  # 13 makes the model raise
    answers = slow_then(endpoint, xs)
    assert [a.status_code for a in answers] == [200] * 20 + [500]
    assert [a.json()["predictions"][0]["label"] for a in answers[:20]] == ["big"] * 20
    # the slow request alone, then the 20 queued behind it in batches of at most 8 rows
    assert endpoint.metric("tidal_batch_size_sum") == 21
    assert endpoint.metric("tidal_batch_size_count") == 4


@pytest.mark.parametrize("endpoint", [{"max_workers": 2, "worker_idle_s": 0.5}], indirect=True)
def test_workers_are_added_under_load_and_removed_when_idle(endpoint: Endpoint) -> None:
    # the slow request holds one worker: the requests behind it start a second one
    answers = slow_then(endpoint, [20.0 + i for i in range(10)], lambda v: len(v["workers"]) == 2)
    assert all(a.status_code == 200 for a in answers)
    assert len(endpoint.workers()) == 2
    deadline = time.monotonic() + 5
    while len(endpoint.workers()) > 1:  # the extra one leaves after worker_idle_s
        assert time.monotonic() < deadline, "the extra worker never left"
        time.sleep(0.05)


def test_ping_is_ready_only_once_a_request_pays_for_the_model_load_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = slow_launcher_site(tmp_path / "site", 2)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    config = ServingConfig(reload_interval_s=0.1)
    state = State(tmp_path / "state.db")
    model = tmp_path / "models" / "1"
    state.deploy("toy", "1", str(model), write_model(model), reason="test")
    runtime = Runtime(config, flavors=["python"])
    slot = ModelSlot(lambda: state.current_deployment("toy"), runtime.loader())
    app = build_app(config, SingleVariantRouter(slot), runtime)
    with (
        BackgroundServer(app, "127.0.0.1", 0) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        early = http.get("/ping")
        assert early.status_code == 503, "ready while the launcher still imports"
        assert "importing" in early.json()["status"] and early.headers["Retry-After"] == "1"
        deadline = time.monotonic() + 30
        while http.get("/ping").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.01)
        started = time.perf_counter()
        first = http.post("/invocations", json={"instances": [{"x": 1}]})
        assert first.status_code == 200, first.text
        assert time.perf_counter() - started < 1.5  # the 2 s of imports were paid before


@pytest.mark.parametrize(
    "endpoint", [{"launcher_idle_s": 0.5, "idle_timeout_s": 0.5}], indirect=True
)
def test_an_idle_launcher_exits_and_the_next_request_starts_it_again(endpoint: Endpoint) -> None:
    assert endpoint.predict(5).status_code == 200
    first = endpoint.runtime.launcher.pid
    assert first is not None
    deadline = time.monotonic() + 10
    while endpoint.status()["launcher_pid"] is not None:  # no worker for 0.5 s: it exits
        assert time.monotonic() < deadline, f"the launcher stayed: {endpoint.status()}"
        time.sleep(0.05)
    assert gone([first], within_s=5)
    assert endpoint.status()["launcher_retired"] == 1
    assert endpoint.http.get("/ping").status_code == 200  # still able to answer, only slower
    again = endpoint.predict(-1)
    assert again.status_code == 200 and again.json()["predictions"][0]["label"] == "small"
    assert endpoint.runtime.launcher.pid not in (None, first)
