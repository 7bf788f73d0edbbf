"""How fast Tidal is where people wait: ``import tidal``, and a file landing → its model serving.

    .venv/bin/python bench/pipeline_bench.py [--rows 1000 5000 10000] [--json out.json]

1. ``import tidal`` in a fresh interpreter: median of 7 runs of ``python -c "import tidal"``
   minus the median of 7 runs of ``python -c pass``, the heavy modules it pulled in (there must
   be none) and the slowest imports ``-X importtime`` names. Goal: at most 0.3 s.
2. For the tabular example, resampled to each row count: a controller thread and an endpoint
   run in this process, as in ``tidal demo`` (``tidal.demo``). Two files land one after the
   other in a fresh workspace; the first makes v1 (it also creates the MLflow database, the
   schema and the holdout, with no champion to compare against), the second makes v2, the
   steady state. For each: landing → endpoint answering with the new version, split into the
   pickup delay (landing → run start), the pipeline steps (from the decision record), the
   runner's own bookkeeping, and the serving delay (run end → ``/ping`` names the version).
   Goal: at most 10 s for files of up to 10k rows.

The modules the steps import lazily (pandas, scikit-learn, MLflow...) are imported once before
the first landing and timed on their own: a fresh ``tidal up`` pays that once, on its first file.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEAVY = ("torch", "mlflow", "sklearn", "pandas", "numpy")
STEPS = ("validate", "prepare", "train", "evaluate", "register", "deploy")
DEFAULT_ROWS = (1000, 5000, 10000)
IMPORT_RUNS = 7
IMPORT_GOAL_S = 0.3
SERVING_GOAL_S = 10.0
SERVING_GOAL_MAX_ROWS = 10_000
NOISE = 0.01  # Gaussian noise added to each numeric column, as a share of its standard deviation
OVERRIDES = {
    "controller": {"poll_interval_s": 0.2},
    "serving": {"port": 0, "reload_interval_s": 0.1},
}
# What the pipeline steps import on first use, in the controller's process.
LAZY_IMPORTS = (
    "pandas",
    "sklearn.ensemble",
    "skops.io",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "alembic.command",
    "httpx",  # the bench's own /ping client
    "httpcore",
    "tidal.data.validate",
    "tidal.data.prepare",
    "tidal.data.schema",
    "tidal.artifact",
    "tidal.evaluation.gate",
    "tidal.evaluation.metrics",
    "tidal.registry",
    "tidal.deploy",
    "tidal.training.executors.local",
    "tidal.training.recipes.tabular",
)


# -- the machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_before": _loadavg(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def _loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages: other work on the machine skews every figure."""
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


# -- 1. import tidal --------------------------------------------------------------------------


def import_cost(runs: int = IMPORT_RUNS) -> dict[str, Any]:
    """Seconds ``import tidal`` adds to a fresh interpreter, and what it imports."""
    python = sys.executable
    with_tidal, bare = [], []
    for _ in range(runs):  # interleaved, so a busy moment hits both alike
        with_tidal.append(_wall([python, "-c", "import tidal"]))
        bare.append(_wall([python, "-c", "pass"]))
    probe = (
        "import json, sys, tidal; "
        "print(json.dumps(sorted({m.partition('.')[0] for m in sys.modules})))"
    )
    top = json.loads(_output([python, "-c", probe]))
    third_party = [
        m
        for m in top
        if m not in sys.stdlib_module_names and not m.startswith("_") and m != "tidal"
    ]
    seconds = statistics.median(with_tidal) - statistics.median(bare)
    return {
        "seconds": round(max(seconds, 0.0), 4),
        "runs_import_s": [round(s, 4) for s in with_tidal],
        "runs_bare_s": [round(s, 4) for s in bare],
        "heavy_imported": [m for m in HEAVY if m in top],
        "third_party_imported": third_party,
        "slowest": _slowest_imports(python),
        "goal_s": IMPORT_GOAL_S,
    }


