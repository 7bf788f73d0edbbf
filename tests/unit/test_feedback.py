from __future__ import annotations

import json
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning

from tidal.config import ServingConfig
from tidal.errors import InvalidInput
from tidal.monitoring.feedback import (
    FeedbackStore,
    check_inference_id,
    ingest_dropped,
    join,
    validate_labels,
)
from tidal.monitoring.feedback_routes import feedback_routes
from tidal.serving.auth import key_id, new_key
from tidal.serving.capture import new_inference_id
from tidal.storage import Store

with warnings.catch_warnings():
    # Starlette 1.x asks for the httpx2 package under its TestClient; httpx behaves the same here
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, on an hour boundary


def record(iid: str, predicted: Any, *, row: int = 0, ts: float = T0, version: str = "1",
           variant: str = "default") -> dict[str, Any]:  # fmt: skip
    return {"inference_id": iid, "row": row, "ts": ts, "model": "m", "version": version,
            "variant": variant, "latency_ms": 1.0, "input": {"x": 1},
            "output": {"label": predicted, "score": 0.9}}  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"file://{tmp_path}/bucket")


# -- validation ------------------------------------------------------------------------------


def test_validate_defaults_row_and_keeps_labels() -> None:
    got = validate_labels([{"inference_id": "a", "label": "pos"}, {"inference_id": "b",
                           "label": 1.0, "row": 2}])  # fmt: skip
    assert got == [
        {"inference_id": "a", "label": "pos", "row": 0},
        {"inference_id": "b", "label": 1, "row": 2},
    ]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"label": "x"}, "label 1: 'inference_id' missing"),
        ({"inference_id": "a"}, "label 1: 'label' missing"),
        ({"inference_id": "a", "label": None}, "'label' must be a string, number or boolean"),
        ({"inference_id": "a", "label": [1]}, "'label' must be a string, number or boolean"),
        ({"inference_id": "a", "label": "x", "row": -1}, "'row' must be an integer >= 0"),
        ({"inference_id": "a", "label": "x", "row": True}, "'row' must be an integer >= 0"),
        ({"inference_id": "a", "lable": "x"}, "unknown field(s) 'lable'; allowed"),
        ("a", "label 1: expected an object, got str"),
    ],
)
def test_validate_names_the_item_and_what_is_allowed(item: Any, expected: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_labels([{"inference_id": "ok", "label": 0}, item])
    assert expected in err.value.message
    assert '"inference_id"' in err.value.message  # the allowed shape is spelled out


def test_validate_limits_the_batch() -> None:
    with pytest.raises(InvalidInput, match="3 labels in one batch, at most 2"):
        validate_labels([{"inference_id": "a", "label": 0}] * 3, max_items=2)


# -- the store -------------------------------------------------------------------------------


def test_add_writes_one_object_per_call(store: Store) -> None:
    feedback = FeedbackStore(store)
    assert feedback.add([{"inference_id": "a", "label": "pos"}]) == 1
    assert feedback.add([{"inference_id": "b", "label": "neg", "row": 1}] * 2) == 2
    assert feedback.add([]) == 0
    files = feedback.files()
    assert len(files) == 2
    assert all(f.key.startswith("_tidal/feedback/received/") for f in files)
    assert [(x["inference_id"], x["row"]) for x in feedback.labels()] == [
        ("a", 0), ("b", 1), ("b", 1),
    ]  # fmt: skip
    with pytest.raises(InvalidInput):
        feedback.add([{"inference_id": "c"}])
    assert len(feedback.files()) == 2  # nothing written for a bad batch


def test_ingest_dropped_csv_and_jsonl(store: Store) -> None:
    store.put_bytes("feedback/day1.csv", b"inference_id,label,row\na,pos,0\nb,neg,\n")
    store.put_bytes("feedback/day2.jsonl", b'{"inference_id": "c", "label": 1}\n\n')
    assert ingest_dropped(store) == 3
    assert store.list("feedback") == []
    feedback = FeedbackStore(store)
    got = sorted((x["inference_id"], x["label"], x["row"]) for x in feedback.labels())
    assert got == [("a", "pos", 0), ("b", "neg", 0), ("c", 1, 0)]
    assert feedback.rejected() == []


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("bad.csv", b"id,label\na,pos\n", "column(s) inference_id missing in bad.csv"),
        ("bad.csv", b"inference_id,label,row\na,pos,0\nb,neg,x\n", "label 1: 'row' must be"),
        ("bad.jsonl", b'{"inference_id": "a", "label": 1}\nnot json\n', "line 2 is not JSON"),
        ("labels.xlsx", b"PK", "unsupported file type"),
    ],
)
def test_ingest_dropped_rejects_a_bad_file_whole(
    store: Store, name: str, data: bytes, reason: str
) -> None:
    store.put_bytes(f"feedback/{name}", data)
    assert ingest_dropped(store) == 0
    feedback = FeedbackStore(store)
    assert feedback.files() == []  # nothing of it received
    assert store.list("feedback") == []
    keys = [i.key for i in feedback.rejected()]
    assert len(keys) == 2
    moved = next(k for k in keys if not k.endswith(".reason.json"))
    assert moved.endswith(name) and store.get_bytes(moved) == data
    why = json.loads(store.get_bytes(moved + ".reason.json"))
    assert reason in why["reason"]


