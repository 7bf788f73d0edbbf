"""The endpoint's HTTP contract, in process, with a fake model behind a real ModelSlot."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from tidal.artifact import Feature, Manifest
from tidal.config import ServingConfig
from tidal.errors import ConfigError, ModelLoadError
from tidal.serving.auth import check, hash_key, new_key
from tidal.serving.gateway import build_app
from tidal.serving.slot import InlineBackend, ModelSlot, SingleVariantRouter
from tidal.state import Deployment
from tidal.training.recipes.base import Predictor

with warnings.catch_warnings():
    # Starlette 1.x asks for the httpx2 package under its TestClient; httpx behaves the same here
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

FEATURES = [Feature("x", "number"), Feature("y", "number")]
KEY, KEY_HASH = new_key()


class Threshold(Predictor):
    """label "big" when x > threshold; raises when x is 13 (a model bug on some input)."""

    def __init__(self, folder: Path, manifest: Manifest, threshold: float = 0.0) -> None:
        super().__init__(folder, manifest)
        self.threshold = threshold

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            if row["x"] == 13:
                raise RuntimeError("unlucky input")
            big = row["x"] > self.threshold
            score = 0.9
            out.append(
                {
                    "label": "big" if big else "small",
                    "score": score,
                    "probabilities": {"big": score if big else 0.1, "small": 0.1 if big else 0.9},
                }
            )
        return out


def deployment(id: int, version: str, model_dir: str = "/models/m") -> Deployment:
    return Deployment(
        id=id,
        model="houses",
        version=version,
        model_dir=model_dir,
        manifest_sha256="0" * 64,
        reason="test",
        run_id=None,
        rolled_back=False,
        created_at=1_700_000_000.0,
    )


def fake_loader(
    threshold_by_dir: dict[str, float] | None = None,
) -> Callable[[Deployment], InlineBackend]:
    """The fake worker: a Threshold model called in process."""

    def load(target: Deployment) -> InlineBackend:
        folder = Path(target.model_dir)
        if folder.name == "broken":
            raise ModelLoadError(f"model file {folder}/model.skops has sha256 1234…, refusing")
        manifest = Manifest("fake", "tabular", FEATURES, ["big", "small"], "label")
        threshold = (threshold_by_dir or {}).get(folder.name, 0.0)
        return InlineBackend(Threshold(folder, manifest, threshold))

    return load


class Source:
    """The controller's deployment record, as a value a test can change."""

    def __init__(self, current: Deployment | None = None) -> None:
        self.current = current
        self.error: Exception | None = None

    def __call__(self) -> Deployment | None:
        if self.error is not None:
            raise self.error
        return self.current


def make(
    current: Deployment | None = deployment(1, "3"), **config: Any
) -> tuple[TestClient, ModelSlot, Source]:
    source = Source(current)
    slot = ModelSlot(source, fake_loader({"v4": 100.0}))
    slot.refresh()
    app = build_app(ServingConfig(**config), SingleVariantRouter(slot), refresher=False)
    return TestClient(app), slot, source


@pytest.fixture
def client() -> TestClient:
    return make()[0]


def invoke(client: TestClient, content: bytes | str, ctype: str, **headers: str) -> Any:
    return client.post("/invocations", content=content, headers={"Content-Type": ctype, **headers})


# -- readiness ------------------------------------------------------------------------------


def test_ping_is_503_until_a_model_is_deployed_then_200() -> None:
    client, slot, source = make(current=None)
    response = client.get("/ping")
    assert response.status_code == 503
    assert response.json() == {"status": "no model deployed yet"}
    source.current = deployment(1, "3")
    assert slot.refresh() is True
    response = client.get("/ping")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "model_version": "3"}


def test_predicting_without_a_model_says_how_to_get_one() -> None:
    client, _, _ = make(current=None)
    response = client.post("/predict", json={"x": 1, "y": 2})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_model"
    assert "tidal run FILE" in response.json()["error"]["message"]
    assert client.get("/model").status_code == 503


