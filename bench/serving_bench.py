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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from peers.harness import Server, Spec, command, get, post, running, wrk
from peers.install import PEERS_VENV, ensure_peers_venv, ensure_wrk

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
PEERS = ROOT / "bench" / "peers"
RESULTS = ROOT / "bench" / "results"

TABULAR_LEVELS = (1, 16, 64)
TEXT_LEVELS = (1, 32)
TIDAL_AT_ZERO = "tidal, all at zero"  # the table's row of Tidal's memory with no worker
TIDAL_COLD_IDLE_S = 2.0  # serving.idle_timeout_s of the instance whose cold starts are timed
GOALS = {
    "tabular_p50_c1_over_fastapi_ms": 0.3,
    "tabular_rps_c64_vs_best_peer": 1.5,
    "tabular_cold_from_zero_s": 0.25,
    "text_rps_c32_vs_fastapi": 3.0,
    "text_cold_from_zero_s": 0.8,
}


@dataclass
class Settings:
    duration_s: int = 8
    warmup_s: int = 2
    launches: int = 3
    cold_repeats: int = 5
    text_rows: int = 300
    start_timeout_s: float = 180.0
    peer_threads: int = 1  # compute threads per peer process, as Tidal's worker_threads
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

def per_row_us(rows, runs):
    predictor.predict(rows)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        predictor.predict(rows)
        times.append((time.perf_counter() - started) / len(rows) * 1e6)
    return statistics.median(times)

print(json.dumps({"one_row_us": per_row_us(row, 200), "batch": batch,
                  "batch_per_row_us": per_row_us(row * batch, 50)}))
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