# -- the join --------------------------------------------------------------------------------


def test_join_accuracy_macro_f1_duplicates_unmatched() -> None:
    captured = [
        record("r1", "pos"),
        record("r2", "pos"),
        record("r3", "neg"),
        record("r4", "neg", row=0),
        record("r4", "pos", row=1),
        record("r5", "neu"),
    ]
    labels: list[dict[str, Any]] = [
        {"inference_id": "r1", "label": "pos"},
        {"inference_id": "r2", "label": "pos"},  # replaced below
        {"inference_id": "r3", "label": "neg"},
        {"inference_id": "r4", "label": "pos", "row": 0},
        {"inference_id": "r4", "label": "pos", "row": 1},
        {"inference_id": "r5", "label": "neg"},
        {"inference_id": "r2", "label": "neg"},  # the latest wins
        {"inference_id": "gone", "label": "pos"},
        {"inference_id": "r1", "label": "pos", "row": 7},  # no such row captured
    ]
    report = join(captured, labels)
    assert (report.labels, report.duplicates, report.matched, report.unmatched) == (9, 1, 6, 2)
    assert sorted(report.unmatched_examples) == ["gone", "r1"]
    # pairs (true, predicted): (pos,pos) (neg,pos) (neg,neg) (pos,neg) (pos,pos) (neg,neu)
    # correct 3/6; pos: tp 2, true 3, pred 3 → 4/6; neg: tp 1, true 3, pred 2 → 2/5;
    # neu: tp 0 → 0; macro-F1 = (2/3 + 2/5 + 0) / 3
    (total,) = report.totals
    assert (total.samples, total.correct, total.accuracy) == (6, 3, 0.5)
    assert total.macro_f1 == pytest.approx((2 / 3 + 2 / 5) / 3)
    assert total.window_start is None
    from sklearn.metrics import f1_score

    truth = ["pos", "neg", "neg", "pos", "pos", "neg"]
    predicted = ["pos", "pos", "neg", "neg", "pos", "neu"]
    assert total.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro"))
    json.dumps(report.to_dict())  # JSON-ready


def test_join_latest_label_by_received_at_and_labels_compared_as_text() -> None:
    captured = [record("a", 1), record("b", "1.5")]
    labels: list[dict[str, Any]] = [
        {"inference_id": "a", "label": 0, "received_at": 20.0},
        {"inference_id": "a", "label": 1.0, "received_at": 10.0},  # older, though later here
        {"inference_id": "b", "label": 1.5, "received_at": 5.0},
    ]
    report = join(captured, labels)
    assert report.duplicates == 1
    assert report.totals[0].correct == 1  # a: 0 ≠ 1; b: 1.5 == "1.5"


def test_join_per_version_variant_and_window() -> None:
    captured = [
        record("a", "x", ts=T0 + 10),
        record("b", "x", ts=T0 + 3700),  # the next hour
        record("c", "x", ts=T0 + 20, version="2", variant="canary"),
    ]
    labels = [{"inference_id": i, "label": "x"} for i in "abc"] + [
        {"inference_id": "b", "label": "y"}
    ]
    report = join(captured, labels, window_s=3600)
    assert [(g.version, g.variant, g.samples) for g in report.totals] == [
        ("1", "default", 2), ("2", "canary", 1),
    ]  # fmt: skip
    windows = [(g.version, g.window_start, g.window_end, g.accuracy) for g in report.windows]
    assert windows == [
        ("1", T0, T0 + 3600, 1.0),
        ("1", T0 + 3600, T0 + 7200, 0.0),
        ("2", T0, T0 + 3600, 1.0),
    ]