def test_model_describes_the_served_version(client: TestClient) -> None:
    body = client.get("/model").json()
    assert body["version"] == "3" and body["model"] == "houses"
    assert body["features"] == [{"name": "x", "type": "number"}, {"name": "y", "type": "number"}]
    assert body["labels"] == ["big", "small"]
    assert body["deployed_at"].startswith("2023-11-14T22:13:20")


# -- /invocations: formats ------------------------------------------------------------------


def test_invocations_json(client: TestClient) -> None:
    response = invoke(
        client, json.dumps({"instances": [{"x": 5, "y": 0}, [-1, 0]]}), "application/json"
    )
    assert response.status_code == 200
    body = response.json()
    assert [p["label"] for p in body["predictions"]] == ["big", "small"]
    assert body["predictions"][0] == {
        "label": "big",
        "score": 0.9,
        "probabilities": {"big": 0.9, "small": 0.1},
    }
    assert body["model_version"] == "3"
    assert response.headers["content-type"] == "application/json"


def test_invocations_csv_body(client: TestClient) -> None:
    response = invoke(client, "5,0\n-2,1\n", "text/csv; charset=utf-8")
    assert response.status_code == 200
    assert [p["label"] for p in response.json()["predictions"]] == ["big", "small"]


@pytest.mark.parametrize("ctype", ["application/jsonlines", "application/x-jsonlines"])
def test_invocations_jsonlines_body(client: TestClient, ctype: str) -> None:
    response = invoke(client, '{"x": -3, "y": 0}\n[4, 0]\n', ctype)
    assert response.status_code == 200
    assert [p["label"] for p in response.json()["predictions"]] == ["small", "big"]


