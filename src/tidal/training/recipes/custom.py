"""The ``python`` flavor: a model served by the user's own ``inference.py``.

This runs the user's code inside Tidal's process (the endpoint's worker, and the controller
while it evaluates the model), with Tidal's permissions: adopt a folder only from a script you
trust. The loader has already checked the sha256 of ``inference.py`` and of every model file
against the manifest before ``setup`` runs, so what runs is what was registered.

``inference.py`` follows SageMaker's inference toolkit (docs/custom-models.md):

    model_fn(model_dir: str) -> model        called once, in setup
    predict_fn(rows: list[dict], model)      called per batch; rows are dicts of feature →
                                             value, checked and coerced against the schema

``predict_fn`` returns one prediction per row, as a list (or array) of labels, or of dicts with
``label`` and optionally ``probabilities`` (label → probability, or a list in the manifest's
label order) and ``score``. ``{"predictions": [...]}`` is unwrapped. Labels are matched to the
manifest's labels by their text, so ``"1"`` or ``numpy.int64(1)`` becomes the label ``1``.
``input_fn`` and ``output_fn`` are not called: Tidal decodes requests and encodes answers.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tidal.errors import ModelLoadError, PredictionError
from tidal.training.recipes.base import Predictor

INFERENCE_FILES = ("inference.py", "code/inference.py")


def inference_file(folder: Path) -> Path:
    """The ``inference.py`` of a model folder (at its top, or in ``code/`` as SageMaker has it)."""
    for name in INFERENCE_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelLoadError(
        f"{folder} has no inference.py (looked for {', '.join(INFERENCE_FILES)})",
        hint="a model of flavor 'python' ships the inference.py that serves it",
    )


def import_inference(path: Path) -> Any:
    """Import ``path`` as a module of its own (a unique name, so two versions never mix).

    Its folder is on ``sys.path`` while the module runs, so it may import modules beside it.
    """
    name = f"tidal_custom_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickle look modules up by name
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelLoadError(f"importing {path} raised {type(exc).__name__}: {exc}") from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


class CustomPredictor(Predictor):
    def setup(self) -> None:
        path = inference_file(self.folder)
        module = import_inference(path)
        functions: dict[str, Callable[..., Any]] = {}
        for fn in ("model_fn", "predict_fn"):
            value = getattr(module, fn, None)
            if not callable(value):
                raise ModelLoadError(
                    f"{path} does not define {fn}",
                    hint="inference.py defines model_fn(model_dir) and predict_fn(rows, model)",
                )
            functions[fn] = value
        self._predict_fn = functions["predict_fn"]
        try:
            self.model = functions["model_fn"](str(self.folder))
        except Exception as exc:
            raise ModelLoadError(f"model_fn in {path} raised {type(exc).__name__}: {exc}") from exc
        self._labels = {str(label): label for label in self.manifest.labels}

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            output = self._predict_fn(rows, self.model)
        except Exception as exc:
            raise PredictionError(
                f"predict_fn of the custom model raised {type(exc).__name__}: {exc}"
            ) from exc
        return self.normalise(output, len(rows))

    def normalise(self, output: Any, count: int) -> list[dict[str, Any]]:
        """``predict_fn``'s answer as Tidal's: one {label, score, probabilities} per row."""
        if isinstance(output, Mapping) and "predictions" in output:
            output = output["predictions"]
        if hasattr(output, "tolist"):  # numpy arrays, pandas series
            output = output.tolist()
        if not isinstance(output, list | tuple):
            raise PredictionError(
                f"predict_fn returned a {type(output).__name__}; expected a list with one "
                "prediction per row (a label, or a dict with 'label')"
            )
        if len(output) != count:
            raise PredictionError(f"predict_fn returned {len(output)} predictions for {count} rows")
        return [self._one(item) for item in output]

    def _one(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, Mapping):
            label = self._label(item)
            return {"label": label, "score": 1.0, "probabilities": self._onehot(label)}
        if "label" not in item:
            raise PredictionError(
                f"a prediction of predict_fn has no 'label': {str(dict(item))[:120]}"
            )
        label = self._label(item["label"])
        raw = item.get("probabilities")
        if raw is None:
            probabilities = self._onehot(label)
        elif isinstance(raw, Mapping):
            probabilities = {str(self._label(k)): float(v) for k, v in raw.items()}
        else:
            values = raw.tolist() if hasattr(raw, "tolist") else list(raw)
            if len(values) != len(self.manifest.labels):
                raise PredictionError(
                    f"predict_fn gave {len(values)} probabilities for "
                    f"{len(self.manifest.labels)} labels ({', '.join(self._labels)})"
                )
            probabilities = {
                str(lbl): float(p) for lbl, p in zip(self.manifest.labels, values, strict=True)
            }
        score = item.get("score")
        if score is None:
            score = probabilities.get(str(label), 1.0)
        return {"label": label, "score": float(score), "probabilities": probabilities}

    def _label(self, value: Any) -> Any:
        if hasattr(value, "item"):  # numpy scalars
            value = value.item()
        names = [str(value)]
        if isinstance(value, float) and value.is_integer():
            names.append(str(int(value)))  # 1.0 for the label 1
        for name in names:
            if name in self._labels:
                return self._labels[name]
        raise PredictionError(
            f"predict_fn returned the label {value!r}, which is not one of the model's "
            f"labels ({', '.join(self._labels)})"
        )

    def _onehot(self, label: Any) -> dict[str, float]:
        return {name: 1.0 if name == str(label) else 0.0 for name in self._labels}
