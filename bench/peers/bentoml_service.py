"""BentoML services serving Tidal's predictor (run in the peers venv, Tidal's ``src`` on the path).

    BENCH_MODEL_DIR=DIR bentoml serve bentoml_service:Tabular --working-dir bench/peers \
        --host 127.0.0.1 --port PORT

Both load the deployed model with ``tidal.artifact.load_predictor`` in the service's
constructor (BentoML's one worker process) and take ``{"instances": [...]}`` at ``POST
/predict``. ``Tabular`` answers ``{"predictions": [...]}``, one request per call. ``Text`` uses
BentoML's adaptive batching (up to 32 rows in one call; BentoML decides how long to wait): its
answer is the request's own slice of the predictions, a JSON list. ``TabularBatched`` is
``Tabular`` with the same adaptive batching (up to 64 rows). ``BENCH_WORKERS`` sets every
service's worker processes (BentoML's documented way to use N cores; default 1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml

from tidal.artifact import load_predictor

MODEL = Path(os.environ.get("BENCH_MODEL_DIR", "."))
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))


@bentoml.service(workers=WORKERS)
class Tabular:
    def __init__(self) -> None:
        self.predictor = load_predictor(MODEL)

    @bentoml.api
    def predict(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        return {"predictions": self.predictor.predict(instances)}


@bentoml.service(workers=WORKERS)
class Text:
    def __init__(self) -> None:
        self.predictor = load_predictor(MODEL)

    @bentoml.api(batchable=True, max_batch_size=32)
    def predict(self, instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.predictor.predict(instances)


@bentoml.service(workers=WORKERS)
class TabularBatched:
    def __init__(self) -> None:
        self.predictor = load_predictor(MODEL)

    @bentoml.api(batchable=True, max_batch_size=64)
    def predict(self, instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.predictor.predict(instances)
