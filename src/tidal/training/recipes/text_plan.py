"""How the text recipe adapts its defaults to the data: a plan made before training starts.

Every setting left at ``auto`` in ``training.params`` is decided here from the training rows,
and the decision is reported (the ``plan`` event and the run's metrics), so a run says why it
trained as it did:

    validation   a stratified share of the training rows (``validation_split``, 10 %) held out
                 for early stopping; never the pipeline's test split, which the gate judges on.
                 Only carved when there will be more than one evaluation and at least
                 ``MIN_VALID_ROWS`` rows to spare; every class keeps at least one training row.
    epochs       enough passes for about ``TARGET_STEPS`` optimizer steps, between 1 and
                 ``MAX_EPOCHS``: a small data set gets several epochs, a large one one.
    class_weight balanced weights (n / (classes x n_class), scikit-learn's rule) in the loss
                 when the largest class has more than ``IMBALANCE_RATIO`` times the rows of the
                 smallest; none otherwise.
    max_length   the ``LENGTH_QUANTILE`` quantile of the training texts' token counts, rounded
                 up to a multiple of 8, between ``MIN_LENGTH`` and the model's limit.

Pure functions of the data: no torch, no transformers (the recipe passes token counts in).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tidal.errors import UsageError

AUTO = "auto"
TARGET_STEPS = 300
MAX_EPOCHS = 10
MIN_VALID_ROWS = 20
IMBALANCE_RATIO = 1.5
LENGTH_QUANTILE = 0.95
MIN_LENGTH = 16


@dataclass(frozen=True)
class TextPlan:
    """What the recipe will do, and why (``reasons``: setting → a short explanation)."""

    epochs: int
    max_length: int
    class_weights: list[float] | None
    valid_rows: int  # rows carved out of the training data for early stopping (0: none)
    reasons: dict[str, str]

    def as_event(self) -> dict[str, Any]:
        return {"event": "plan", **asdict(self)}


def is_auto(value: Any) -> bool:
    return value is None or value == AUTO


def positive_int(name: str, value: Any) -> int:
    """``value`` as a whole number >= 1, or a clear error naming ``training.params.<name>``."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(
            f"training.params.{name} is {value!r}; allowed: a whole number >= 1 or 'auto'",
            hint=f"set training.params.{name}: auto to let the recipe choose from the data",
        )
    return value


def validation_rows(labels: Sequence[Any], share: float, *, evaluations: int) -> int:
    """How many training rows to hold out for early stopping (0 when it cannot help)."""
    if not 0.0 <= share < 0.5:
        raise UsageError(
            f"training.params.validation_split is {share}; allowed: 0 (none) up to 0.5",
            hint="0.1 holds out a tenth of the training rows to choose the best epoch",
        )
    wanted = round(len(labels) * share)
    if evaluations < 2 or wanted < MIN_VALID_ROWS:
        return 0
    return wanted


def stratified_split(labels: Sequence[Any], rows: int, seed: int) -> tuple[list[int], list[int]]:
    """Positions of (train, valid): ``rows`` held out, each class in proportion, seeded.

    Every class with two rows or more gives at least one; every class keeps at least one.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    by_class: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    valid: list[int] = []
    share = rows / max(len(labels), 1)
    for label in sorted(by_class, key=str):
        members = by_class[label]
        take = min(max(round(len(members) * share), 1 if len(members) > 1 else 0), len(members) - 1)
        chosen = rng.permutation(len(members))[:take]
        valid.extend(members[int(j)] for j in chosen)
    held = set(valid)
    return [i for i in range(len(labels)) if i not in held], sorted(valid)


def choose_epochs(train_rows: int, batch_size: int) -> tuple[int, str]:
    steps_per_epoch = max(1, math.ceil(train_rows / batch_size))
    epochs = min(MAX_EPOCHS, max(1, math.ceil(TARGET_STEPS / steps_per_epoch)))
    why = (
        f"{train_rows} training rows are {steps_per_epoch} steps an epoch; {epochs} epoch(s) "
        f"give about {TARGET_STEPS} steps (at most {MAX_EPOCHS} epochs)"
    )
    return epochs, why


def balanced_weights(labels: Sequence[Any], classes: Sequence[Any]) -> list[float]:
    """scikit-learn's "balanced" class weights; a class absent from ``labels`` gets 1.0."""
    counts = Counter(labels)
    n, k = len(labels), len(classes)
    return [n / (k * counts[c]) if counts[c] else 1.0 for c in classes]


def choose_weights(
    labels: Sequence[Any], classes: Sequence[Any], setting: Any
) -> tuple[list[float] | None, str]:
    if setting not in (AUTO, "balanced", "none", None):
        raise UsageError(
            f"training.params.class_weight is {setting!r}; allowed: auto, balanced, none",
            hint="auto weighs the loss by class only when the classes are imbalanced",
        )
    counts = Counter(labels)
    present = [counts[c] for c in classes if counts[c]]
    ratio = max(present) / min(present) if present else 1.0
    if setting == "none" or (is_auto(setting) and ratio <= IMBALANCE_RATIO):
        return None, f"largest/smallest class = {ratio:.1f}: unweighted loss"
    return (
        balanced_weights(labels, classes),
        f"largest/smallest class = {ratio:.1f}: loss weighted n/(classes x n_class)",
    )


def choose_max_length(token_counts: Sequence[int], limit: int) -> tuple[int, str]:
    """The ``LENGTH_QUANTILE`` of the token counts, rounded up to 8, within [16, limit]."""
    if not token_counts:
        return min(limit, 128), "no texts: 128"
    ordered = sorted(token_counts)
    at = ordered[min(len(ordered) - 1, math.ceil(LENGTH_QUANTILE * len(ordered)) - 1)]
    length = max(MIN_LENGTH, min(limit, 8 * math.ceil(at / 8)))
    cut = sum(c > length for c in ordered) / len(ordered)
    why = (
        f"{int(LENGTH_QUANTILE * 100)}% of the training texts have <= {at} tokens; "
        f"max_length {length} truncates {cut:.1%}"
    )
    return length, why


def macro_f1(predicted: Sequence[int], truth: Sequence[int], classes: int) -> float:
    """Macro-averaged F1 over the classes present in ``truth`` or ``predicted``."""
    from sklearn.metrics import f1_score

    seen = sorted(set(truth) | set(predicted))
    if not seen or not 0 <= min(seen) <= max(seen) < classes:
        raise ValueError(f"class ids must lie in [0, {classes}); got {seen}")
    return float(f1_score(list(truth), list(predicted), labels=seen, average="macro"))
