"""A SageMaker-style training script run by the local executor, adopted and served.

The data goes the way the pipeline sends it: JSON Lines splits in a ``file://`` store, staged
into the job's channels; the job is a real subprocess running the script in a copy of its
folder; its model folder is uploaded, adopted and loaded as the endpoint would load it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tidal.artifact import load_predictor
from tidal.config import Config, DataConfig
from tidal.data.prepare import split, to_jsonl
from tidal.data.schema import infer_schema
from tidal.data.validate import coerce
from tidal.examples import example_frame
from tidal.storage import Store
from tidal.training.executors.base import JobSpec, JobStatus
from tidal.training.executors.local import LocalExecutor
from tidal.training.recipes.script import adopt_stored, script_job

EXAMPLE = Path(__file__).parents[2] / "examples" / "sagemaker-script"
LABEL = "diagnosis"

PROBE = """
import argparse, json, os, sys
from pathlib import Path

import helper  # a module beside the script: the job runs in a copy of source_dir

parser = argparse.ArgumentParser()  # strict, as SageMaker examples write it
parser.add_argument("--epochs", type=int)
parser.add_argument("--learning-rate", type=float)
parser.add_argument("--model_name")
parser.add_argument("--fp16", type=lambda s: s == "true")
parser.add_argument("--layers", type=json.loads)
args = parser.parse_args()

channels = {
    name: sorted(p.name for p in Path(os.environ[f"SM_CHANNEL_{name.upper()}"]).iterdir())
    for name in json.loads(os.environ["SM_CHANNELS"])
}
Path(os.environ["SM_CHECKPOINT_DIR"], "step-1").write_text("state")
Path(os.environ["SM_MODEL_DIR"], "weights.txt").write_text(helper.WEIGHTS)
report = {
    "argv": sys.argv[1:],
    "args": vars(args),
    "env": {k: v for k, v in os.environ.items() if k.startswith("SM_")},
    "cwd": os.getcwd(),
    "channels": channels,
}
Path(os.environ["SM_OUTPUT_DATA_DIR"], "probe.json").write_text(json.dumps(report))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, dict[str, Any], Any]:
    """The breast-cancer example, prepared as the pipeline prepares it, in a file:// store."""
    store = Store((tmp_path_factory.mktemp("store")).as_uri())
    frame = example_frame("tabular")
    schema = infer_schema(frame, DataConfig(label_column=LABEL))
    train, test = split(coerce(frame, schema), 0.25, label_column=LABEL, seed=0)
    store.put_bytes("_tidal/datasets/ds-1/train.jsonl", to_jsonl(train))
    store.put_bytes("_tidal/datasets/ds-1/test.jsonl", to_jsonl(test))
    return store, json.loads(schema.to_json()) | {"task": "tabular"}, test


def run_job(store: Store, jobs: Path, name: str, job: Any, cpus: int = 1) -> tuple[Any, Path]:
    """Run ``job`` as the pipeline's train step does: its built-in job, with the script applied."""
    builtin = JobSpec(
        name=name,
        command=[sys.executable, "-m", "tidal.training.entrypoint"],
        channels={
            "train": [store.uri("_tidal/datasets/ds-1/train.jsonl")],
            "test": [store.uri("_tidal/datasets/ds-1/test.jsonl")],
        },
        hyperparameters={"recipe": "script", "schema": {}},
        output_uri=store.uri(f"_tidal/runs/{name}/model"),
        cpus=cpus,
        timeout_s=120,
    )
    spec = job.apply(builtin)
    executor = LocalExecutor(store, jobs)
    handle = executor.submit(spec)
    result = executor.collect(handle)
    handle.backend_data["proc"].stdout.close()  # the executor leaves its end of the pipe open
    assert result.status == JobStatus.SUCCEEDED, "\n".join(result.log_tail)
    return result, executor.workdir(handle)


