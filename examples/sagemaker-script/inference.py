"""Serving code for the model train.py writes with ``--export numpy`` (SageMaker inference style).

Tidal imports this file from the model folder (``code/inference.py``), calls ``model_fn`` once
and ``predict_fn`` for every batch. It loads plain arrays (``allow_pickle=False``): no pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def model_fn(model_dir: str) -> dict[str, np.ndarray]:
    with np.load(Path(model_dir) / "model.npz", allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def predict_fn(rows: list[dict[str, Any]], model: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    names = [str(n) for n in model["features"]]
    x = np.array([[np.nan if r[n] is None else r[n] for n in names] for r in rows], dtype=float)
    x = np.where(np.isnan(x), model["mean"], x)  # a missing value: the training mean
    logits = (x - model["mean"]) / model["scale"] @ model["coef"].T + model["intercept"]
    classes = [str(c) for c in model["classes"]]
    if len(classes) == 2:  # binary: one logit for the second class
        p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        proba = np.column_stack([1.0 - p1, p1])
    else:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        proba = shifted / shifted.sum(axis=1, keepdims=True)
    return [
        {
            "label": classes[int(p.argmax())],
            "probabilities": dict(zip(classes, p.tolist(), strict=True)),
        }
        for p in proba
    ]