def test_accept_text_csv_answers_one_label_per_line(client: TestClient) -> None:
    response = invoke(client, "5,0\n-2,1\n7,7\n", "text/csv", Accept="text/csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.text == "big\nsmall\nbig\n"
    assert response.headers["x-model-version"] == "3"


@pytest.mark.parametrize("accept", ["*/*", "application/json", "text/html, */*;q=0.8", None])
def test_accept_defaults_to_json(client: TestClient, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    response = invoke(client, "1,1", "text/csv", **headers)
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "big"


def test_accept_jsonlines(client: TestClient) -> None:
    response = invoke(client, "1,1\n-1,1\n", "text/csv", Accept="application/jsonlines")
    lines = response.text.splitlines()
    assert [json.loads(line)["label"] for line in lines] == ["big", "small"]


def test_unknown_accept_is_406(client: TestClient) -> None:
    response = invoke(client, "1,1", "text/csv", Accept="application/xml")
    assert response.status_code == 406
    assert "text/csv" in response.json()["error"]["message"]


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_unsupported_content_type_is_415_naming_the_allowed(client: TestClient, ctype: str) -> None:
    response = invoke(client, "1,1", ctype)
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert "application/json, text/csv, application/jsonlines" in error["message"]


# -- /predict -------------------------------------------------------------------------------


def test_predict_reads_json_whatever_curl_says(client: TestClient) -> None:
    response = client.post(
        "/predict",
        content='{"x": 2, "y": 0}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "big"
    assert response.json()["model_version"] == "3"


# -- errors ---------------------------------------------------------------------------------


def test_invalid_rows_are_422_with_the_reason(client: TestClient) -> None:
    response = client.post("/predict", json=[{"x": 1, "y": 1}, {"x": "abc", "y": 1}])
    assert response.status_code == 422
    error = response.json()["error"]
    assert error == {
        "code": "invalid_input",
        "message": "row 1: feature 'x' must be a number, got 'abc'",
    }


def test_missing_feature_is_422(client: TestClient) -> None:
    response = invoke(client, '{"x": 1}', "application/json")
    assert response.status_code == 422
    assert "row 0: missing features 'y'" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("content", "ctype"),
    [('{"x": ', "application/json"), ("{oops\n", "application/jsonlines"), (b"\xff,1", "text/csv")],
)
def test_malformed_bodies_are_400(client: TestClient, content: str | bytes, ctype: str) -> None:
    response = invoke(client, content, ctype)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_payload"
    assert "not valid" in response.json()["error"]["message"]


def test_payload_over_the_limit_is_413() -> None:
    client, _, _ = make(max_payload_mb=0.001)  # 1,048 bytes
    big = "1,1\n" * 400
    response = invoke(client, big, "text/csv")
    assert response.status_code == 413
    assert "serving.max_payload_mb" in response.json()["error"]["message"]
    assert invoke(client, "1,1\n" * 10, "text/csv").status_code == 200


def test_body_larger_than_its_content_length_claims_is_413() -> None:
    client, _, _ = make(max_payload_mb=0.001)

    def chunks() -> Any:
        for _ in range(400):
            yield b"1,1\n"

    response = client.post("/invocations", content=chunks(), headers={"Content-Type": "text/csv"})
    assert response.status_code == 413


def test_model_raising_is_500_with_an_error_id_and_the_endpoint_stays_up(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("ERROR", logger="tidal.serving"):
        response = client.post("/predict", json={"x": 13, "y": 0})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "prediction_failed"
    assert error["id"].startswith("err_") and error["id"] in error["message"]
    assert "RuntimeError" in error["message"]
    assert error["id"] in caplog.text and "unlucky input" in caplog.text  # traceback logged
    after = client.post("/predict", json={"x": 1, "y": 0})
    assert after.status_code == 200 and after.json()["predictions"][0]["label"] == "big"


def test_unknown_route_and_wrong_method_are_json(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = client.get("/invocations")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in response.json()["error"]["message"]


# -- inference ids --------------------------------------------------------------------------


def test_inference_id_header_matches_the_body_and_is_unique(client: TestClient) -> None:
    ids = set()
    for _ in range(3):
        response = client.post("/predict", json={"x": 1, "y": 1})
        assert response.headers["x-inference-id"] == response.json()["inference_id"]
        assert len(response.headers["x-inference-id"]) == 32
        ids.add(response.headers["x-inference-id"])
    assert len(ids) == 3


def test_errors_of_prediction_routes_carry_the_inference_id(client: TestClient) -> None:
    response = client.post("/predict", json={"x": "no", "y": 1})
    assert response.status_code == 422
    assert response.headers["x-inference-id"] == response.json()["inference_id"]


# -- keys -----------------------------------------------------------------------------------


def test_admin_reload_without_configured_keys_is_403(client: TestClient) -> None:
    response = client.post("/admin/reload", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 403
    assert response.json() == {
        "error": {
            "code": "no_api_keys",
            "message": "admin routes need an API key; create one with 'tidal keys create' "
            "and add its hash to serving.api_keys",
        }
    }


@pytest.mark.parametrize("header", [None, "Bearer tidal_wrong", f"Basic {KEY}", "Bearer"])
def test_admin_reload_with_a_wrong_or_missing_key_is_401(header: str | None) -> None:
    client, _, _ = make(api_keys=[KEY_HASH])
    headers = {"Authorization": header} if header else {}
    response = client.post("/admin/reload", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_admin_reload_with_the_key_swaps_to_the_new_deployment() -> None:
    client, _, source = make(api_keys=[hash_key("other"), KEY_HASH])
    source.current = deployment(2, "4", "/models/v4")
    response = client.post("/admin/reload", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert response.json() == {"swapped": True, "model_version": "4", "error": None}
    assert client.get("/ping").json()["model_version"] == "4"


def test_require_key_for_predict() -> None:
    client, _, _ = make(api_keys=[KEY_HASH], require_key_for_predict=True)
    assert client.post("/predict", json={"x": 1, "y": 1}).status_code == 401
    assert invoke(client, "1,1", "text/csv").status_code == 401
    ok = client.post("/predict", json={"x": 1, "y": 1}, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    assert client.get("/ping").status_code == 200  # the health check stays open


def test_require_key_without_keys_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"serving\.api_keys is empty"):
        make(require_key_for_predict=True)


def test_keys_are_hashed_and_checked() -> None:
    key, digest = new_key()
    assert key.startswith("tidal_") and len(key) == len("tidal_") + 32
    assert digest == hash_key(key) and digest.startswith("sha256:") and key not in digest
    assert check(f"Bearer {key}", [digest])
    assert check(f"bearer {key}", [digest.removeprefix("sha256:")])  # bare hex accepted
    assert not check(f"Bearer {key}x", [digest])
    assert not check(f"Bearer {key}", [])
    assert not check(None, [digest])


# -- following the deployment record --------------------------------------------------------


def test_hot_swap_follows_a_new_deployment(client: TestClient) -> None:
    client, slot, source = make()
    assert client.post("/predict", json={"x": 5, "y": 0}).json()["predictions"][0]["label"] == "big"
    source.current = deployment(2, "4", "/models/v4")  # v4 says big only above 100
    assert slot.refresh() is True
    response = client.post("/predict", json={"x": 5, "y": 0})
    assert response.json()["predictions"][0]["label"] == "small"
    assert response.json()["model_version"] == "4"
    assert slot.refresh() is False  # same deployment: nothing to do


def test_a_failing_load_keeps_the_old_model(caplog: pytest.LogCaptureFixture) -> None:
    source = Source(deployment(1, "3"))
    loads: list[str] = []

    def counting(target: Deployment) -> InlineBackend:
        loads.append(Path(target.model_dir).name)
        return fake_loader()(target)

    slot = ModelSlot(source, counting)
    assert slot.refresh() is True
    client = TestClient(build_app(ServingConfig(), SingleVariantRouter(slot), refresher=False))
    source.current = deployment(2, "4", "/models/broken")
    with caplog.at_level("ERROR", logger="tidal.serving"):
        assert slot.refresh() is False
    assert slot.deployment is not None and slot.deployment.version == "3"
    assert slot.last_error is not None and "refusing" in slot.last_error
    assert "still serving version 3" in caplog.text
    response = client.post("/predict", json={"x": 5, "y": 0})
    assert response.status_code == 200 and response.json()["model_version"] == "3"
    # a failed deployment is not reloaded every interval, but a forced reload tries again
    assert loads == ["m", "broken"]
    assert slot.refresh() is False and loads == ["m", "broken"]
    assert slot.refresh(force=True) is False and loads == ["m", "broken", "broken"]
    source.current = deployment(3, "5", "/models/v5")
    assert slot.refresh() is True and slot.last_error is None
    assert client.get("/ping").json()["model_version"] == "5"


def test_a_failing_source_keeps_the_old_model() -> None:
    client, slot, source = make()
    source.error = OSError("database is locked")
    assert slot.refresh() is False
    assert slot.last_error is not None and "database is locked" in slot.last_error
    assert client.get("/ping").status_code == 200


def test_refresher_loads_at_startup_and_follows_the_record() -> None:
    source = Source(deployment(1, "3"))
    slot = ModelSlot(source, fake_loader())
    app = build_app(ServingConfig(reload_interval_s=0.01), SingleVariantRouter(slot))
    assert not slot.ready
    with TestClient(app) as client:
        assert client.get("/ping").json() == {"status": "ready", "model_version": "3"}
        source.current = deployment(2, "4", "/models/v4")
        deadline = time.monotonic() + 5
        while client.get("/ping").json()["model_version"] != "4":
            assert time.monotonic() < deadline, "the refresher did not pick up version 4"
            time.sleep(0.01)


def test_a_replaced_model_is_kept_ready_for_an_instant_rollback() -> None:
    source = Source(deployment(1, "3", "/models/v3"))
    loads: list[str] = []

    def counting(target: Deployment) -> InlineBackend:
        loads.append(target.version)
        return fake_loader()(target)

    slot = ModelSlot(source, counting, keep_previous_s=60)
    assert slot.refresh() is True
    first = slot.backend
    assert isinstance(first, InlineBackend)
    source.current = deployment(2, "4", "/models/v4")
    assert slot.refresh() is True
    assert not first.retired  # kept ready through the termination wait
    source.current = deployment(3, "3", "/models/v3")  # a rollback: v3 again, a new record
    assert slot.refresh() is True
    assert slot.backend is first and loads == ["3", "4"]  # back at once, not loaded again

    plain = ModelSlot(Source(deployment(1, "3", "/models/v3")), fake_loader())
    plain.refresh()
    replaced = plain.backend
    assert isinstance(replaced, InlineBackend)
    plain._source = Source(deployment(2, "4", "/models/v4"))
    plain.refresh()
    assert replaced.retired  # without a termination wait the old one goes at once