def test_join_with_nothing_matched() -> None:
    report = join([], [{"inference_id": "a", "label": "x"}])
    assert (report.unmatched, report.totals, report.windows) == (1, [], [])
    assert report.alarms(min_accuracy=0.9, min_samples=0) == []


def test_alarms_respect_floors_and_min_samples() -> None:
    captured = [record(f"g{i}", "x", ts=T0) for i in range(10)] + [
        record(f"h{i}", "x", ts=T0 + 3600) for i in range(3)
    ]
    labels = [{"inference_id": f"g{i}", "label": "x" if i < 8 else "y"} for i in range(10)]
    labels += [{"inference_id": f"h{i}", "label": "y"} for i in range(3)]
    report = join(captured, labels)
    # total 8/13; window 1: 8/10; window 2: 0/3 (too few labels to alarm on with min 5)
    alarms = report.alarms(min_accuracy=0.9, min_samples=5)
    assert [(a.group.window_start, a.metric) for a in alarms] == [
        (None, "accuracy"), (T0, "accuracy"),
    ]  # fmt: skip
    assert alarms[1].value == pytest.approx(0.8) and alarms[1].floor == 0.9
    assert len(report.alarms(min_accuracy=0.9, min_samples=3)) == 3
    assert report.alarms(min_accuracy=0.5, min_samples=5) == []
    assert report.alarms(min_samples=0) == []  # no floor, no alarm
    f1_alarms = report.alarms(min_macro_f1=0.99, min_samples=5)
    assert {a.metric for a in f1_alarms} == {"macro_f1"}
    assert alarms[0].to_dict()["metric"] == "accuracy"


# -- the route -------------------------------------------------------------------------------

KEY, KEY_HASH = new_key()
ID = [new_inference_id() for _ in range(4)]


def client(store: Store, **serving: Any) -> TestClient:
    config = ServingConfig(**({"feedback_keys": [KEY_HASH]} | serving))
    return TestClient(
        Starlette(routes=feedback_routes(store, config)),
        headers={"Authorization": f"Bearer {KEY}"},
    )


