"""Tidal's endpoint beside its peers: same model, same machine, same load generator, one run.

    .venv/bin/python bench/serving_bench.py [--quick] [--duration 8] [--only tidal,fastapi]

Peers, each serving the model Tidal trained and deployed (bench/peers/ has their apps):

- **fastapi**: a plain FastAPI + uvicorn app calling Tidal's predictor in process.
- **litserve**, **bentoml**: the same predictor wrapped in a LitAPI / a BentoML service, run from
  a separate venv (``.bench/peers-venv``, created here; versions pinned by ``constraints.txt``
  where they agree, so the model loads with the same scikit-learn, skops and torch).
- **mlflow** (tabular only): ``mlflow models serve`` of the same estimator saved with
  ``mlflow.sklearn`` (skops), MLflow's own format.
- **tidal**: ``tidal serve --workspace W --port P``, as a user starts it.

Load is wrk (one thread, keep-alive connections), POSTing a single-row JSON body
``{"instances": [{...}]}`` for ``--duration`` seconds per concurrency level after a warm-up;
p50/p99 latency and requests/s come from wrk's own histogram. Also measured per server:
process launch → first successful answer (median of ``--launches``), and the memory of its
whole process tree (RSS, USS, PSS) after the load. For Tidal, with ``idle_timeout_s`` = 2: the
cold start from zero (its workers gone, the endpoint up → one request answered; median of
``--cold-repeats``) and the memory of what stays up once every variant is at zero.

Suites: **tabular** (the breast-cancer example's gradient-boosting model; c = 1, 16, 64) and
**text** (a MiniLM classifier fine-tuned by Tidal for one epoch on ``--text-rows`` reviews;
c = 1, 32; LitServe and BentoML with their batching on). Results: a markdown table with every
figure, its ratio to the best peer and each goal's verdict, printed and written with the JSON
to ``bench/results/serving-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from peers.harness import Server, Spec, command, get, post, running, wrk
from peers.install import PEERS_VENV, ensure_peers_venv, ensure_wrk
from peers.report import goals, markdown

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
PEERS = ROOT / "bench" / "peers"
RESULTS = ROOT / "bench" / "results"

TABULAR_LEVELS = (1, 16, 64)
TEXT_LEVELS = (1, 32)
TIDAL_COLD_IDLE_S = 2.0  # serving.idle_timeout_s of the instance whose cold starts are timed


@dataclass
class Settings:
    duration_s: int = 8
    warmup_s: int = 2
    launches: int = 2
    cold_repeats: int = 5
    text_rows: int = 300
    start_timeout_s: float = 180.0
    peer_threads: int = 1  # compute threads per peer process, as Tidal's worker_threads
    tuned: bool = True  # also each peer in its best documented configuration on every core
    only: set[str] | None = None
    tidal_env: dict[str, str] = field(default_factory=dict)


# -- the machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": _first_line([shutil.which("wrk") or "wrk", "--version"]),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def _first_line(cmd: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (done.stdout + done.stderr).strip().splitlines()[0]
    return "?"


# -- the models, trained and deployed by Tidal ------------------------------------------------


@dataclass
class Model:
    kind: str  # tabular | text
    workspace: Path
    folder: Path  # the deployed model folder every peer serves
    body: Path  # the request body wrk sends
    version: str
    train_s: float
    description: str
    mlflow: Path | None = None


def tidal_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    done = subprocess.run(
        [str(BIN / "tidal"), *args],
        capture_output=True,
        text=True,
        env=os.environ | (env or {}),
        timeout=timeout,
    )
    if done.returncode != 0:
        raise SystemExit(f"tidal {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def deploy(root: Path, kind: str, text_rows: int) -> Model:
    """``tidal init`` an example workspace, ``tidal run`` one file: a deployed v1."""
    ws = root / kind
    example = "tabular" if kind == "tabular" else "sentiment"
    tidal_cli("init", str(ws), "--example", example)
    data = ws / "data" / "batch-1.csv"
    env: dict[str, str] = {}
    if kind == "text":  # a few hundred rows, one epoch: the gate's thresholds would reject it
        rows = _read_csv(data)
        data = ws / "data" / f"bench-{text_rows}.csv"
        _write_csv(data, rows[:text_rows])
        env = {"TIDAL_GATE__MIN_ACCURACY": "0", "TIDAL_GATE__MIN_MACRO_F1": "0"}
    started = time.monotonic()
    record = json.loads(tidal_cli("run", str(data), "--json", "--workspace", str(ws), env=env))
    if record["decision"] != "promoted":
        raise SystemExit(f"the {kind} model was not deployed: {record.get('reasons')}")
    folder = ws / ".tidal" / "models" / f"v{record['version']}"
    if not (folder / "tidal-model.json").is_file():
        raise SystemExit(f"no deployed model folder at {folder}")
    # one row the model never saw, its label column dropped
    row = _read_csv(ws / "data" / "batch-2.csv")[0]
    label = "diagnosis" if kind == "tabular" else "sentiment"
    instance = {k: (v if kind == "text" else float(v)) for k, v in row.items() if k != label}
    body = root / f"{kind}-body.json"
    body.write_text(json.dumps({"instances": [instance]}))
    manifest = json.loads((folder / "tidal-model.json").read_text())
    trained = len(_read_csv(data))
    if kind == "text":
        about = f"MiniLM (all-MiniLM-L6-v2) fine-tuned for 1 epoch, from a {trained}-review file"
    else:
        features = len(manifest["features"])
        about = f"the breast-cancer example ({features} features), from a {trained}-row file"
    description = (
        f"{about}, `{manifest['flavor']}` flavor, trained and deployed by `tidal run` "
        f"(v{record['version']})"
    )
    seconds = time.monotonic() - started
    return Model(kind, ws, folder, body, str(record["version"]), seconds, description)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# one row, then a batch, predicted in this process: the floor every server adds its cost to
PREDICT_PROBE = """
import json, statistics, sys, time
from pathlib import Path
from tidal.artifact import load_predictor
predictor = load_predictor(Path(sys.argv[1]))
row = json.loads(Path(sys.argv[2]).read_text())["instances"]
batch = int(sys.argv[3])