@pytest.mark.parametrize(("export", "flavor"), [("skops", "sklearn"), ("numpy", "python")])
def test_the_sagemaker_example_trains_a_model_tidal_serves(
    data: tuple[Store, dict[str, Any], Any], tmp_path: Path, export: str, flavor: str
) -> None:
    store, schema, test = data
    workspace = tmp_path / "ws"
    shutil.copytree(EXAMPLE, workspace / "training")
    params = {"label_column": LABEL, "epochs": 500, "C": 0.5, "export": export}
    config = Config.model_validate(
        {"training": {"recipe": "script", "script": "training/train.py", "params": params}}
    )
    job = script_job(config, workspace, store)

    result, root = run_job(store, tmp_path / "jobs", f"example-{export}", job)
    assert result.output_uri is not None
    sha = adopt_stored(store, result.output_uri, tmp_path / "cache" / "model", schema)
    predictor = load_predictor(tmp_path / "cache" / "model", sha)

    assert predictor.manifest.flavor == flavor
    metrics = json.loads((root / "output" / "data" / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.9
    names = predictor.manifest.feature_names
    rows = test[names].to_dict("records")
    predictions = predictor.predict(rows)
    accuracy = sum(p["label"] == t for p, t in zip(predictions, test[LABEL], strict=True))
    assert accuracy / len(rows) == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert all(set(p["probabilities"]) == {"benign", "malignant"} for p in predictions)


def test_a_script_gets_the_sagemaker_environment_and_arguments(
    data: tuple[Store, dict[str, Any], Any], tmp_path: Path
) -> None:
    store = data[0]
    workspace = tmp_path / "ws"
    (workspace / "src").mkdir(parents=True)
    (workspace / "src" / "probe.py").write_text(PROBE)
    (workspace / "src" / "helper.py").write_text("WEIGHTS = 'w'\n")
    store.put_bytes("reference/part-1.jsonl", b'{"a": 1}\n')
    store.put_bytes("reference/part-2.jsonl", b'{"a": 2}\n')
    params = {"epochs": 3, "learning-rate": 0.001, "model_name": "tiny", "fp16": True}
    params |= {"layers": [64, 32]}
    config = Config.model_validate(
        {
            "training": {
                "recipe": "script",
                "source_dir": "src",
                "script": "probe.py",  # relative to source_dir, as SageMaker's entry_point
                "params": params,
                "channels": {"reference": "reference"},
            }
        }
    )

    result, root = run_job(store, tmp_path / "jobs", "probe", script_job(config, workspace, store))

    report = json.loads((root / "output" / "data" / "probe.json").read_text())
    assert report["argv"] == [
        "--epochs", "3", "--learning-rate", "0.001", "--model_name", "tiny",
        "--fp16", "true", "--layers", "[64, 32]",
    ]  # fmt: skip
    assert report["args"] == {
        "epochs": 3,
        "learning_rate": 0.001,
        "model_name": "tiny",
        "fp16": True,
        "layers": [64, 32],
    }
    env = report["env"]
    assert json.loads(env["SM_HPS"]) == params
    assert env["SM_MODEL_DIR"] == str(root / "model")
    assert env["SM_OUTPUT_DATA_DIR"] == str(root / "output" / "data")
    assert env["SM_CHECKPOINT_DIR"] == str(root / "checkpoints")
    assert (env["SM_NUM_GPUS"], env["SM_NUM_CPUS"]) == ("0", "1")
    assert env["SM_CURRENT_HOST"] == "algo-1" and json.loads(env["SM_HOSTS"]) == ["algo-1"]
    assert env["SM_CHANNEL_TRAIN"] == str(root / "input" / "data" / "train")
    assert report["channels"] == {
        "reference": ["0000-part-1.jsonl", "0001-part-2.jsonl"],
        "test": ["0000-test.jsonl"],
        "train": ["0000-train.jsonl"],
    }
    assert report["cwd"] == str(root / "code")
    assert (root / "checkpoints" / "step-1").read_text() == "state"
    assert result.output_uri is not None
    assert store.get_bytes(store.key_of(result.output_uri) + "/weights.txt") == b"w"