def test_route_accepts_one_a_list_or_labels(store: Store) -> None:
    http = client(store)
    one = http.post("/feedback", json={"inference_id": ID[0], "label": "pos"})
    assert (one.status_code, one.json()) == (202, {"accepted": 1})
    many = http.post("/feedback", json=[{"inference_id": ID[1], "label": 1, "row": 3}] * 2)
    assert many.json() == {"accepted": 2}
    wrapped = http.post("/feedback", json={"labels": [{"inference_id": ID[2], "label": True}]})
    assert wrapped.json() == {"accepted": 1}
    assert len(FeedbackStore(store).files()) == 3


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{nope", 400, "malformed_json"),
        (b"[]", 422, "invalid_input"),
        (b"42", 422, "invalid_input"),
        (b'{"labels": {"inference_id": "a"}}', 422, "invalid_input"),
        (
            json.dumps(
                [{"inference_id": ID[0], "label": "x"}, {"inference_id": 3, "label": "x"}]
            ).encode(),
            422,
            "invalid_input",
        ),
        (
            json.dumps([{"inference_id": ID[0], "label": 1}] * 10_001).encode(),
            413,
            "too_many_labels",
        ),
        (b"[" + b" " * (4 * 1024 * 1024) + b"]", 413, "payload_too_large"),
        (b'{"inference_id": "never-served", "label": 1}', 400, "invalid_inference_id"),
    ],
)
def test_route_errors_are_json(store: Store, body: bytes, status: int, code: str) -> None:
    answer = client(store).post(
        "/feedback", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code
    assert answer.json()["error"]["message"]
    assert FeedbackStore(store).files() == []


def test_route_names_the_bad_item(store: Store) -> None:
    answer = client(store).post("/feedback", json=[{"inference_id": ID[0], "label": "x"}, {}])
    assert "label 1: 'inference_id' missing" in answer.json()["error"]["message"]


def test_route_needs_a_feedback_key_by_default(store: Store) -> None:
    item = {"inference_id": ID[0], "label": "x"}
    admin, admin_hash = new_key()
    http = client(store, api_keys=[admin_hash])
    anonymous = http.post("/feedback", json=item, headers={"Authorization": ""})
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    # an admin key is not a feedback key: scopes are separate
    wrong = http.post("/feedback", json=item, headers={"Authorization": f"Bearer {admin}"})
    assert wrong.status_code == 401
    assert "an admin key is not a feedback key" in wrong.json()["error"]["message"]
    assert FeedbackStore(store).files() == []
    # no feedback key configured: closed, and the message says how to open it
    closed = client(store, feedback_keys=[]).post("/feedback", json=item)
    assert closed.status_code == 403
    assert "tidal keys create --scope feedback" in closed.json()["error"]["message"]
    assert http.post("/feedback", json=item).status_code == 202


def test_labels_keep_who_sent_them_and_when(store: Store) -> None:
    before = time.time()
    client(store).post("/feedback", json={"inference_id": ID[0], "label": "x"})
    # a label cannot name its own sender: 'key' is not a field a client may send
    forged = client(store).post("/feedback", json={"inference_id": ID[1], "label": "x",
                                                   "key": "sha256:000000000000"})  # fmt: skip
    assert forged.status_code == 422
    TestClient(Starlette(routes=feedback_routes(store, ServingConfig(feedback_open=True)))).post(
        "/feedback", json={"inference_id": ID[2], "label": "y"}
    )
    first, second = FeedbackStore(store).labels()
    assert first["key"] == key_id(KEY_HASH) and first["key"] != KEY_HASH
    assert KEY not in json.dumps(first) and first["received_at"] >= before
    assert second["key"] == "anonymous"


def test_open_feedback_is_logged_as_unsafe(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="tidal.monitoring.feedback"):
        feedback_routes(store, ServingConfig(feedback_open=True))
    assert "UNSAFE" in caplog.text


def test_rate_limit_per_key_answers_429_with_retry_after(store: Store) -> None:
    clock = [0.0]
    config = ServingConfig(feedback_keys=[KEY_HASH], feedback_rate_per_min=60)
    routes = feedback_routes(store, config, clock=lambda: clock[0])
    http = TestClient(Starlette(routes=routes), headers={"Authorization": f"Bearer {KEY}"})
    labels = [{"inference_id": ID[0], "label": "x", "row": i} for i in range(50)]
    assert http.post("/feedback", json=labels).status_code == 202
    over = http.post("/feedback", json=labels[:20])  # 10 tokens left, 20 wanted: 10 s to wait
    assert over.status_code == 429 and over.headers["retry-after"] == "10"
    assert "serving.feedback_rate_per_min (60)" in over.json()["error"]["message"]
    clock[0] = 10.0  # a label a second comes back
    assert http.post("/feedback", json=labels[:20]).status_code == 202
    too_big = http.post("/feedback", json=[*labels, *labels])  # more than a minute's worth
    assert too_big.status_code == 413
    assert len(FeedbackStore(store).labels()) == 70


@pytest.mark.parametrize(
    ("inference_id", "why"),
    [
        ("ffffffffffff7fffffffffffffffffff", "the year 10889"),
        ("xyz", "not 32 lowercase hex digits"),
        ("A" * 32, "not 32 lowercase hex digits"),
    ],
)
def test_inference_ids_are_checked(inference_id: str, why: str) -> None:
    assert why in (check_inference_id(inference_id) or "")
    assert check_inference_id(new_inference_id()) is None
    assert check_inference_id(uuid.uuid4().hex) is None  # ids made before time-ordered ids


def test_keys_create_makes_a_feedback_key() -> None:
    from typer.testing import CliRunner

    from tidal.cli import app
    from tidal.serving.auth import hash_key

    made = CliRunner().invoke(app, ["keys", "create", "--scope", "feedback", "--json"])
    assert made.exit_code == 0, made.output
    data = json.loads(made.output)
    assert data["scope"] == "feedback" and data["hash"] == hash_key(data["key"])
    assert data["key_id"] == key_id(data["hash"]) and len(data["key_id"]) == len("sha256:") + 12
    told = CliRunner().invoke(app, ["keys", "create", "--scope", "feedback"])
    assert "serving.feedback_keys" in told.output
    wrong = CliRunner().invoke(app, ["keys", "create", "--scope", "root"])
    assert wrong.exit_code != 0 and "unknown scope 'root'" in wrong.output