def _wall(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - started


def _output(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _slowest_imports(python: str, n: int = 5) -> list[tuple[str, float]]:
    """``-X importtime``: ``tidal`` and what it imports directly, slowest first (cumulative
    seconds); the interpreter's own start-up imports are left out."""
    err = subprocess.run(
        [python, "-X", "importtime", "-c", "import tidal"],
        check=True,
        capture_output=True,
        text=True,
    ).stderr
    children: list[tuple[str, float]] = []
    for line in err.splitlines():  # children are listed before the module importing them
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name, seconds = parts[2].rstrip(), int(parts[1]) / 1e6
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        if depth == 1:
            children.append((name.strip(), seconds))
        elif depth == 0:
            if name.strip() == "tidal":
                return sorted([("tidal", seconds), *children], key=lambda x: -x[1])[:n]
            children = []
    return []


# -- 2. landing → serving ---------------------------------------------------------------------


def warm_imports() -> float:
    """Import what the steps import on first use; returns the seconds it took."""
    started = time.perf_counter()
    for name in LAZY_IMPORTS:
        importlib.import_module(name)
    return time.perf_counter() - started


def synthetic_table(rows: int, seed: int) -> Any:
    """``rows`` rows of breast_cancer drawn with replacement, numeric columns slightly noised."""
    import numpy as np

    from tidal.examples import EXAMPLES, example_frame

    frame = example_frame("tabular")
    label = EXAMPLES["tabular"][1]
    out = frame.sample(n=rows, replace=True, random_state=seed).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    for column in out.columns.drop(label):
        out[column] = out[column] + rng.normal(0.0, NOISE * frame[column].std(), rows)
    return out


@contextlib.contextmanager
def running(ws: Any, profile: cProfile.Profile | None = None) -> Iterator[tuple[Any, str]]:
    """A controller thread and an endpoint on a free port, as ``tidal demo`` runs them."""
    from tidal.cli import build_endpoint
    from tidal.controller import Controller
    from tidal.serving.server import BackgroundServer

    server = BackgroundServer(build_endpoint(ws), "127.0.0.1", 0).start()
    controller = Controller(ws)
    controller.source.settle_s = 0.0  # files land atomically here, as in the demo
    stop = threading.Event()
    target = controller.serve_forever
    if profile is not None:

        def target(stop: threading.Event) -> None:
            profile.runcall(controller.serve_forever, stop)

    loop = threading.Thread(target=target, args=(stop,), daemon=True)
    loop.start()
    try:
        yield controller, server.url
    finally:
        stop.set()
        loop.join(timeout=60)
        server.stop()


def land(
    ws: Any, controller: Any, url: str, path: Path, label: str, timeout_s: float
) -> dict[str, Any]:
    """Land ``path`` in incoming/ and time it until the endpoint serves its version."""
    from tidal.demo import _wait_record, _wait_served

    modules = set(sys.modules)
    landed = time.time()
    _, sha = controller.ingest(path)
    record = _wait_record(ws, sha, timeout_s)
    served_s = None
    if record["decision"] == "promoted":
        served_s = _wait_served(url, record["version"], landed, timeout_s)
    run = ws.state.run_by_sha(ws.model_name, sha)
    started = run.started_at or landed
    finished = run.finished_at or started
    steps = {s: record["steps"].get(s) for s in STEPS}
    run_s = finished - started
    return {
        "landing": label,
        "file": path.name,
        "decision": record["decision"],
        "version": record.get("version"),
        "landing_to_serving_s": served_s,
        "pickup_s": round(started - landed, 3),
        "steps_s": steps,
        "bookkeeping_s": round(run_s - sum(v or 0.0 for v in steps.values()), 3),
        "run_s": round(run_s, 3),
        "serving_s": round(landed + served_s - finished, 3) if served_s is not None else None,
        "first_imports": sorted({".".join(m.split(".")[:2]) for m in set(sys.modules) - modules}),
        "reasons": record.get("reasons"),
    }


def bench_size(rows: int, seed: int, timeout_s: float, keep: bool, profile: Any) -> list[dict]:
    """v1 then v2 in a fresh workspace; one result per landing."""
    from tidal.examples import init_workspace
    from tidal.workspace import Workspace

    folder = Path(tempfile.mkdtemp(prefix=f"tidal-bench-{rows}-"))
    results = []
    try:
        init_workspace(folder, example="tabular", force=True)
        ws = Workspace.open(folder, overrides=OVERRIDES)
        files = []
        for n, label in enumerate(("v1 (first)", "v2 (steady)")):
            path = folder / "bench-data" / f"rows-{rows}-{n + 1}.csv"
            path.parent.mkdir(exist_ok=True)
            synthetic_table(rows, seed + n).to_csv(path, index=False)
            files.append((path, label))
        with running(ws, profile) as (controller, url):
            for path, label in files:
                result = land(ws, controller, url, path, label, timeout_s)
                results.append({"rows": rows, **result})
    finally:
        if keep:
            print(f"kept workspace {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return results


# -- output -----------------------------------------------------------------------------------


def _s(value: float | None, width: int = 8) -> str:
    return f"{value:>{width}.2f}" if value is not None else f"{'-':>{width}}"


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']} ({m['platform']})")
    print(
        f"load average (1, 5, 15 min): {m['loadavg_before']} before, {m['loadavg_after']} after"
        " (near or above the CPU count, other work skews the figures);"
        f" OMP_NUM_THREADS={m['omp_num_threads'] or 'unset'}"
    )
    print()
    if report["import"] is not None:
        print_import(report["import"])
    print(
        f"first-use imports of the steps (pandas, scikit-learn, MLflow...): "
        f"{report['warm_imports_s']:.2f} s, paid once per process, before the first landing"
    )
    print()
    print_landings(report["landings"])
    print(f"bench took {report['seconds']:.1f} s")


def print_import(imp: dict[str, Any]) -> None:
    verdict = "ok" if imp["seconds"] <= IMPORT_GOAL_S and not imp["heavy_imported"] else "MISSED"
    print(
        f"import tidal: {imp['seconds']:.3f} s (median of {IMPORT_RUNS} fresh interpreters, "
        f"minus 'python -c pass'); goal <= {IMPORT_GOAL_S} s: {verdict}"
    )
    print(f"  heavy modules imported: {', '.join(imp['heavy_imported']) or 'none'}")
    print(f"  third-party modules imported: {', '.join(imp['third_party_imported']) or 'none'}")
    slowest = ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in imp["slowest"])
    print(f"  slowest imports (cumulative): {slowest}")
    print()


def print_landings(landings: list[dict[str, Any]]) -> None:
    header = (
        f"{'rows':>6}  {'landing':<12}{'decision':<10}{'total':>8}{'pickup':>8}"
        + "".join(f"{s:>9}" for s in STEPS)
        + f"{'other':>8}{'serving':>9}  goal"
    )
    print("landing → serving, seconds (other: the runner's bookkeeping between steps)")
    print(header)
    print("-" * len(header))
    for r in landings:
        total = r["landing_to_serving_s"]
        goal = "-"
        if total is not None and r["rows"] <= SERVING_GOAL_MAX_ROWS:
            goal = "ok" if total <= SERVING_GOAL_S else "MISSED"
        print(
            f"{r['rows']:>6}  {r['landing']:<12}{r['decision']:<10}{_s(total)}{_s(r['pickup_s'])}"
            + "".join(_s(r["steps_s"][s], 9) for s in STEPS)
            + f"{_s(r['bookkeeping_s'])}{_s(r['serving_s'], 9)}  {goal}"
        )
    print()
    print(
        f"goal: <= {SERVING_GOAL_S:g} s from landing to serving for files of up to "
        f"{SERVING_GOAL_MAX_ROWS:,} rows; v1 also creates the MLflow database, schema and holdout"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=list(DEFAULT_ROWS),
        help="rows per landed file (default: 1000 5000 10000)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling and noise")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per landing")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspaces")
    parser.add_argument(
        "--profile",
        type=Path,
        help="cProfile the controller thread into this file (pstats) and print its top calls",
    )
    parser.add_argument(
        "--omp-threads",
        type=int,
        help="set OMP_NUM_THREADS for this process and the training jobs (default: as inherited)",
    )
    parser.add_argument("--skip-import", action="store_true", help="skip the import-time figure")
    args = parser.parse_args(argv)

    if args.omp_threads is not None:  # before numpy/scikit-learn load; training jobs inherit it
        os.environ["OMP_NUM_THREADS"] = str(args.omp_threads)
    started = time.monotonic()
    report: dict[str, Any] = {"machine": machine()}
    report["import"] = import_cost() if not args.skip_import else None
    report["warm_imports_s"] = round(warm_imports(), 3)
    profile = cProfile.Profile() if args.profile else None
    report["landings"] = []
    for i, rows in enumerate(args.rows):
        report["landings"] += bench_size(rows, args.seed + 10 * i, args.timeout, args.keep, profile)
    report["goals"] = {
        "import_s": IMPORT_GOAL_S,
        "landing_to_serving_s": SERVING_GOAL_S,
        "max_rows": SERVING_GOAL_MAX_ROWS,
    }
    report["seconds"] = round(time.monotonic() - started, 1)
    report["machine"]["loadavg_after"] = _loadavg()

    print_report(report)
    if profile is not None:
        profile.dump_stats(args.profile)
        print(f"\ncontroller thread profile in {args.profile}; top calls by cumulative time:")
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(25)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