def save_mlflow_model(model: Model, root: Path) -> Path:
    out = root / "mlflow-model"
    subprocess.run(
        command(BIN / "python", PEERS / "mlflow_model.py", "--model", model.folder, "--out", out),
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


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
    if settings.only:
        out = [s for s in out if s.name in settings.only]
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
    model: Model, peers: dict[str, Any], settings: Settings, logs: Path
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
    missing = {
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


# -- figures, ratios, goals -------------------------------------------------------------------


def columns(levels: list[int]) -> list[tuple[str, str, bool]]:
    """(key, heading, lower is better) for each figure of a suite's table."""
    cols = [(f"p50@{levels[0]}", f"p50 c={levels[0]} ms", True)]
    cols.append((f"p99@{levels[0]}", f"p99 c={levels[0]} ms", True))
    for c in levels[1:]:
        cols += [(f"rps@{c}", f"req/s c={c}", False), (f"p99@{c}", f"p99 c={c} ms", True)]
    cols += [("launch", "launch → answer s", True), ("cold", "cold from zero s", True)]
    return [*cols, ("rss", "RSS MB", True), ("uss", "USS MB", True), ("pss", "PSS MB", True)]


def figures(server: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for c, run in server.get("load", {}).items():
        out[f"p50@{c}"], out[f"p99@{c}"], out[f"rps@{c}"] = run["p50_ms"], run["p99_ms"], run["rps"]
    out["launch"] = server.get("launch_median_s")
    out["cold"] = server.get("cold_from_zero", {}).get("median_s")
    memory = server.get("memory") or {}
    out["rss"], out["uss"], out["pss"] = (memory.get(f"{k}_mb") for k in ("rss", "uss", "pss"))
    return out


def table(suite: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Each server's figures by column key; for Tidal also a row of its memory at zero."""
    rows = {name: figures(server) for name, server in suite["servers"].items()}
    zero = suite["servers"].get("tidal", {}).get("cold_from_zero", {}).get("memory_at_zero")
    if zero:
        rows[TIDAL_AT_ZERO] = {k: zero[f"{k}_mb"] for k in ("rss", "uss", "pss")}
    return rows


def ratios(suite: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Each row's figures as a ratio to the best peer's (Tidal is not a peer)."""
    rows = table(suite)
    out: dict[str, dict[str, float | None]] = {name: {} for name in rows}
    for key, _, lower in columns(suite["levels"]):
        peer_values = [f[key] for n, f in rows.items() if not n.startswith("tidal") and f.get(key)]
        best = (min if lower else max)(peer_values) if peer_values else None
        for name, f in rows.items():
            value = f.get(key)
            out[name][key] = round(value / best, 3) if value is not None and best else None
    return out


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []

    def verdict(name: str, figure: str, ok: bool | None, note: str = "") -> None:
        state = "not measured" if ok is None else ("ok" if ok else "MISSED")
        out.append({"goal": name, "figure": figure, "verdict": state, "note": note})

    tab = report["suites"].get("tabular")
    if tab:
        f = {n: figures(s) for n, s in tab["servers"].items()}
        tidal, fastapi = f.get("tidal", {}), f.get("fastapi", {})
        if tidal.get("p50@1") is not None and fastapi.get("p50@1") is not None:
            gap = tidal["p50@1"] - fastapi["p50@1"]
            limit = GOALS["tabular_p50_c1_over_fastapi_ms"]
            verdict(
                f"tabular: p50 at c=1 within {limit} ms of plain FastAPI",
                f"{gap:+.3f} ms",
                gap <= limit,
            )
        else:
            verdict("tabular: p50 at c=1 within 0.3 ms of plain FastAPI", "-", None)
        peer_rps = [v["rps@64"] for n, v in f.items() if n != "tidal" and v.get("rps@64")]
        if tidal.get("rps@64") and peer_rps:
            ratio = tidal["rps@64"] / max(peer_rps)
            limit = GOALS["tabular_rps_c64_vs_best_peer"]
            verdict(
                f"tabular: req/s at c=64 >= {limit}x the best peer", f"{ratio:.2f}x", ratio >= limit
            )
        else:
            verdict("tabular: req/s at c=64 >= 1.5x the best peer", "-", None)
        _cold_goal(verdict, tab, "tabular", GOALS["tabular_cold_from_zero_s"])
    text = report["suites"].get("text")
    if text:
        f = {n: figures(s) for n, s in text["servers"].items()}
        t, base = f.get("tidal", {}).get("rps@32"), f.get("fastapi", {}).get("rps@32")
        limit = GOALS["text_rps_c32_vs_fastapi"]
        name = f"text: req/s at c=32 >= {limit}x plain FastAPI"
        if t and base:
            verdict(name, f"{t / base:.2f}x", t / base >= limit)
        else:
            verdict(name, "-", None)
        _cold_goal(verdict, text, "text", GOALS["text_cold_from_zero_s"])
    zero = []
    for kind in ("tabular", "text"):
        cold = (
            report["suites"]
            .get(kind, {})
            .get("servers", {})
            .get("tidal", {})
            .get("cold_from_zero", {})
        )
        if cold.get("at_zero"):
            zero.append((kind, cold["at_zero"]["workers"], cold.get("memory_at_zero") or {}))
    if zero:
        ok = all(workers == 0 for _, workers, _ in zero)
        figure = "; ".join(
            f"{kind}: {w} workers, {m.get('processes', '?')} processes, "
            f"{m.get('rss_mb', 0):.0f} MB RSS / {m.get('uss_mb', 0):.0f} MB USS"
            for kind, w, m in zero
        )
        verdict("idle (all variants at zero): no worker processes; memory stated", figure, ok)
    else:
        verdict(
            "idle (all variants at zero): no worker processes; memory stated",
            "-",
            None,
            "no scale-to-zero measured",
        )
    return out


def _cold_goal(verdict: Any, suite: dict[str, Any], kind: str, limit: float) -> None:
    cold = suite["servers"].get("tidal", {}).get("cold_from_zero", {})
    name = f"{kind}: cold start from zero <= {limit} s"
    if "median_s" in cold:
        verdict(name, f"{cold['median_s']:.3f} s", cold["median_s"] <= limit)
    else:
        verdict(name, "-", None, cold.get("skipped") or cold.get("error") or "")


# -- output -----------------------------------------------------------------------------------


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key.startswith("rps") or key in ("rss", "uss", "pss"):
        return f"{value:,.0f}"
    return f"{value:.2f}" if key in ("launch", "cold") or value >= 10 else f"{value:.3f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    s = report["settings"]
    lines = [
        f"# Serving bench, {report['date']}",
        "",
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory_gib']} GiB, Python {m['python']}; "
        f"{m['wrk']}; load average {m['loadavg_before']} before, {m['loadavg_after']} after.",
        f"Load: wrk -t1, keep-alive, single-row JSON POST, {s['warmup_s']} s warm-up then "
        f"{s['duration_s']} s per level; launch → answer: median of {s['launches']} launches; "
        f"cold from zero: median of {s['cold_repeats']} (idle_timeout_s = {TIDAL_COLD_IDLE_S:g}).",
        f"Compute threads per model process: peers {s['peer_threads']} (OMP/MKL/OpenBLAS), "
        f"Tidal its serving.worker_threads; Tidal settings from the environment: "
        f"{s['tidal_env'] or 'none (defaults)'}.",
        "",
    ]
    for kind, suite in report["suites"].items():
        cols = columns(suite["levels"])
        lines += [f"## {kind}: {suite['model']['description']}", ""]
        probe = suite["predict_in_process"]
        if "one_row_us" in probe:
            lines += [
                f"In-process `predict` (the floor): one row {probe['one_row_us']:,.0f} µs, "
                f"a {probe['batch']}-row batch {probe['batch_per_row_us']:,.1f} µs per row.",
                "",
            ]
        lines += _markdown_table(cols, table(suite), _fmt)
        lines += [
            "",
            "Ratio to the best peer (latency, time, memory: below 1 is better; req/s: "
            "above 1 is better):",
            "",
        ]
        lines += _markdown_table(cols, ratios(suite), lambda k, v: f"{v:.2f}x")
        lines += ["", "How each server gets the model:", ""]
        for name, srv in suite["servers"].items():
            note = f" — FAILED: {srv['error'][:200]}" if "error" in srv else ""
            lines.append(f"- **{name}** (`POST {srv['route']}`): {srv['how']}{note}")
        for name, why in suite["missing"].items():
            lines.append(f"- **{name}**: {why}")
        lines += _tidal_notes(suite)
        lines.append("")
    lines += ["## Goals", "", "| goal | figure | verdict |", "|---|---|---|"]
    for g in report["goals"]:
        note = f" ({g['note']})" if g["note"] else ""
        lines.append(f"| {g['goal']} | {g['figure']} | {g['verdict']}{note} |")
    lines += ["", f"Peers venv: {json.dumps(report['peers'])}", ""]
    return "\n".join(lines)


def _markdown_table(
    cols: list[tuple[str, str, bool]],
    rows: dict[str, dict[str, float | None]],
    fmt: Callable[[str, float], str],
) -> list[str]:
    lines = ["| server | " + " | ".join(heading for _, heading, _ in cols) + " |"]
    lines.append("|---" * (len(cols) + 1) + "|")
    for name, row in rows.items():
        cells = [fmt(k, v) if (v := row.get(k)) is not None else "-" for k, _, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _tidal_notes(suite: dict[str, Any]) -> list[str]:
    tidal = suite["servers"].get("tidal")
    if not tidal:
        return []
    out = []
    cold = tidal.get("cold_from_zero", {})
    if "median_s" in cold:
        mem = cold.get("memory_at_zero") or {}
        out.append(
            f"- Tidal cold starts from zero: {cold['seconds']} s; at zero: "
            f"{cold['at_zero']['workers']} workers, {cold['at_zero']['launchers']} launcher, "
            f"tidal_workers = {cold['at_zero']['gauge']}; what stays up: "
            f"{mem.get('processes')} processes, {mem.get('rss_mb')} MB RSS, "
            f"{mem.get('uss_mb')} MB USS, {mem.get('pss_mb')} MB PSS"
        )
    elif cold:
        out.append(
            f"- Tidal cold start from zero not measured: {cold.get('skipped') or cold.get('error')}"
        )
    if tidal.get("workers_warm"):
        out.append(f"- Tidal after the load: {tidal['workers_warm']}")
    for name, srv in suite["servers"].items():
        for c, run in srv.get("load", {}).items():
            if run["errors"]:
                out.append(f"- {name} at c={c}: errors {run['errors']} (its figures are suspect)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~2-3 minute smoke run")
    parser.add_argument("--duration", type=int, help="seconds per load level (default 8; quick 2)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up (default 2; quick 1)")
    parser.add_argument("--launches", type=int, help="launches timed per server (default 3)")
    parser.add_argument("--cold-repeats", type=int, help="Tidal cold starts timed (default 5)")
    parser.add_argument("--text-rows", type=int, help="reviews the text model trains on (300)")
    parser.add_argument(
        "--peer-threads",
        type=int,
        default=1,
        help="OMP/MKL/OpenBLAS threads of each peer process (default 1, as Tidal's workers)",
    )
    parser.add_argument("--only", help="comma-separated servers: tidal,fastapi,litserve,...")
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
        launches=args.launches or (1 if quick else 3),
        cold_repeats=args.cold_repeats or (2 if quick else 5),
        text_rows=args.text_rows or (200 if quick else 300),
        peer_threads=args.peer_threads,
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
        "settings": {k: v for k, v in vars(settings).items() if k != "only"} | {"quick": quick},
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
            if kind == "tabular" and (not settings.only or "mlflow" in settings.only):
                model.mlflow = save_mlflow_model(model, root)
            report["suites"][kind] = run_suite(model, peers, settings, logs)
    finally:
        if args.keep:
            print(f"kept {root} (workspaces, server logs)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["goals"] = goals(report)
    report["seconds"] = round(time.monotonic() - started, 1)
    text = markdown(report)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"serving-{datetime.now():%Y-%m-%d-%H%M}{'-quick' if quick else ''}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {stem}.md, {stem}.json ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every server was stopped on the way out
        print("\ninterrupted: the servers it started are stopped", file=sys.stderr)
        sys.exit(130)
