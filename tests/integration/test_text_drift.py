"""Text drift end to end: a text model's baseline with its embedding sketch, captured traffic,
the monitor job's windows and reports.

The deployed model folder holds the real all-MiniLM-L6-v2 files (linked, not copied) and a
manifest; its baseline comes from Rotten Tomatoes reviews. Traffic of 2016 debate statements
must be flagged by the embedding check, held-back reviews must not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tidal.artifact import Feature, Manifest, write_manifest
from tidal.monitoring.job import CAPTURE_PREFIX, MonitorJob, build_baseline, save_baseline
from tidal.serving.capture import CaptureWriter
from tidal.workspace import Workspace
from toy import minilm_folder, needs_minilm

pytestmark = needs_minilm

FEATURES = [Feature("text", "string")]
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors")
CONFIG = """\
project: reviews
data:
  task: text
  label_column: sentiment
  text_column: text
monitoring:
  text_auc: 0.8
"""


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    from tidal.examples import out_of_domain_frame, review_frame

    reviews = review_frame()["text"].sample(frac=1.0, random_state=1).tolist()
    return {"reviews": reviews, "debates": out_of_domain_frame()["text"].tolist()}


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    (tmp_path / "tidal.yaml").write_text(CONFIG, encoding="utf-8")
    return Workspace.open(tmp_path)


@pytest.fixture
def capture(ws: Workspace) -> Iterator[CaptureWriter]:
    writer = CaptureWriter(ws.store, CAPTURE_PREFIX, flush_interval_s=60.0)
    yield writer
    writer.close()


def deploy_text_model(ws: Workspace, corpus: dict[str, list[str]]) -> Path:
    """v1 of a MiniLM text model, deployed, with its baseline from 2,000 reviews."""
    source = minilm_folder()
    folder = ws.home / "built" / "v1"
    folder.mkdir(parents=True)
    for name in MODEL_FILES:
        (folder / name).symlink_to(source / name)
    manifest = Manifest("transformers", "text", FEATURES, ["fresh", "rotten"], "sentiment")
    sha = write_manifest(folder, manifest)
    ws.state.deploy(ws.model_name, "1", str(folder), sha, "test")
    frame = pd.DataFrame({"text": corpus["reviews"][:2000]})
    baseline = build_baseline(ws, frame, manifest, model_dir=folder)
    assert baseline.features["text"].sketch is not None  # type: ignore[union-attr]
    save_baseline(ws, "1", baseline)
    return folder


def send(capture: CaptureWriter, texts: list[str], rid: str) -> None:
    rows = [{"text": t} for t in texts]
    answers = [{"label": "fresh", "score": 0.5} for _ in texts]
    assert capture.offer("reviews", "1", "default", rid, 1.0, rows, answers) == len(texts)
    assert capture.flush()


def text_feature(ws: Workspace, summary: dict[str, Any], *, text_auc: float) -> dict[str, Any]:
    """The text feature of the version's stored report, judged with ``text_auc``."""
    report = json.loads(ws.store.get_bytes(summary["report"]))
    feature: dict[str, Any] = report["features"][0]
    assert feature["name"] == "text" and report["thresholds"]["text_auc"] == text_auc
    return feature


def test_debate_traffic_drifts_in_embedding_space(
    ws: Workspace, capture: CaptureWriter, corpus: dict[str, list[str]]
) -> None:
    from tidal.cli_monitor import check  # monitoring settings of tidal.yaml: text_auc 0.8

    deploy_text_model(ws, corpus)
    debates = corpus["debates"]

    send(capture, debates[:150], "first")
    first = check(ws)["versions"]["1"]
    assert first["status"] == "insufficient_data"  # 150 rows < min_samples
    assert text_feature(ws, first, text_auc=0.8)["metrics"]["embedding_auc"] > 0.9

    send(capture, debates[150:300], "second")
    second = check(ws)["versions"]["1"]
    assert second["status"] == "drifted" and second["drifted"] == ["text"]
    feature = text_feature(ws, second, text_auc=0.8)
    assert feature["metrics"]["embedding_auc"] > 0.9
    assert feature["metrics"]["embedding_samples"] == 300  # the merged window's sample
    assert any(r.startswith("embedding auc") for r in feature["reasons"])
    key = f"_tidal/monitor/v1/window-{int(second['window_start'])}.json"
    window = json.loads(ws.store.get_bytes(key))
    assert window["stats"]["features"]["text"]["sample"]["n"] == 300
    assert [e["kind"] for e in ws.state.events()].count("drift") == 1


def test_held_back_reviews_do_not_drift(
    ws: Workspace, capture: CaptureWriter, corpus: dict[str, list[str]]
) -> None:
    deploy_text_model(ws, corpus)
    send(capture, corpus["reviews"][3000:3400], "reviews")

    summary = MonitorJob(ws).run_once()["versions"]["1"]

    assert summary["status"] == "ok" and summary["drifted"] == []
    feature = text_feature(ws, summary, text_auc=0.75)
    assert feature["metrics"]["embedding_auc"] < 0.6
    assert feature["metrics"]["embedding_samples"] == 400


def test_a_missing_model_folder_skips_the_embedding_check_only(
    ws: Workspace,
    capture: CaptureWriter,
    corpus: dict[str, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = deploy_text_model(ws, corpus)
    for file in folder.iterdir():
        file.unlink()
    folder.rmdir()
    send(capture, corpus["debates"][:300], "orphan")

    with caplog.at_level(logging.WARNING, logger="tidal.monitoring"):
        summary = MonitorJob(ws).run_once()["versions"]["1"]

    feature = text_feature(ws, summary, text_auc=0.75)
    assert "embedding_auc" not in feature["metrics"]
    assert feature["metrics"]["length_psi"] is not None  # the other text checks still run
    assert summary["rows"] == 300
    assert "text embedding drift skipped" in caplog.text
