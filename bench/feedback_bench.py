"""How fast live quality is: join 100,000 late labels to 100,000 captured records.

    .venv/bin/python bench/feedback_bench.py [--rows 100000] [--repeat 5]

The captured records are built in memory in the capture format (one request of one row each,
three versions, over six hours, three classes); the labels cover 90% of them, in random order,
with 5% labelled twice and 2% naming an inference id never captured. The time of
``tidal.monitoring.feedback.join`` (records and labels as Python dicts in, report out) is the
median of ``--repeat`` runs. Goal: at most 2 s on this machine.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from typing import Any

from tidal.monitoring.feedback import join

CLASSES = ("neg", "neu", "pos")


def build(rows: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    t0 = 1_767_225_600.0
    captured: list[dict[str, Any]] = [
        {
            "inference_id": uuid.UUID(int=rng.getrandbits(128)).hex,
            "row": 0,
            "ts": t0 + i * (6 * 3600 / rows),
            "model": "sentiment",
            "version": str(1 + i % 3),
            "variant": "canary" if i % 3 == 2 else "default",
            "latency_ms": 2.0,
            "input": {"text": "a statement"},
            "output": {"label": rng.choice(CLASSES), "score": 0.9},
        }
        for i in range(rows)
    ]
    labelled = rng.sample(captured, int(rows * 0.9))
    labels: list[dict[str, Any]] = [
        {
            "inference_id": r["inference_id"],
            "row": 0,
            # right 80% of the time
            "label": r["output"]["label"] if rng.random() < 0.8 else rng.choice(CLASSES),
        }
        for r in labelled
    ]
    labels += [dict(x, label=rng.choice(CLASSES)) for x in rng.sample(labels, rows // 20)]
    labels += [
        {"inference_id": uuid.uuid4().hex, "label": "pos"} for _ in range(rows - len(labels))
    ]
    return captured, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    captured, labels = build(args.rows)
    times = []
    report = None
    for _ in range(args.repeat):
        start = time.perf_counter()
        report = join(captured, labels, window_s=3600)
        times.append(time.perf_counter() - start)
    assert report is not None
    seconds = statistics.median(times)
    print(
        json.dumps(
            {
                "bench": "feedback_join",
                "captured": len(captured),
                "labels": report.labels,
                "matched": report.matched,
                "duplicates": report.duplicates,
                "unmatched": report.unmatched,
                "groups": len(report.windows),
                "seconds": round(seconds, 3),
                "goal_s": 2.0,
                "ok": seconds <= 2.0,
            }
        )
    )


if __name__ == "__main__":
    main()
