"""Classification metrics, computed the same way for candidate and champion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def accuracy(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    if not y_true:
        return 0.0
    return sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == p) / len(y_true)


def macro_f1(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``."""
    classes = sorted(set(y_true) | set(y_pred), key=str)
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p != c)
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return sum(scores) / len(scores)


def classification(y_true: Sequence[Any], y_pred: Sequence[Any]) -> dict[str, float]:
    return {
        "accuracy": round(accuracy(y_true, y_pred), 6),
        "macro_f1": round(macro_f1(y_true, y_pred), 6),
        "rows": float(len(y_true)),
    }
