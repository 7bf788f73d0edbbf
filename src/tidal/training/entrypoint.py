"""Entry point of training jobs for built-in recipes: ``python -m tidal.training.entrypoint``.

It is an ordinary SageMaker-style training script: it reads its channels and hyperparameters
from ``SM_*`` variables, trains the recipe named in ``SM_HPS["recipe"]`` and writes the model
folder, manifest included, into ``SM_MODEL_DIR``. Progress and metrics go to stdout as
``@tidal {json}`` lines that the executor streams back.

Hyperparameters it reads besides the recipe's ``params``: ``seed``, ``schema``, ``checkpoint``
(``every_steps``, ``every_s``, ``keep``), ``device`` and ``threads``; they reach the recipe in
``TrainContext.extra``. Checkpoints live in ``SM_CHECKPOINT_DIR``, which the executor syncs with
the object store.

SIGTERM (a spot interruption, ``tidal`` stopping the job) sets a stop flag: a recipe that
checkpoints writes one at once and raises ``RetryableError``, and the job exits 75
(``EXIT_RETRY``) so the controller runs it again; the next attempt resumes from the checkpoint.
The final ``metrics`` event carries ``resumed_from_step`` (null for a run that was not resumed).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from tidal.errors import EXIT_INTERNAL, EXIT_USAGE, RetryableError, TidalError

RECIPES = {
    "tabular": "tidal.training.recipes.tabular:TabularRecipe",
    "text": "tidal.training.recipes.text:TextRecipe",
}


def emit(event: dict[str, Any]) -> None:
    print("@tidal " + json.dumps(event), flush=True)


def read_channel(folder: str | None) -> Any:
    import pandas as pd

    from tidal.data.prepare import from_jsonl

    if not folder or not Path(folder).is_dir():
        return None
    parts = [from_jsonl(p.read_bytes()) for p in sorted(Path(folder).iterdir()) if p.is_file()]
    return pd.concat(parts, ignore_index=True) if parts else None


def main() -> int:
    import importlib

    from tidal.artifact import Feature, Manifest, write_manifest
    from tidal.training.recipes.base import TrainContext

    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("requested", True))
    hps = json.loads(os.environ["SM_HPS"])
    schema = hps["schema"]
    features = [Feature(**f) for f in schema["features"]]
    recipe_name = hps["recipe"]
    module, _, cls_name = RECIPES[recipe_name].partition(":")
    recipe_cls = getattr(importlib.import_module(module), cls_name)
    recipe = recipe_cls(
        hps.get("params", {}),
        features=features,
        label_column=schema["label_column"],
        labels=schema["labels"],
    )
    recipe.setup()
    if stop["requested"]:
        raise RetryableError("asked to stop (SIGTERM) before training started")
    train = read_channel(os.environ.get("SM_CHANNEL_TRAIN"))
    valid = read_channel(os.environ.get("SM_CHANNEL_TEST"))
    if train is None or not len(train):
        raise TidalError("the train channel is empty; nothing to train on")
    model_dir = Path(os.environ["SM_MODEL_DIR"])
    ctx = TrainContext(
        seed=int(hps.get("seed", 42)),
        checkpoint_dir=Path(os.environ["SM_CHECKPOINT_DIR"])
        if "SM_CHECKPOINT_DIR" in os.environ
        else None,
        report=emit,
        stop_requested=lambda: stop["requested"],
        extra={
            "checkpoint": hps.get("checkpoint") or {},
            "device": hps.get("device", "auto"),
            "threads": hps.get("threads"),
        },
    )
    emit({"event": "started", "rows": len(train), "recipe": recipe_name})
    metrics = recipe.fit(train, valid, model_dir, ctx)
    manifest = Manifest(
        flavor=recipe.flavor,
        task=schema.get("task", "tabular"),
        features=features,
        labels=schema["labels"],
        label_column=schema["label_column"],
        params=hps.get("params", {}),
    )
    write_manifest(model_dir, manifest)
    resumed = ctx.extra.get("resumed_from_step")
    emit({"event": "metrics", "metrics": metrics, "resumed_from_step": resumed})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TidalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception:
        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)
    except KeyboardInterrupt:
        sys.exit(EXIT_USAGE)
