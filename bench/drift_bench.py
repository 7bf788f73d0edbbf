"""How fast a drift check is on a big window: 1,000,000 captured rows × 50 numeric features.

    .venv/bin/python bench/drift_bench.py [--rows 1000000] [--features 50] [--repeat 5]

A baseline is computed from a training frame (``--train-rows``, 50 features of mixed shapes:
normal, log-normal, integer counts), then two windows of ``--rows`` captured rows, given as a
mapping feature → float64 array (how a Parquet capture reads back), are checked against it:

- ``unshifted``: fresh draws from the training distributions; the verdict must be ``ok``;
- ``shifted``: the same rows with three features moved (f3: mean + 0.5 std, f17: std × 1.5,
  f42: 20% missing values); exactly those three must be reported drifted.

Then the demo's case, small: the tabular example's ``traffic.csv`` (114 rows, ``mean radius``
x 1.5) against the baseline of the demo's v2 (batch-1 and batch-2, 455 rows); reported: the
features the report says drifted, and those whose PSI or score is over the threshold (what a
reader of the report sees flagged). It must name ``mean radius`` alone.

A check is ``WindowStats.from_batch`` + ``compare``; its time is the median of ``--repeat``
runs, its memory the peak of allocations during one more run (tracemalloc, to which numpy
reports its buffers; the process's peak RSS cannot show it: the input arrays, 400 MB, exist
before the timer starts and are not counted). ``incremental`` is the steady state of a
monitor: one new window of a tenth of the rows, merged into the stored statistics of the other
nine tenths, then compared. Goal: a full check in at most 5 s on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tidal.artifact import Feature
from tidal.monitoring.baseline import Baseline
from tidal.monitoring.drift import Status, Thresholds, WindowStats, compare

GOAL_S = 5.0
SHIFTED = {"f3": "mean + 0.5 std", "f17": "std x 1.5", "f42": "20% missing"}


def draw(rng: np.random.Generator, i: int, n: int) -> np.ndarray:
    """Feature ``i``'s training distribution: normal, log-normal or integer counts."""
    if i % 3 == 0:
        return rng.normal(i, 1.0 + i % 5, n)
    if i % 3 == 1:
        return rng.lognormal(0.0, 0.5 + (i % 4) / 4, n)
    return rng.poisson(2 + i % 7, n).astype(np.float64)


def window(features: int, rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"f{i}": draw(rng, i, rows) for i in range(features)}


def shift(batch: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """``batch`` with the SHIFTED features moved (new arrays; the others shared)."""
    rng = np.random.default_rng(seed)
    moved = dict(batch)
    f3, f17 = batch["f3"], batch["f17"]
    moved["f3"] = f3 + 0.5 * f3.std()
    moved["f17"] = f17.mean() + (f17 - f17.mean()) * 1.5
    f42 = batch["f42"].copy()
    f42[rng.random(len(f42)) < 0.2] = np.nan
    moved["f42"] = f42
    return moved


def measure(run: Callable[[], Any], repeat: int) -> dict[str, Any]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "peak_mb": peak / 2**20,
        "report": result,
    }


