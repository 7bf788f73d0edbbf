"""The text recipe's plan: epochs from the data size, class weights when imbalanced, a
stratified validation split, max_length from the token lengths, macro-F1. No model needed."""

from __future__ import annotations

from collections import Counter

import pytest

from tidal.errors import UsageError
from tidal.training.recipes import text_plan


def test_epochs_shrink_as_the_data_grows() -> None:
    chosen = {rows: text_plan.choose_epochs(rows, 16)[0] for rows in (50, 1280, 1800, 6000)}
    assert chosen == {50: 10, 1280: 4, 1800: 3, 6000: 1}  # ~300 steps, 1..10 epochs
    assert "80 steps an epoch" in text_plan.choose_epochs(1280, 16)[1]


def test_balanced_weights_only_when_imbalanced() -> None:
    labels = [0] * 80 + [1] * 15 + [2] * 5
    weights, why = text_plan.choose_weights(labels, [0, 1, 2], "auto")
    assert weights == pytest.approx([100 / (3 * 80), 100 / (3 * 15), 100 / (3 * 5)])
    assert "16.0" in why  # largest/smallest
    assert text_plan.choose_weights([0, 1] * 50, [0, 1], "auto")[0] is None
    assert text_plan.choose_weights(labels, [0, 1, 2], "none")[0] is None
    assert text_plan.choose_weights([0, 1] * 50, [0, 1], "balanced")[0] == [1.0, 1.0]
    # a class of the schema absent from the rows gets weight 1, never a division by zero
    assert text_plan.balanced_weights([0, 0, 1], [0, 1, 2])[2] == 1.0
    with pytest.raises(UsageError, match="auto, balanced, none"):
        text_plan.choose_weights(labels, [0, 1, 2], "sqrt")


def test_the_split_is_stratified_seeded_and_keeps_every_class() -> None:
    labels = [0] * 640 + [1] * 100 + [2] * 12 + [3] * 1
    fit, valid = text_plan.stratified_split(labels, 75, seed=1)
    assert sorted(fit + valid) == list(range(len(labels)))
    counts = Counter(labels[i] for i in valid)
    assert counts == {0: 64, 1: 10, 2: 1}  # a tenth of each; the single row stays in training
    assert (fit, valid) == text_plan.stratified_split(labels, 75, seed=1)
    assert valid != text_plan.stratified_split(labels, 75, seed=2)[1]


def test_validation_rows_only_when_early_stopping_can_act() -> None:
    labels = [0, 1] * 500
    assert text_plan.validation_rows(labels, 0.1, evaluations=3) == 100
    assert text_plan.validation_rows(labels, 0.1, evaluations=1) == 0  # one epoch: nothing
    assert text_plan.validation_rows(labels[:100], 0.1, evaluations=3) == 0  # under 20 rows
    assert text_plan.validation_rows(labels, 0.0, evaluations=3) == 0
    with pytest.raises(UsageError, match="validation_split"):
        text_plan.validation_rows(labels, 0.7, evaluations=3)


def test_max_length_follows_the_token_lengths() -> None:
    counts = [10] * 90 + [37] * 5 + [400] * 5
    length, why = text_plan.choose_max_length(counts, 512)
    assert length == 40  # the 95th percentile (37), rounded up to a multiple of 8
    assert "truncates 5.0%" in why
    assert text_plan.choose_max_length([1000] * 10, 256)[0] == 256  # the model's limit
    assert text_plan.choose_max_length([3] * 10, 512)[0] == text_plan.MIN_LENGTH


def test_positive_int_refuses_what_is_not_a_count() -> None:
    assert text_plan.positive_int("epochs", 3) == 3
    assert text_plan.positive_int("epochs", "4") == 4
    for bad in (0, -1, 2.5, "many", True):
        with pytest.raises(UsageError, match=r"training\.params\.epochs"):
            text_plan.positive_int("epochs", bad)


def test_macro_f1_counts_every_class_seen_equally() -> None:
    truth = [0] * 8 + [1, 2]
    always_zero = [0] * 10
    assert text_plan.macro_f1(always_zero, truth, 3) == pytest.approx((16 / 18) / 3)
    assert text_plan.macro_f1(truth, truth, 3) == 1.0
