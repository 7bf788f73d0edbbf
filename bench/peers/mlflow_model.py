"""Save a deployed Tidal tabular model as an MLflow model, for ``mlflow models serve``.

    .venv/bin/python bench/peers/mlflow_model.py --model DIR --out MLFLOW_DIR

MLflow serves its own format, so the same scikit-learn estimator (read from the Tidal model's
skops file by ``tidal.artifact.load_predictor``) is saved with ``mlflow.sklearn.save_model``:
skops serialization, a column signature from the model's features (so ``{"instances":
[{feature: value}]}`` becomes a DataFrame in feature order) and ``predict_proba`` as the
pyfunc's predict, like Tidal's answer. Loading a skops model needs
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true`` in the server's environment.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def save(model: Path, out: Path) -> None:
    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    import skops.io as sio
    from mlflow.models import infer_signature

    from tidal.artifact import load_predictor

    predictor = load_predictor(model)
    names = predictor.manifest.feature_names
    example = pd.DataFrame(np.zeros((1, len(names))), columns=names)
    skops_file = next(model.glob("*.skops"))
    mlflow.sklearn.save_model(
        predictor.model,
        str(out),
        serialization_format="skops",
        skops_trusted_types=sio.get_untrusted_types(file=skops_file),
        signature=infer_signature(example, predictor.model.predict_proba(example.to_numpy())),
        pyfunc_predict_fn="predict_proba",
        pip_requirements=[],  # skip MLflow's requirement inference (a slow subprocess)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a deployed Tidal model folder")
    parser.add_argument("--out", type=Path, required=True, help="the MLflow model folder to write")
    args = parser.parse_args()
    save(args.model, args.out)


if __name__ == "__main__":
    main()