def per_row_us(rows, runs=200, seconds=1.0):
    predictor.predict(rows)
    times, end = [], time.perf_counter() + seconds
    while len(times) < runs and (len(times) < 5 or time.perf_counter() < end):
        started = time.perf_counter()
        predictor.predict(rows)
        times.append((time.perf_counter() - started) / len(rows) * 1e6)
    return statistics.median(times)

print(json.dumps({"one_row_us": per_row_us(row), "batch": batch,
                  "batch_per_row_us": per_row_us(row * batch)}))
"""


def predict_in_process(model: Model, threads: int) -> dict[str, Any]:
    """``predict`` of one row and of a batch in a fresh process, with ``threads`` threads."""
    batch = 32 if model.kind == "text" else 64
    env = os.environ | {f"{lib}_NUM_THREADS": str(threads) for lib in ("OMP", "MKL", "OPENBLAS")}
    done = subprocess.run(
        command(BIN / "python", "-c", PREDICT_PROBE, model.folder, model.body, batch),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if done.returncode != 0:
        return {"error": done.stderr[-500:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}


def save_mlflow_model(model: Model, root: Path) -> str | None:
    """The model in MLflow's format for ``mlflow models serve``; returns why not, if not."""
    out = root / "mlflow-model"
    try:
        subprocess.run(
            command(BIN / "python", PEERS / "mlflow_model.py", "--model", model.folder)
            + command("--out", out),
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.CalledProcessError as exc:
        return f"saving the MLflow model failed: {exc.stderr[-300:]}"
    except subprocess.TimeoutExpired:
        return "saving the MLflow model took over 300 s"
    model.mlflow = out
    return None


# -- Tidal: workers, cold start from zero -----------------------------------------------------


def tidal_workers(server: Server) -> dict[str, Any]:
    """Worker processes under the endpoint (its launcher excluded) and the tidal_workers gauge."""
    root_pid = server.proc.pid if server.proc else -1
    workers, launchers = [], []
    for p in server.processes()[1:]:
        with contextlib.suppress(psutil.Error):
            name, cmdline = p.name(), " ".join(p.cmdline())
            direct = p.ppid() == root_pid
            if any(w in name for w in ("launcher", "zygote")) or (
                direct and any(w in cmdline for w in ("launcher", "zygote"))
            ):
                launchers.append(p.pid)
            else:
                workers.append(p.pid)
    gauge = None
    with contextlib.suppress(OSError, http.client.HTTPException):
        status, text = get(server.port, "/metrics")
        if status == 200:
            gauge = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.decode().splitlines()
                if line.startswith("tidal_workers{") or line.startswith("tidal_workers ")
            )
    return {"workers": len(workers), "launchers": len(launchers), "gauge": gauge}


