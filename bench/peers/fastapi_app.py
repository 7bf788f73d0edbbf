"""The plain baseline: FastAPI on uvicorn, one process, Tidal's predictor called in the handler.

    .venv/bin/python bench/peers/fastapi_app.py --model DIR --port PORT

The model folder is a deployed Tidal model (``tidal-model.json`` + its files), loaded with
``tidal.artifact.load_predictor``, the same code Tidal's workers run. ``POST /predict`` takes
``{"instances": [{feature: value, ...}]}`` and answers ``{"predictions": [...]}``. The handler is
``async`` and calls ``predict`` on the event loop: with one process and a CPU-bound model that is
the fastest plain arrangement (a sync handler adds a thread hop per request).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request

from tidal.artifact import load_predictor


def build(model: Path) -> FastAPI:
    predictor = load_predictor(model)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"predictions": predictor.predict(body["instances"])}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a deployed Tidal model folder")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