def demo_case() -> dict[str, Any]:
    """The demo's drift check, as ``tidal demo`` builds it (see the module docstring)."""
    from tidal.examples import DRIFT_FACTOR, EXAMPLES, example_frame

    example = EXAMPLES["tabular"]
    frame = example_frame("tabular").drop(columns=[example.label_column])
    second = int(len(frame) * 0.8)
    features = [Feature(str(c), "number") for c in frame.columns]
    baseline = Baseline.from_frame(frame.iloc[:second], features)
    traffic = frame.iloc[second:].copy()
    feature = str(example.drift_feature)
    traffic[feature] = (traffic[feature] * DRIFT_FACTOR).round(4)
    report = compare(
        baseline, WindowStats.from_batch(baseline, traffic), Thresholds(min_samples=100)
    )
    psi = report.thresholds.psi
    return {
        "rows": report.rows,
        "shifted": feature,
        "drifted": report.drifted,
        "psi_over_threshold": [
            f.name for f in report.features if (f.metrics.get("psi") or 0) > psi
        ],
        "score_over_1": [f.name for f in report.features if f.score > 1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--train-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()

    names = [f"f{i}" for i in range(args.features)]
    train = pd.DataFrame(window(args.features, args.train_rows, seed=1))
    start = time.perf_counter()
    baseline = Baseline.from_frame(train, [Feature(n, "number") for n in names])
    baseline_s = time.perf_counter() - start
    size_kb = len(baseline.to_json()) / 1024
    print(
        f"baseline: {args.train_rows:,} rows × {args.features} features in {baseline_s:.2f} s, "
        f"{size_kb:.0f} KB of JSON"
    )

    unshifted = window(args.features, args.rows, seed=2)
    shifted = shift(unshifted, seed=3)
    tenth = args.rows // 10
    stored = WindowStats.from_batch(baseline, {n: a[tenth:] for n, a in shifted.items()})
    latest = {n: a[:tenth] for n, a in shifted.items()}

    cases = {
        "unshifted": lambda: compare(baseline, WindowStats.from_batch(baseline, unshifted)),
        "shifted": lambda: compare(baseline, WindowStats.from_batch(baseline, shifted)),
        "incremental": lambda: compare(
            baseline, stored.merge(WindowStats.from_batch(baseline, latest))
        ),
    }
    figures = {name: measure(run, args.repeat) for name, run in cases.items()}

    expected = {"unshifted": [], "shifted": sorted(SHIFTED), "incremental": sorted(SHIFTED)}
    failures = []
    print(
        f"\n{'case':<12} {'rows checked':>14} {'median':>8} {'min–max':>13} {'peak mem':>9}  "
        "verdict   drifted"
    )
    for name, fig in figures.items():
        report = fig.pop("report")
        fig["status"], fig["drifted"] = str(report.status), report.drifted
        rows = f"{tenth:,} new" if name == "incremental" else f"{report.rows:,}"
        print(
            f"{name:<12} {rows:>14} {fig['median_s']:>7.2f}s "
            f"{fig['min_s']:>5.2f}–{fig['max_s']:.2f}s {fig['peak_mb']:>7.1f}MB  "
            f"{fig['status']:<9} "
            f"{', '.join(report.drifted) or '-'}"
        )
        want = Status.OK if name == "unshifted" else Status.DRIFTED
        if report.status != want or sorted(report.drifted) != expected[name]:
            failures.append(f"{name}: {report.status}, drifted {report.drifted}")
    full = figures["shifted"]["median_s"]
    print(
        f"\nfull check of {args.rows:,} rows × {args.features} features: {full:.2f} s "
        f"(goal ≤ {GOAL_S:.0f} s: {'met' if full <= GOAL_S else 'MISSED'}); shifted features: "
        + ", ".join(f"{k} ({v})" for k, v in SHIFTED.items())
    )
    demo = demo_case()
    print(
        f"\ndemo case ({demo['rows']} rows, {demo['shifted']} x 1.5, 30 features): drifted "
        f"{', '.join(demo['drifted']) or '-'}; PSI over the threshold: "
        f"{len(demo['psi_over_threshold'])} features; score over 1: {len(demo['score_over_1'])}"
    )
    if demo["drifted"] != [demo["shifted"]] or demo["psi_over_threshold"] != [demo["shifted"]]:
        failures.append(
            f"demo case: drifted {demo['drifted']}, PSI over {demo['psi_over_threshold']}"
        )
    for failure in failures:
        print(f"WRONG VERDICT {failure}")
    if args.json:
        out = {
            "baseline_s": baseline_s,
            "baseline_kb": size_kb,
            "cases": figures,
            "demo_case": demo,
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        args.json.write_text(json.dumps(out, indent=2))
    return 1 if failures or full > GOAL_S else 0


if __name__ == "__main__":
    raise SystemExit(main())