def wait_for_zero(server: Server, timeout_s: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = tidal_workers(server)
        if now["workers"] == 0 and not now["gauge"]:
            return now
        time.sleep(0.1)
    return None


def tidal_cold_instance(spec: Spec, body: bytes, settings: Settings, logs: Path) -> dict[str, Any]:
    """An endpoint with ``idle_timeout_s`` = 2 s: its launch, then its cold starts from zero."""
    env = {"TIDAL_SERVING__IDLE_TIMEOUT_S": str(TIDAL_COLD_IDLE_S)}
    with running(spec, logs, env) as server:
        try:
            launch_s = server.start(body, settings.start_timeout_s)
        except RuntimeError as exc:  # an endpoint without the setting refuses to start
            why = str(exc).strip().splitlines()
            return {
                "skipped": f"no endpoint with serving.idle_timeout_s set: {' '.join(why)[:300]}"
            }
        return tidal_cold(server, body, settings.cold_repeats) | {"launch_s": [launch_s]}


def tidal_cold(server: Server, body: bytes, repeats: int) -> dict[str, Any]:
    """With the endpoint up: wait until its workers are gone, time one request; repeat."""
    warm = tidal_workers(server)
    if warm["workers"] == 0 and not warm["gauge"]:
        return {
            "skipped": "the endpoint runs no worker processes (the in-process server): "
            "there is no scale-to-zero to start from",
            "metrics": warm["gauge"] is not None,
        }
    times, at_zero = [], None
    for _ in range(repeats):
        at_zero = wait_for_zero(server, TIDAL_COLD_IDLE_S + 30)
        if at_zero is None:
            return {
                "error": f"workers still up {TIDAL_COLD_IDLE_S + 30:.0f} s after the last request"
            }
        time.sleep(0.2)
        started = time.perf_counter()
        status, answer = post(server.port, server.spec.path, body, timeout_s=120)
        if status != 200:
            return {"error": f"cold request answered {status}: {answer[:300]!r}"}
        times.append(time.perf_counter() - started)
    at_zero = wait_for_zero(server, TIDAL_COLD_IDLE_S + 30)
    time.sleep(0.5)
    return {
        "seconds": [round(t, 4) for t in times],
        "median_s": round(statistics.median(times), 4),
        "warm_workers": warm,
        "at_zero": at_zero,
        "memory_at_zero": server.memory() if at_zero else None,
    }


# -- one suite --------------------------------------------------------------------------------


def specs(model: Model, peers: dict[str, Any], settings: Settings) -> list[Spec]:
    """The servers of a suite, Tidal first; ``{port}`` in a command is the port it gets."""
    folder, text = model.folder, model.kind == "text"
    # as many compute threads per model process as Tidal's workers have (worker_threads, 1 by
    # default): torch and OpenMP default to one per core, and with wrk on the same cores their
    # spinning threads stall (one MiniLM row: 15 ms on 1 thread, 120 ms on 2 on a busy box)
    threads = {
        f"{lib}_NUM_THREADS": str(settings.peer_threads) for lib in ("OMP", "MKL", "OPENBLAS")
    }
    peer_env = threads | {"PYTHONPATH": str(ROOT / "src"), "BENCH_MODEL_DIR": str(folder)}
    peer_py = PEERS_VENV / "bin" / "python"
    out = [
        Spec(
            "tidal",
            f"`tidal serve --workspace W`: the deployed v{model.version}, as deployed",
            command(BIN / "tidal", "serve", "--workspace", model.workspace, "--port", "{port}"),
            "/invocations",
            settings.tidal_env,
        ),
        Spec(
            "fastapi",
            "`tidal.artifact.load_predictor(folder)`, `predict` in the handler",
            command(
                BIN / "python", PEERS / "fastapi_app.py", "--model", folder, "--port", "{port}"
            ),
            "/predict",
            threads,
        ),
    ]
    if "litserve" in peers["peers"]:
        batch = ("--batch", 32, "--batch-timeout", 0.005) if text else ()
        out.append(
            Spec(
                "litserve",
                "`load_predictor(folder)` in `LitAPI.setup`"
                + (", max_batch_size 32, batch_timeout 5 ms" if text else ""),
                command(peer_py, PEERS / "litserve_app.py", "--model", folder, "--port", "{port}")
                + command(*batch),
                "/predict",
                peer_env,
            )
        )
    if "bentoml" in peers["peers"]:
        service = "bentoml_service:" + ("Text" if text else "Tabular")
        out.append(
            Spec(
                "bentoml",
                "`load_predictor(folder)` in the service's constructor"
                + (", adaptive batching (max 32)" if text else ""),
                command(PEERS_VENV / "bin" / "bentoml", "serve", service, "--working-dir", PEERS)
                + command("--host", "127.0.0.1", "--port", "{port}"),
                "/predict",
                peer_env,
            )
        )
    if model.mlflow is not None:
        out.append(
            Spec(
                "mlflow",
                "the same estimator saved with `mlflow.sklearn.save_model` (skops, column "
                "signature, predict_proba); `mlflow models serve --env-manager local`",
                command(BIN / "mlflow", "models", "serve", "-m", model.mlflow, "--env-manager")
                + command("local", "-h", "127.0.0.1", "-p", "{port}"),
                "/invocations",
                threads
                | {  # it runs `uvicorn` from PATH; skops models need the flag
                    "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
                    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
                },
            )
        )
    if settings.tuned:
        out += tuned_specs(model, peers, threads, peer_env)
    if settings.only:
        out = [s for s in out if s.name in settings.only or s.name.split("-")[0] in settings.only]
    return out


def tuned_specs(
    model: Model, peers: dict[str, Any], threads: dict[str, str], peer_env: dict[str, str]
) -> list[Spec]:
    """Each peer in its best documented configuration on the cores Tidal's workers use.

    One model process per core (uvicorn ``--workers``, LitServe ``workers_per_device``,
    BentoML ``workers``), as Tidal runs ``serving.max_workers`` = 2 worker processes on two
    cores, and the peer's own batching on for both suites where it has one (FastAPI has none).
    """
    folder, text = model.folder, model.kind == "text"
    cores = len(os.sched_getaffinity(0))
    peer_py = PEERS_VENV / "bin" / "python"
    out = [
        Spec(
            "fastapi-tuned",
            f"as fastapi, uvicorn `--workers {cores}` (one process per core)",
            command(BIN / "python", PEERS / "fastapi_app.py", "--model", folder)
            + command("--port", "{port}", "--workers", cores),
            "/predict",
            threads,
        )
    ]
    if "litserve" in peers["peers"]:
        batch, wait_s = (32, 0.005) if text else (64, 0.002)
        out.append(
            Spec(
                "litserve-tuned",
                f"as litserve, `workers_per_device` {cores}, {cores} API servers, "
                f"max_batch_size {batch}, batch_timeout {wait_s * 1000:g} ms",
                command(peer_py, PEERS / "litserve_app.py", "--model", folder, "--port", "{port}")
                + command("--batch", batch, "--batch-timeout", wait_s, "--workers", cores),
                "/predict",
                peer_env,
            )
        )
    if "bentoml" in peers["peers"]:
        service = "bentoml_service:" + ("Text" if text else "TabularBatched")
        out.append(
            Spec(
                "bentoml-tuned",
                f"as bentoml, {cores} workers, adaptive batching (max {32 if text else 64})",
                command(PEERS_VENV / "bin" / "bentoml", "serve", service, "--working-dir", PEERS)
                + command("--host", "127.0.0.1", "--port", "{port}"),
                "/predict",
                peer_env | {"BENCH_WORKERS": str(cores)},
            )
        )
    return out


def bench_server(
    spec: Spec, model: Model, levels: tuple[int, ...], settings: Settings, logs: Path
) -> dict[str, Any]:
    body = model.body.read_bytes()
    result: dict[str, Any] = {"how": spec.how, "route": spec.path, "launch_s": []}
    print(f"  {spec.name}: ", end="", flush=True)
    try:
        if spec.name == "tidal":
            result["cold_from_zero"] = cold = tidal_cold_instance(spec, body, settings, logs)
            result["launch_s"] += cold.pop("launch_s", [])
            print("cold starts, ", end="", flush=True)
        for _ in range(settings.launches - 1):
            with running(spec, logs) as server:
                result["launch_s"].append(server.start(body, settings.start_timeout_s))
        with running(spec, logs) as server:
            result["launch_s"].append(server.start(body, settings.start_timeout_s))
            print("launched, ", end="", flush=True)
            _, answer = post(server.port, spec.path, body, timeout_s=30)
            result["answer"] = json.loads(answer)
            wrk(server, model.body, max(levels), settings.warmup_s)
            result["load"] = {}
            for c in levels:
                result["load"][str(c)] = run = wrk(server, model.body, c, settings.duration_s)
                print(f"c={c} {run['rps']:.0f}/s, ", end="", flush=True)
            time.sleep(1.0)
            result["memory"] = server.memory()
            if spec.name == "tidal":
                result["workers_warm"] = tidal_workers(server)
    except (RuntimeError, OSError, subprocess.SubprocessError, http.client.HTTPException) as exc:
        result["error"] = str(exc)
        print(f"FAILED: {str(exc)[:300]}")
        return result
    result["launch_s"] = [round(s, 3) for s in result["launch_s"]]
    result["launch_median_s"] = round(statistics.median(result["launch_s"]), 3)
    print(f"launch {result['launch_median_s']:.2f} s, {result['memory']['rss_mb']:.0f} MB RSS")
    return result


def run_suite(
    model: Model, peers: dict[str, Any], settings: Settings, logs: Path, missing: dict[str, str]
) -> dict[str, Any]:
    levels = TEXT_LEVELS if model.kind == "text" else TABULAR_LEVELS
    print(
        f"{model.kind}: model v{model.version} at {model.folder} (trained in {model.train_s:.0f} s)"
    )
    in_process = predict_in_process(model, settings.peer_threads)
    print(f"  in-process predict: {in_process}")
    servers = {}
    for spec in specs(model, peers, settings):
        servers[spec.name] = bench_server(spec, model, levels, settings, logs)
    missing |= {
        name: f"not installed: {why}"
        for name, why in peers["failed"].items()
        if not settings.only or name in settings.only
    }
    if model.kind == "text":
        missing["mlflow"] = "not run for the text model (tabular only)"
    return {
        "model": {
            "description": model.description,
            "folder": str(model.folder),
            "version": model.version,
            "body": model.body.read_text(),
        },
        "levels": list(levels),
        "predict_in_process": in_process,
        "servers": servers,
        "missing": missing,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~2-3 minute smoke run")
    parser.add_argument("--duration", type=int, help="seconds per load level (default 8; quick 2)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up (default 2; quick 1)")
    parser.add_argument(
        "--launches", type=int, help="launches timed per server (default 2; quick 1)"
    )
    parser.add_argument("--cold-repeats", type=int, help="Tidal cold starts timed (default 5)")
    parser.add_argument("--text-rows", type=int, help="reviews the text model trains on (300)")
    parser.add_argument(
        "--peer-threads",
        type=int,
        default=1,
        help="OMP/MKL/OpenBLAS threads of each peer process (default 1, as Tidal's workers)",
    )
    parser.add_argument("--only", help="comma-separated servers: tidal,fastapi,litserve,...")
    parser.add_argument(
        "--no-tuned",
        action="store_true",
        help="leave out the peers' tuned configurations (one process per core, batching on)",
    )
    parser.add_argument("--suites", default="tabular,text", help="tabular,text (default both)")
    parser.add_argument(
        "--tidal-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for tidal serve, e.g. TIDAL_SERVING__MAX_WORKERS=2",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md and .json")
    parser.add_argument("--keep", action="store_true", help="keep the workspaces and server logs")
    parser.add_argument("--setup-only", action="store_true", help="install wrk and the peers venv")
    args = parser.parse_args(argv)
    quick = args.quick
    settings = Settings(
        duration_s=args.duration or (2 if quick else 8),
        warmup_s=args.warmup or (1 if quick else 2),
        launches=args.launches or (1 if quick else 2),
        cold_repeats=args.cold_repeats or (2 if quick else 5),
        text_rows=args.text_rows or (200 if quick else 300),
        peer_threads=args.peer_threads,
        tuned=not args.no_tuned,
        only=set(args.only.split(",")) if args.only else None,
        tidal_env=dict(kv.split("=", 1) for kv in args.tidal_env),
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every finally stops its server

    ensure_wrk()
    peers = ensure_peers_venv()
    if args.setup_only:
        print(json.dumps({k: v for k, v in peers.items() if k != "pins"}, indent=2))
        return 0
    started = time.monotonic()
    report: dict[str, Any] = {
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "settings": {k: v for k, v in vars(settings).items() if k != "only"}
        | {"quick": quick, "tidal_cold_idle_s": TIDAL_COLD_IDLE_S},
        "peers": {k: v for k, v in peers.items() if k != "pins"},
        "suites": {},
    }
    if report["machine"]["loadavg_before"][0] > 0.5:
        print(f"note: load average {report['machine']['loadavg_before']}: other work skews figures")
    root = Path(tempfile.mkdtemp(prefix="tidal-serving-bench-"))
    try:
        logs = root / "logs"
        logs.mkdir()
        for kind in args.suites.split(","):
            model = deploy(root, kind, settings.text_rows)
            missing = {}
            wants_mlflow = kind == "tabular" and (not settings.only or "mlflow" in settings.only)
            if wants_mlflow and (why := save_mlflow_model(model, root)):
                missing["mlflow"] = why
            report["suites"][kind] = run_suite(model, peers, settings, logs, missing)
    finally:
        if args.keep:
            print(f"kept {root} (workspaces, server logs)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["goals"] = goals(report)
    report["seconds"] = round(time.monotonic() - started, 1)
    save(report, markdown(report), args.out, "serving", "-quick" if quick else "")
    return 0


def save(report: dict[str, Any], text: str, out: Path, name: str, suffix: str = "") -> None:
    """Print ``text``; write it and ``report`` as ``out/<name>-<date><suffix>.{md,json}``."""
    print()
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{name}-{datetime.now():%Y-%m-%d-%H%M}{suffix}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {stem}.md, {stem}.json ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every server was stopped on the way out
        print("\ninterrupted: the servers it started are stopped", file=sys.stderr)
        sys.exit(130)
