"""LitServe serving Tidal's predictor: one inference worker process, optional batching.

    .bench/peers-venv/bin/python bench/peers/litserve_app.py --model DIR --port PORT [--batch 32]
        [--workers N]

Runs in the peers venv with Tidal's ``src`` on ``PYTHONPATH``: ``setup`` loads the deployed
model with ``tidal.artifact.load_predictor`` inside LitServe's worker. ``POST /predict`` takes
``{"instances": [...]}``. With ``--batch N`` LitServe gathers up to N requests (waiting at most
``--batch-timeout`` seconds) and ``predict`` gets their row lists together. ``--workers N`` is
LitServe's ``workers_per_device`` (N inference processes on the CPU "device") with as many API
server processes, its documented way to use N cores.
"""

import argparse
from pathlib import Path
from typing import Any

import litserve as ls

from tidal.artifact import load_predictor


class TidalAPI(ls.LitAPI):
    def __init__(self, model: Path, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model = model

    def setup(self, device: str) -> None:
        self.predictor = load_predictor(self.model)

    # no annotations on these two: LitServe reads them to type the route's body and answer
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return request["instances"]

    def predict(self, x: Any) -> Any:
        if self.max_batch_size == 1:
            return self.predictor.predict(x)
        # batched: one row list per request, answered in the same order
        sizes = [len(rows) for rows in x]
        flat = self.predictor.predict([row for rows in x for row in rows])
        out, start = [], 0
        for size in sizes:
            out.append(flat[start : start + size])
            start += size
        return out

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        return {"predictions": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a deployed Tidal model folder")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1, help="max_batch_size (1: no batching)")
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="seconds")
    parser.add_argument("--workers", type=int, default=1, help="workers_per_device")
    args = parser.parse_args()
    api = TidalAPI(args.model, args.batch, args.batch_timeout if args.batch > 1 else 0.0)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=args.workers,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
