"""Classification metrics agree with scikit-learn's on random labels."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from tidal.evaluation.metrics import accuracy, classification, macro_f1


@pytest.mark.parametrize("seed", range(8))
def test_accuracy_and_macro_f1_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = ["benign", "malignant", "other"][: 2 + seed % 2]
    n = int(rng.integers(5, 200))
    truth = [str(c) for c in rng.choice(classes, n)]
    # mostly right, sometimes wrong, and sometimes a label the truth never has
    pred = [t if rng.random() < 0.7 else str(rng.choice([*classes, "unseen"])) for t in truth]
    labels = sorted(set(truth) | set(pred))

    assert accuracy(truth, pred) == pytest.approx(skm.accuracy_score(truth, pred))
    assert macro_f1(truth, pred) == pytest.approx(
        skm.f1_score(truth, pred, average="macro", labels=labels, zero_division=0)
    )


def test_integer_labels_and_perfect_predictions() -> None:
    truth = [0, 1, 2, 2, 1, 0]

    assert accuracy(truth, truth) == 1.0
    assert macro_f1(truth, truth) == 1.0
    assert macro_f1(truth, [1, 1, 1, 1, 1, 1]) == pytest.approx(
        skm.f1_score(truth, [1] * 6, average="macro", zero_division=0)
    )


def test_empty_input_scores_zero() -> None:
    assert accuracy([], []) == 0.0
    assert macro_f1([], []) == 0.0


def test_classification_rounds_and_counts_rows() -> None:
    result = classification(["a", "b", "a"], ["a", "a", "a"])

    assert result == {
        "accuracy": round(2 / 3, 6),
        "macro_f1": round(
            skm.f1_score(["a", "b", "a"], ["a"] * 3, average="macro", zero_division=0), 6
        ),
        "rows": 3.0,
    }


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        accuracy(["a", "b"], ["a"])


@pytest.mark.parametrize("seed", range(4))
def test_the_same_figures_as_the_counting_they_replace(seed: int) -> None:
    """Tidal counted tp/fp/fn itself before it called scikit-learn: the figures are equal."""

    def counted_macro_f1(truth: list[object], pred: list[object]) -> float:
        scores = []
        for c in sorted(set(truth) | set(pred), key=str):
            tp = sum(1 for t, p in zip(truth, pred, strict=True) if t == c and p == c)
            fp = sum(1 for t, p in zip(truth, pred, strict=True) if t != c and p == c)
            fn = sum(1 for t, p in zip(truth, pred, strict=True) if t == c and p != c)
            scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        return sum(scores) / len(scores)

    rng = np.random.default_rng(seed)
    truth = [int(c) for c in rng.integers(0, 5, 300)]
    pred = [t if rng.random() < 0.6 else int(rng.integers(0, 7)) for t in truth]

    assert macro_f1(truth, pred) == pytest.approx(counted_macro_f1(truth, pred), abs=1e-12)
    assert accuracy(truth, pred) == sum(t == p for t, p in zip(truth, pred, strict=True)) / 300


def test_labels_of_mixed_types_are_scored_as_distinct_labels() -> None:
    truth: list[object] = [1, 1, "1", "b"]
    pred: list[object] = [1, "1", "1", "b"]

    assert accuracy(truth, pred) == 0.75
    assert macro_f1(truth, pred) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
