"""A training script written for SageMaker's scikit-learn / PyTorch estimators, run by Tidal as is.

It reads what SageMaker gives a training container: hyperparameters as ``--name value``
arguments, the data channels as folders named by ``SM_CHANNEL_TRAIN`` / ``SM_CHANNEL_TEST``,
and writes the model into ``SM_MODEL_DIR``. In Tidal the channels hold JSON Lines files, one
record per line with the feature columns and the label column.

    --export skops    (default) writes model.skops: Tidal serves it with its scikit-learn flavor
    --export numpy    writes model.npz plus code/inference.py: served by that inference.py,
                      the way a SageMaker PyTorch model ships its own inference code

Run it by hand the SageMaker way:
    SM_MODEL_DIR=/tmp/model SM_CHANNEL_TRAIN=data/train python train.py --label_column diagnosis
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def read_channel(folder: str | None) -> pd.DataFrame | None:
    """Every JSON Lines file of a channel folder as one frame (None if there is none)."""
    if not folder or not Path(folder).is_dir():
        return None
    records = [
        json.loads(line)
        for path in sorted(Path(folder).iterdir())
        if path.is_file()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return pd.DataFrame.from_records(records) if records else None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    # hyperparameters: training.params in tidal.yaml, the estimator's hyperparameters={...}
    parser.add_argument("--epochs", type=int, default=200, help="solver iterations (max_iter)")
    parser.add_argument("--C", type=float, default=1.0, help="inverse regularisation strength")
    parser.add_argument("--label_column", "--label-column", default="label")
    parser.add_argument("--export", choices=["skops", "numpy"], default="skops")
    # the container's environment, the SageMaker way
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN"))
    parser.add_argument("--test", default=os.environ.get("SM_CHANNEL_TEST"))
    parser.add_argument("--output-data-dir", default=os.environ.get("SM_OUTPUT_DATA_DIR", "output"))
    args, _ = parser.parse_known_args()
    return args


def main() -> None:
    args = parse_args()
    train = read_channel(args.train)
    if train is None or train.empty:
        raise SystemExit(f"no training data in {args.train!r} (SM_CHANNEL_TRAIN)")
    label = args.label_column
    features = [c for c in train.columns if c != label]  # the record's order: the schema's
    model = Pipeline(
        [
            ("scale", StandardScaler()),
            ("model", LogisticRegression(C=args.C, max_iter=args.epochs)),
        ]
    )
    # fitted on arrays, not frames: a server hands the model rows in this feature order
    model.fit(train[features].to_numpy(dtype=float), train[label].to_numpy())

    metrics = {"train_accuracy": model.score(train[features].to_numpy(dtype=float), train[label])}
    test = read_channel(args.test)
    if test is not None and not test.empty:
        metrics["test_accuracy"] = model.score(test[features].to_numpy(dtype=float), test[label])
    print(json.dumps(metrics))
    Path(args.output_data_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_data_dir) / "metrics.json").write_text(json.dumps(metrics))

    model_dir = Path(args.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    if args.export == "skops":
        import skops.io as sio  # slow to import (~5 s): only when it is used

        sio.dump(model, model_dir / "model.skops")
        return
    scaler, linear = model.named_steps["scale"], model.named_steps["model"]
    np.savez(
        model_dir / "model.npz",
        mean=scaler.mean_,
        scale=scaler.scale_,
        coef=linear.coef_,
        intercept=linear.intercept_,
        classes=np.asarray(linear.classes_, dtype=str),
        features=np.asarray(features, dtype=str),
    )
    code = model_dir / "code"
    code.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).with_name("inference.py"), code / "inference.py")


if __name__ == "__main__":
    main()
