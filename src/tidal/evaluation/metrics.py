"""Classification metrics, computed the same way for candidate and champion: scikit-learn's.

Labels are compared with ``==`` as they come (``"1"`` and ``1`` are different labels): each
distinct label gets an integer code first, so a file whose labels mix types is scored, not
refused by scikit-learn's check that labels share one type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _codes(y_true: Sequence[Any], y_pred: Sequence[Any]) -> tuple[list[int], list[int], int]:
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    codes: dict[Any, int] = {}
    truth = [codes.setdefault(v, len(codes)) for v in y_true]
    pred = [codes.setdefault(v, len(codes)) for v in y_pred]
    return truth, pred, len(codes)


def accuracy(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    from sklearn.metrics import accuracy_score

    truth, pred, _ = _codes(y_true, y_pred)
    return float(accuracy_score(truth, pred)) if truth else 0.0


def macro_f1(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``."""
    from sklearn.metrics import f1_score

    truth, pred, classes = _codes(y_true, y_pred)
    if not truth:
        return 0.0
    return float(
        f1_score(truth, pred, labels=list(range(classes)), average="macro", zero_division=0)
    )


def classification(y_true: Sequence[Any], y_pred: Sequence[Any]) -> dict[str, float]:
    return {
        "accuracy": round(accuracy(y_true, y_pred), 6),
        "macro_f1": round(macro_f1(y_true, y_pred), 6),
        "rows": float(len(y_true)),
    }
