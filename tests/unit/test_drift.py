"""Drift core: baselines, window statistics that add up, and the verdicts on known shifts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from tidal.artifact import Feature
from tidal.errors import TidalError
from tidal.monitoring.baseline import OTHER, Baseline, TextBaseline
from tidal.monitoring.drift import FeatureDrift, Status, Thresholds, WindowStats, compare
from tidal.monitoring.embedding import DIMS, METHOD, SKETCH_ROWS, Reservoir, encode
from toy import reviews

NUMERIC = [Feature("x", "number"), Feature("y", "number")]
POLITICS = ["tax", "border", "senate", "economy", "jobs", "healthcare", "vote", "policy"]


def metric(feature: FeatureDrift, name: str) -> float:
    value = feature.metrics[name]
    assert value is not None, f"{feature.name} has no {name}"
    return value


def normal_frame(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.normal(shift, 1.0, n), "y": rng.normal(5.0, 2.0, n)})


@pytest.fixture(scope="module")
def numeric() -> Baseline:
    return Baseline.from_frame(normal_frame(20_000, seed=1), NUMERIC)


def test_a_mean_shift_of_one_std_fires_on_that_feature_only(numeric: Baseline) -> None:
    report = compare(numeric, WindowStats.from_batch(numeric, normal_frame(5000, 2, shift=1.0)))

    x, y = report.features
    assert report.status == Status.DRIFTED and report.drifted == ["x"]
    assert report.worst is not None and report.worst.name == "x"
    assert metric(x, "psi") > 0.5 and metric(x, "ks") > 0.3
    assert any(r.startswith("psi") for r in x.reasons) and any(
        r.startswith("ks") for r in x.reasons
    )
    assert x.metrics["mean_shift_std"] == pytest.approx(1.0, abs=0.05)
    assert y.status == Status.OK and metric(y, "psi") < 0.05


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_the_same_distribution_with_5000_samples_does_not_fire(
    numeric: Baseline, seed: int
) -> None:
    report = compare(numeric, WindowStats.from_batch(numeric, normal_frame(5000, seed)))

    assert report.status == Status.OK and report.drifted == []
    for feature in report.features:
        assert feature.status == Status.OK and feature.reasons == []
        assert metric(feature, "psi") < 0.02 and metric(feature, "ks") < 0.03


def test_binned_ks_brackets_the_exact_statistic(numeric: Baseline) -> None:
    train, live = normal_frame(20_000, seed=1), normal_frame(3000, 6, shift=0.3)
    feature = compare(numeric, WindowStats.from_batch(numeric, live)).features[0]

    exact = ks_2samp(train["x"], live["x"]).statistic
    widest = max(max(feature.bins["baseline"]), max(feature.bins["current"]))
    assert metric(feature, "ks") <= exact + 1e-12 <= metric(feature, "ks") + widest


def test_values_outside_the_training_range_land_in_the_open_end_bins(numeric: Baseline) -> None:
    live = pd.DataFrame({"x": np.full(300, 99.0), "y": np.full(300, -99.0)})
    x, y = compare(numeric, WindowStats.from_batch(numeric, live)).features

    assert x.bins["baseline"][-1] == 0 and x.bins["current"][-1] == 1.0
    assert y.bins["current"][0] == 1.0 and x.status == y.status == Status.DRIFTED


def test_categorical_drift_is_judged_by_jensen_shannon() -> None:
    rng = np.random.default_rng(7)
    colours = ["red", "green", "blue"]
    train = pd.DataFrame({"c": rng.choice(colours, 10_000, p=[0.6, 0.3, 0.1]), "b": True})
    baseline = Baseline.from_frame(train, [Feature("c", "string"), Feature("b", "boolean")])
    same = pd.DataFrame({"c": rng.choice(colours, 2000, p=[0.6, 0.3, 0.1]), "b": True})
    moved = pd.DataFrame({"c": rng.choice([*colours, "pink"], 2000, p=[0.2, 0.2, 0.3, 0.3])})
    moved["b"] = [True, False] * 1000

    ok = compare(baseline, WindowStats.from_batch(baseline, same))
    drifted = compare(baseline, WindowStats.from_batch(baseline, moved))

    assert ok.status == Status.OK and metric(ok.features[0], "js") < 0.05
    c, b = drifted.features
    assert c.status == b.status == Status.DRIFTED and metric(c, "js") > 0.3
    assert metric(c, "chi2_pvalue") < 1e-6
    assert c.bins["categories"] == ["red", "green", "blue", OTHER]  # pink counts as other
    assert c.bins["current"][-1] == pytest.approx(0.3, abs=0.05)


def test_text_length_and_out_of_vocabulary_shift() -> None:
    train = pd.DataFrame(reviews(2000, seed=1))
    baseline = Baseline.from_frame(train, [Feature("review", "string")], text={"review"})
    rng = np.random.default_rng(8)
    speeches = [" ".join(rng.choice(POLITICS, rng.integers(20, 40))) for _ in range(500)]
    same = [r["review"] for r in reviews(500, seed=2)]

    ok = compare(baseline, WindowStats.from_batch(baseline, {"review": same})).features[0]
    shifted = compare(baseline, WindowStats.from_batch(baseline, {"review": speeches})).features[0]

    assert ok.kind == "text" and ok.status == Status.OK
    assert ok.metrics["oov_rate"] == pytest.approx(0.0) and ok.metrics["baseline_oov_rate"] == 0.0
    assert shifted.status == Status.DRIFTED and shifted.metrics["oov_rate"] == 1.0
    assert metric(shifted, "length_psi") > 1.0
    assert {r.split()[0] for r in shifted.reasons} >= {"length_psi", "oov"}


def test_text_embedding_drift_is_judged_by_the_domain_classifier() -> None:
    """Sketch and samples of known vectors (a model's embeddings: see test_embedding.py)."""
    rng = np.random.default_rng(21)
    train = pd.DataFrame(reviews(600, seed=1))
    baseline = Baseline.from_frame(train, [Feature("review", "string")], text={"review"})
    text = baseline.features["review"]
    assert isinstance(text, TextBaseline) and text.sketch is None
    text.sketch = {"method": METHOD, "dims": DIMS, "seed": 0, "n": SKETCH_ROWS} | {
        "vectors": encode(rng.normal(size=(SKETCH_ROWS, DIMS)))
    }
    same = [r["review"] for r in reviews(400, seed=2)]

    def judged(shift: float, n: int, vectors: int | None = None) -> FeatureDrift:
        window = WindowStats.from_batch(baseline, {"review": same[:n]})
        k = n if vectors is None else vectors
        sample = Reservoir(np.arange(k, dtype=np.uint64), rng.normal(shift, 1.0, (k, DIMS)))
        window.features["review"].sample = sample
        again = WindowStats.from_json(window.to_json())  # the sample travels with the window
        return compare(baseline, again, Thresholds(min_samples=200)).features[0]

    moved, still = judged(0.3, 400), judged(0.0, 400)
    assert moved.status == Status.DRIFTED and metric(moved, "embedding_auc") > 0.9
    assert moved.reasons == [next(r for r in moved.reasons if r.startswith("embedding auc"))]
    assert moved.score == pytest.approx((metric(moved, "embedding_auc") - 0.5) / 0.25)
    assert still.status == Status.OK and abs(metric(still, "embedding_auc") - 0.5) < 0.08
    assert metric(still, "embedding_samples") == 400
    few = judged(0.3, 150)  # computed, not judged: 150 texts < min_samples
    assert few.status == Status.INSUFFICIENT_DATA and metric(few, "embedding_auc") > 0.8
    partial = judged(0.3, 400, vectors=150)  # most texts came without the model: not judged
    assert partial.status == Status.OK and metric(partial, "embedding_auc") > 0.8
    plain = WindowStats.from_batch(baseline, {"review": same})
    assert "embedding_auc" not in compare(baseline, plain).features[0].metrics


def test_prediction_drift_compares_label_shares(numeric: Baseline) -> None:
    baseline = Baseline.from_frame(normal_frame(1000, 1), NUMERIC, ["a"] * 700 + ["b"] * 300)
    live = normal_frame(1000, 9)

    same = compare(baseline, WindowStats.from_batch(baseline, live, ["a"] * 690 + ["b"] * 310))
    flipped = compare(baseline, WindowStats.from_batch(baseline, live, ["a"] * 300 + ["b"] * 700))

    assert same.predictions is not None and same.predictions.status == Status.OK
    assert same.status == Status.OK
    assert flipped.predictions is not None and flipped.predictions.status == Status.DRIFTED
    assert flipped.status == Status.DRIFTED and flipped.drifted == []  # features did not move


def test_merged_windows_equal_one_big_window() -> None:
    train = normal_frame(5000, 1).assign(c=lambda f: np.where(f["x"] > 0, "hi", "lo"))
    features = [*NUMERIC, Feature("c", "string")]
    baseline = Baseline.from_frame(train, features, ["p", "q"] * 100)
    live = normal_frame(3000, 10, shift=0.5).assign(c="hi")
    live.loc[::7, "y"] = np.nan
    labels = np.array(["p", "q", "r"])[np.arange(3000) % 3]
    ts = np.arange(3000, dtype=float)

    whole = WindowStats.from_batch(baseline, live, labels, ts=ts)
    parts = [
        WindowStats.from_batch(baseline, live.iloc[a:b], labels[a:b], ts=ts[a:b])
        for a, b in [(0, 1000), (1000, 1001), (1001, 3000)]
    ]
    merged = WindowStats.empty(baseline).merge(*parts)

    assert merged.rows == whole.rows == 3000 and (merged.start, merged.end) == (0.0, 2999.0)
    assert merged.predictions == whole.predictions == {"p": 1000, "q": 1000, "r": 1000}
    for name, stats in whole.features.items():
        assert np.array_equal(merged.features[name].counts, stats.counts)
        assert merged.features[name].missing == stats.missing
        assert merged.features[name].sum == pytest.approx(stats.sum)
    assert merged.features["y"].missing == 429
    a, b = compare(baseline, merged).to_dict(), compare(baseline, whole).to_dict()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("rows", [0, 1, 199])
def test_insufficient_data_is_never_ok(numeric: Baseline, rows: int) -> None:
    for frame in (normal_frame(rows, 11), normal_frame(rows, 11, shift=3.0)):
        report = compare(numeric, WindowStats.from_batch(numeric, frame))

        assert report.status == Status.INSUFFICIENT_DATA and report.drifted == []
        assert {f.status for f in report.features} == {Status.INSUFFICIENT_DATA}
        assert report.worst is None


def test_min_samples_apply_to_present_values_and_missing_rate_counts(numeric: Baseline) -> None:
    live = normal_frame(1000, 12)
    live.loc[100:, "x"] = np.nan  # 100 values left, 90% missing against 0% in training

    x, y = compare(numeric, WindowStats.from_batch(numeric, live)).features
    absent = compare(numeric, WindowStats.from_batch(numeric, {"y": live["y"]})).features[0]

    assert x.status == Status.DRIFTED and x.reasons[0].startswith("missing rate change")
    assert "psi" not in " ".join(x.reasons)  # 100 values are too few to judge the distribution
    assert absent.status == Status.DRIFTED and absent.metrics["missing_rate"] == 1.0
    assert y.status == Status.OK
    few = compare(numeric, WindowStats.from_batch(numeric, live), Thresholds(missing=1.0))
    assert few.features[0].status == Status.INSUFFICIENT_DATA
    assert few.status == Status.INSUFFICIENT_DATA


def test_small_windows_do_not_alarm_on_noise_across_many_features() -> None:
    rng = np.random.default_rng(13)
    names = [f"f{i}" for i in range(50)]
    train = pd.DataFrame(rng.normal(size=(20_000, 50)), columns=names)
    baseline = Baseline.from_frame(train, [Feature(n, "number") for n in names])
    fired = 0
    for _ in range(10):
        live = pd.DataFrame(rng.normal(size=(200, 50)), columns=names)
        fired += compare(baseline, WindowStats.from_batch(baseline, live)).status != Status.OK
    assert fired <= 1


def test_capture_records_give_the_same_window_as_columns(numeric: Baseline) -> None:
    live = normal_frame(300, 14)
    records = [
        {"ts": 10.0 + i, "input": {"x": x, "y": y}, "output": {"label": "a", "score": 0.9}}
        for i, (x, y) in enumerate(zip(live["x"], live["y"], strict=True))
    ]
    records[0]["input"] = {"x": None}

    window = WindowStats.from_records(numeric, records)

    assert window.rows == 300 and window.predictions == {"a": 300}
    assert (window.start, window.end) == (10.0, 309.0)
    assert window.features["x"].missing == 1 and window.features["y"].missing == 1
    expected = WindowStats.from_batch(numeric, live.iloc[1:])
    assert np.array_equal(window.features["y"].counts, expected.features["y"].counts)


def test_baseline_and_window_json_round_trip() -> None:
    frame = pd.DataFrame(reviews(300, seed=3))
    rng = np.random.default_rng(15)
    frame["n"], frame["k"] = rng.normal(size=300), rng.integers(0, 4, 300)
    frame["flag"] = rng.random(300) > 0.5
    frame["city"] = rng.choice(np.array(["a", "b", None]), 300)
    features = [
        Feature("review", "string"),
        Feature("n", "number"),
        Feature("k", "integer"),
        Feature("flag", "boolean"),
        Feature("city", "string"),
    ]
    baseline = Baseline.from_frame(frame, features, frame["verdict"], text={"review"})

    text = baseline.to_json()
    again = Baseline.from_json(text)

    assert again == baseline and again.fingerprint == baseline.fingerprint
    assert again.to_json() == text and len(text) < 10_000
    assert [f.kind for f in again.features.values()] == [
        "text",
        "numeric",
        "numeric",
        "categorical",
        "categorical",
    ]
    assert again.features["k"].edges == [0, 1, 2, 3, np.nextafter(3, 4)]  # type: ignore[union-attr]
    assert again.prediction_shares == pytest.approx({"bad": 0.5, "good": 0.5})
    window = WindowStats.from_batch(again, frame, frame["verdict"])
    assert WindowStats.from_json(window.to_json()).to_json() == window.to_json()
    report = compare(baseline, WindowStats.from_json(window.to_json()))
    json.dumps(report.to_dict(), allow_nan=False)
    assert report.status == Status.OK
    assert sum("bins" in f for f in report.to_dict(plots=2)["features"]) == 2


def test_windows_of_another_baseline_are_refused(numeric: Baseline) -> None:
    other = Baseline.from_frame(normal_frame(1000, 16, shift=2.0), NUMERIC)
    window = WindowStats.from_batch(other, normal_frame(300, 17))

    with pytest.raises(TidalError, match="different baselines"):
        WindowStats.empty(numeric).merge(window)
    with pytest.raises(TidalError, match="binned against baseline"):
        compare(numeric, window)


def test_baseline_names_missing_training_columns() -> None:
    with pytest.raises(TidalError, match="'z' missing in the training data; columns found: x, y"):
        Baseline.from_frame(normal_frame(10, 1), [*NUMERIC, Feature("z", "number")])


# -- the toy drift case: one shifted feature among 30, a few hundred rows -----------------------


@pytest.fixture(scope="module")
def cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(as_frame=True).frame.drop(columns=["target"])


def split(frame: pd.DataFrame, seed: int, rows: int = 300) -> tuple[Baseline, pd.DataFrame]:
    """A baseline of some rows, and a window of ``rows`` others: two samples of one population."""
    shuffled = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    features = [Feature(str(c), "number") for c in frame.columns]
    return Baseline.from_frame(shuffled.iloc[rows:], features), shuffled.iloc[:rows]


def test_one_feature_x1_5_among_30_on_300_rows_is_the_one_flagged(cancer: pd.DataFrame) -> None:
    flagged = []
    for seed in range(5):
        baseline, window = split(cancer, seed)
        window = window.assign(**{"mean radius": window["mean radius"] * 1.5})
        report = compare(baseline, WindowStats.from_batch(baseline, window))
        flagged.append(report.drifted)
        # the shifted feature's PSI is far over the threshold; the others' (bias-corrected)
        # are near 0, where uncorrected PSI on 20 bins of ~300 values averages ~0.14
        others = [f.metrics["psi"] or 0.0 for f in report.features if f.name != "mean radius"]
        assert np.median(others) < 0.05, others
    assert all(d[0] == "mean radius" for d in flagged), flagged
    assert all(len(d) <= 2 for d in flagged), flagged  # at most one other, and rarely
    assert sum(len(d) == 1 for d in flagged) >= 4, flagged


def test_unshifted_samples_are_rarely_flagged_at_all(cancer: pd.DataFrame) -> None:
    # 20 splits of the same data: a false discovery rate of 1% over 30 features allows a
    # report with any drift in about 1 window in 100 when nothing moved
    drifted = []
    for seed in range(20):
        baseline, window = split(cancer, seed)
        drifted.append(compare(baseline, WindowStats.from_batch(baseline, window)).drifted)
    assert sum(bool(d) for d in drifted) <= 2, drifted
