"""BentoML services serving Tidal's predictor (run in the peers venv, Tidal's ``src`` on the path).

    BENCH_MODEL_DIR=DIR bentoml serve bentoml_service:Tabular --working-dir bench/peers \
        --host 127.0.0.1 --port PORT

Both load the deployed model with ``tidal.artifact.load_predictor`` in the service's
constructor (BentoML's one worker process) and take ``{"instances": [...]}`` at ``POST
/predict``. ``Tabular`` answers ``{"predictions": [...]}``, one request per call. ``Text`` uses
BentoML's adaptive batching (up to 32 rows in one call; BentoML decides how long to wait): its
answer is the request's own slice of the predictions, a JSON list.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml

from tidal.artifact import load_predictor

MODEL = Path(os.environ.get("BENCH_MODEL_DIR", "."))


@bentoml.service(workers=1)
class Tabular:
    def __init__(self) -> None:
        self.predictor = load_predictor(MODEL)

    @bentoml.api
    def predict(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        return {"predictions": self.predictor.predict(instances)}


@bentoml.service(workers=1)
class Text:
    def __init__(self) -> None:
        self.predictor = load_predictor(MODEL)

    @bentoml.api(batchable=True, max_batch_size=32)
    def predict(self, instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.predictor.predict(instances)
