"""The tabular recipe: scikit-learn classifiers saved with skops, never pickle.

Parameters (``training.params`` in tidal.yaml):
    model: hist_gradient_boosting (default) | logistic_regression | random_forest
    any other key is passed to the estimator (e.g. max_iter, learning_rate, C, n_estimators)

Numeric features go in as floats (missing values allowed for gradient boosting, imputed for the
others); string features are encoded (ordinal for trees, one-hot for logistic regression), with
unseen categories mapped to "unknown" rather than failing at serving time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tidal.errors import ModelLoadError, UsageError
from tidal.training.recipes.base import Predictor, Recipe, TrainContext

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from tidal.artifact import Feature

MODEL_FILE = "model.skops"
MODELS = ("hist_gradient_boosting", "logistic_regression", "random_forest")

# Types the tabular recipe writes; a file needing anything else is refused, not loaded.
TRUSTED_TYPES = frozenset(
    {
        "builtins.slice",
        "numpy.dtype",
        "numpy.ndarray",
        "numpy.float64",
        "numpy.int64",
        "numpy.str_",
        "numpy.random._mt19937.MT19937",
        "numpy.random.mtrand.RandomState",
        "sklearn._loss.link.Interval",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.MultinomialLogit",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn.compose._column_transformer.ColumnTransformer",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.impute._base.SimpleImputer",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._encoders.OneHotEncoder",
        "sklearn.preprocessing._encoders.OrdinalEncoder",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._tree.Tree",
        "sklearn.utils._bunch.Bunch",
    }
)


def _is_categorical(feature: Feature) -> bool:
    return feature.type == "string"


def to_matrix(rows: list[dict[str, Any]], features: list[Feature]) -> np.ndarray:
    """Rows of feature → value as the 2-D array the estimator was fitted on."""
    import numpy as np

    if not any(_is_categorical(f) for f in features):
        return np.array(
            [[np.nan if r[f.name] is None else r[f.name] for f in features] for r in rows],
            dtype=np.float64,
        )
    out = np.empty((len(rows), len(features)), dtype=object)
    for j, f in enumerate(features):
        for i, r in enumerate(rows):
            value = r[f.name]
            if _is_categorical(f):
                out[i, j] = "" if value is None else str(value)
            else:
                out[i, j] = np.nan if value is None else float(value)
    return out


def frame_to_matrix(frame: pd.DataFrame, features: list[Feature]) -> np.ndarray:
    return to_matrix(frame[[f.name for f in features]].to_dict("records"), features)


class TabularRecipe(Recipe):
    name: ClassVar[str] = "tabular"
    flavor: ClassVar[str] = "sklearn"

    def build(self) -> Any:
        from sklearn.compose import ColumnTransformer
        from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

        params = dict(self.params)
        kind = params.pop("model", "hist_gradient_boosting")
        seed = params.pop("random_state", params.pop("seed", 42))
        if kind not in MODELS:
            raise UsageError(
                f"unknown tabular model {kind!r}", hint=f"training.params.model is one of {MODELS}"
            )
        cat = [i for i, f in enumerate(self.features) if _is_categorical(f)]
        num = [i for i, f in enumerate(self.features) if not _is_categorical(f)]
        try:
            if kind == "hist_gradient_boosting":
                model = HistGradientBoostingClassifier(random_state=seed, **params)
                if not cat:
                    return model
                encode = OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1
                )
                prep = ColumnTransformer([("cat", encode, cat)], remainder="passthrough")
                model.set_params(categorical_features=list(range(len(cat))))
                return Pipeline([("prep", prep), ("model", model)])
            if kind == "random_forest":
                estimator: Any = RandomForestClassifier(random_state=seed, **params)
            else:
                estimator = LogisticRegression(max_iter=params.pop("max_iter", 1000), **params)
            numeric = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())])
            parts: list[tuple[str, Any, list[int]]] = [("num", numeric, num)] if num else []
            if cat:
                parts.append(("cat", OneHotEncoder(handle_unknown="ignore"), cat))
            return Pipeline([("prep", ColumnTransformer(parts)), ("model", estimator)])
        except TypeError as exc:
            raise UsageError(f"bad parameter for {kind}: {exc}") from exc

    def fit(
        self, train: pd.DataFrame, valid: pd.DataFrame | None, model_dir: Path, ctx: TrainContext
    ) -> dict[str, float]:
        import numpy as np
        import skops.io as sio

        x = frame_to_matrix(train, self.features)
        y = train[self.label_column].to_numpy()
        model = self.build()
        ctx.progress(0, 1)
        model.fit(x, y)
        ctx.progress(1, 1)
        metrics = {"train_accuracy": float(np.mean(model.predict(x) == y))}
        if valid is not None and len(valid):
            xv = frame_to_matrix(valid, self.features)
            yv = valid[self.label_column].to_numpy()
            metrics["valid_accuracy"] = float(np.mean(model.predict(xv) == yv))
        sio.dump(model, model_dir / MODEL_FILE)
        return metrics


class TabularPredictor(Predictor):
    preload = (
        "skops.io",
        "sklearn.ensemble",
        "sklearn.linear_model",
        "sklearn.pipeline",
        "sklearn.preprocessing",
        "threadpoolctl",
    )

    def setup(self) -> None:
        import skops.io as sio

        path = self.folder / MODEL_FILE
        needed = set(sio.get_untrusted_types(file=path))
        unexpected = sorted(needed - TRUSTED_TYPES)
        if unexpected:
            raise ModelLoadError(
                f"{path} needs types outside Tidal's allow-list: {', '.join(unexpected)}",
                hint="only models written by the tabular recipe are loaded",
            )
        self.model = sio.load(path, trusted=sorted(needed))
        # small batches are slower with an OpenMP team than without; one thread per process
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="openmp")
        self.classes = [_native(c) for c in self.model.classes_]

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        proba = self.model.predict_proba(to_matrix(rows, self.manifest.features))
        best = proba.argmax(axis=1)
        out = []
        for i, row_proba in enumerate(proba.tolist()):
            label = self.classes[best[i]]
            out.append(
                {
                    "label": label,
                    "score": row_proba[best[i]],
                    "probabilities": {
                        str(c): p for c, p in zip(self.classes, row_proba, strict=True)
                    },
                }
            )
        return out


def _native(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
