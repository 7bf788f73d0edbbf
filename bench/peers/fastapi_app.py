"""The plain baseline: FastAPI on uvicorn, Tidal's predictor called in the handler.

    .venv/bin/python bench/peers/fastapi_app.py --model DIR --port PORT [--workers N]

The model folder is a deployed Tidal model (``tidal-model.json`` + its files), loaded with
``tidal.artifact.load_predictor``, the same code Tidal's workers run. ``POST /predict`` takes
``{"instances": [{feature: value, ...}]}`` and answers ``{"predictions": [...]}``. The handler is
``async`` and calls ``predict`` on the event loop: with a CPU-bound model that is the fastest
plain arrangement (a sync handler adds a thread hop per request). ``--workers N`` is uvicorn's
own multi-process mode (FastAPI's documented way to use N cores: N processes sharing the
listening socket, each loading the model).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request

from tidal.artifact import load_predictor

MODEL_VARIABLE = "BENCH_MODEL_DIR"


def build(model: Path) -> FastAPI:
    predictor = load_predictor(model)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"predictions": predictor.predict(body["instances"])}

    return app


def factory() -> FastAPI:
    """The app of one uvicorn worker process (``--workers``): the model from the environment."""
    return build(Path(os.environ[MODEL_VARIABLE]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a deployed Tidal model folder")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args()
    if args.workers == 1:
        uvicorn.run(build(args.model), host="127.0.0.1", port=args.port, log_level="warning")
        return
    os.environ[MODEL_VARIABLE] = str(args.model.resolve())
    uvicorn.run(
        "fastapi_app:factory",
        factory=True,
        app_dir=str(Path(__file__).parent),
        workers=args.workers,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
