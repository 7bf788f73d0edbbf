"""What monitoring costs the endpoint: p50 with request capture off, on, and on with drift checks.

    .venv/bin/python bench/monitoring_bench.py [--duration 5] [--rounds 6] [--levels 8,1]

One model (the breast-cancer example, trained and deployed by ``tidal run`` as in
``serving_bench.py``), one machine, one load generator (wrk, one thread, keep-alive, one-row
JSON POSTs to ``/invocations``), four endpoints (``tidal serve``), each on its own copy of the
workspace, all up for the whole run:

- **A** capture off (``serving.capture_sample_rate`` 0);
- **A2** the same as A, a second endpoint: A2/A is what noise alone makes of a ratio;
- **B** capture on, every request (rate 1, JSON Lines: the defaults);
- **C** as B, and in another process the check ``tidal monitor`` runs
  (``tidal.cli_monitor.check``: ``MonitorJob.run_once`` and live quality) every
  ``--monitor-interval`` seconds (5) on C's workspace: it reads the new capture files and
  updates the drift windows. It runs only while C is under load (paused between checks
  otherwise, so it never loads the machine during another endpoint's turn).

The endpoints take turns: in each of ``--rounds`` rounds, for each concurrency of
``--levels``, each endpoint gets ``--duration`` seconds of load, in an order that rotates from
round to round (A A2 B C, A2 B C A, ...). Short turns, interleaved, so that the other work of a
shared machine falls on every configuration alike. Reported per configuration and concurrency:
the median over the rounds of wrk's p50, p99 and req/s; the median of the per-round ratios of
p50 to A's in the same round (goal: B and C ≤ 1.02 under load) and their spread; CPU per
request of the endpoint's processes (all, and the gateway process alone, where capture runs);
records captured against requests answered; the monitor's checks and their CPU; and what
capture and per-variant stats cost per request, timed in process. Written to
``bench/results/monitoring-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from peers.harness import Server, Spec, command, get, running, wrk
from peers.install import ensure_wrk
from serving_bench import BIN, RESULTS, Model, _read_csv, deploy, machine, save, tidal_cli

CONFIGS = {
    "A": "capture off (`capture_sample_rate` 0)",
    "A2": "capture off, a second endpoint (the noise floor)",
    "B": "capture 100%, JSON Lines (the defaults)",
    "C": "capture 100%, JSON Lines, and the `tidal monitor` check every 5 s in another process",
}
MEDIANS = (
    "p50_ms",
    "p99_ms",
    "rps",
    "cpu_us_per_request",
    "gateway_cpu_us_per_request",
    "gateway_system_us_per_request",
    "gc_us_per_request",
)
GOAL = 1.02  # p50 with monitoring / p50 without, under load
CAPTURE = Path(".tidal/store/_tidal/capture")  # under a workspace (its default file store)
# the same for every endpoint: an extra worker idle 30 s (the default) would exit between turns
ENDPOINT_ENV = {"TIDAL_SERVING__WORKER_IDLE_S": "600"}

# `tidal monitor`'s check every `interval` s, until `deadline`, a JSON line each; while the file
# `pause` exists it checks nothing and says so with the file `idle`
MONITOR = """
import json, sys, time
from pathlib import Path
from tidal.cli_monitor import check
from tidal.workspace import Workspace
ws = Workspace.open(Path(sys.argv[1]))
interval, deadline = float(sys.argv[2]), time.monotonic() + float(sys.argv[3])
pause, idle = Path(sys.argv[4]), Path(sys.argv[5])
check(ws)  # its first-use imports (pandas, the drift code) are paid before the load
print(json.dumps({"ready": True}), flush=True)
due = time.monotonic()
while time.monotonic() < deadline:
    if pause.exists():
        idle.touch()
        time.sleep(0.02)
        continue
    idle.unlink(missing_ok=True)
    if time.monotonic() < due:
        time.sleep(0.02)
        continue
    started, cpu = time.monotonic(), time.process_time()
    summary = check(ws)
    due = started + interval
    statuses = {v: s["status"] for v, s in summary["versions"].items()}
    print(json.dumps({"seconds": round(time.monotonic() - started, 4),
                      "cpu_s": round(time.process_time() - cpu, 4),
                      "objects": summary["objects"], "records": summary["records"],
                      "status": statuses}), flush=True)
"""


# `tidal serve` as the `tidal` script starts it, with its garbage collector's work recorded:
# on SIGUSR1 it writes the collections and seconds per generation so far, and the longest pause
# since the last SIGUSR1
SERVE = """
import gc, json, os, signal, sys, time
from pathlib import Path
out, spent, started = Path(os.environ["BENCH_GC_FILE"]), [[0, 0.0, 0.0] for _ in range(3)], [0.0]
def timed(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
        return
    took, gen = time.perf_counter() - started[0], spent[info["generation"]]
    gen[0], gen[1], gen[2] = gen[0] + 1, gen[1] + took, max(gen[2], took)
def dump(*_):
    gens = [{"collections": n, "seconds": s, "longest_s": m} for n, s, m in spent]
    out.with_suffix(".tmp").write_text(json.dumps(gens))
    out.with_suffix(".tmp").replace(out)
    for gen in spent:
        gen[2] = 0.0
gc.callbacks.append(timed)
signal.signal(signal.SIGUSR1, dump)
from tidal.cli import app
app()
"""


class Monitor:
    """The monitor loop in its own process, paused and resumed by a file, stopped by its pid."""

    def __init__(self, workspace: Path, folder: Path, interval_s: float, limit_s: float) -> None:
        self.log = folder / "monitor.log"
        self.pause_file, self.idle_file = folder / "monitor.pause", folder / "monitor.idle"
        self.pause_file.touch()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                command(BIN / "python", "-c", MONITOR, workspace, interval_s, limit_s)
                + command(self.pause_file, self.idle_file),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait(self, done: Any, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the monitor exited: {self.log.read_text()[-1000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the monitor was not {what} within {timeout_s:.0f} s")
            time.sleep(0.02)

    def wait_ready(self) -> None:
        self.wait(lambda: '"ready"' in self.log.read_text(errors="replace"), "ready", 120)
        self.pause()

    def resume(self) -> None:
        self.pause_file.unlink(missing_ok=True)
        self.wait(lambda: not self.idle_file.exists(), "resumed", 10)

    def pause(self) -> None:
        """Pause it; returns once a check in progress has ended."""
        self.pause_file.touch()
        self.wait(self.idle_file.exists, "paused", 60)

    def stop(self) -> list[dict[str, Any]]:
        """Stop it (SIGTERM, then SIGKILL, by pid); the checks it made once ready."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        checks = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found = json.loads(line)
                if isinstance(found, dict) and "seconds" in found:
                    checks.append(found)
        return checks


# -- one endpoint ------------------------------------------------------------------------------


def cpu_times(server: Server) -> dict[int, tuple[float, float]]:
    """CPU seconds (user, system) of each process of the endpoint's tree, by pid."""
    found = {}
    for p in server.processes():
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            found[p.pid] = (t.user, t.system)
    return found


def gc_spent(server: Server) -> list[dict[str, float]]:
    """The gateway's garbage collections so far, per generation (see SERVE)."""
    out = Path(server.env["BENCH_GC_FILE"])
    out.unlink(missing_ok=True)
    if server.proc is None:
        raise RuntimeError(f"{server.spec.name} is not running")
    os.kill(server.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not out.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.spec.name} wrote no GC figures: {server.log_tail()}")
        time.sleep(0.01)
    gens: list[dict[str, float]] = json.loads(out.read_text())
    return gens


def measured(server: Server, body: Path, c: int, seconds: int) -> dict[str, Any]:
    """One wrk run, with the CPU the endpoint used per request: all of it, and its gateway's
    (the ``tidal serve`` process: event loop, capture's flusher thread) alone; and the
    gateway's garbage collections during the run."""
    root = server.proc.pid if server.proc else -1
    gc_before, before = gc_spent(server), cpu_times(server)
    figures = wrk(server, body, c, seconds)
    after, gc_after = cpu_times(server), gc_spent(server)
    used = {
        pid: (user - before.get(pid, (0.0, 0.0))[0], system - before.get(pid, (0.0, 0.0))[1])
        for pid, (user, system) in after.items()
    }
    n = max(figures["requests"], 1)
    figures["cpu_us_per_request"] = round(sum(u + s for u, s in used.values()) / n * 1e6, 1)
    gateway_user, gateway_system = used.get(root, (0.0, 0.0))
    figures["gateway_cpu_us_per_request"] = round((gateway_user + gateway_system) / n * 1e6, 1)
    figures["gateway_system_us_per_request"] = round(gateway_system / n * 1e6, 1)
    gc_s = sum(a["seconds"] - b["seconds"] for a, b in zip(gc_after, gc_before, strict=True))
    figures["gc_us_per_request"] = round(gc_s / n * 1e6, 2)
    figures["gc_collections"] = [
        a["collections"] - b["collections"] for a, b in zip(gc_after, gc_before, strict=True)
    ]
    figures["gc_longest_ms"] = round(max(a["longest_s"] for a in gc_after) * 1e3, 1)
    return figures


def capture_files(workspace: Path) -> dict[str, Any]:
    """Capture objects, records (one per row) and bytes under the workspace's store, and one
    record."""
    from tidal.serving.capture import read_object
    from tidal.storage import open_store

    files = sorted((workspace / CAPTURE).rglob("*.jsonl"))
    store = open_store(str(workspace / CAPTURE))
    records, sample = 0, None
    for f in files:
        for record in read_object(store, f.relative_to(workspace / CAPTURE).as_posix()):
            records += 1
            sample = record
    return {
        "files": len(files),
        "records": records,
        "bytes": sum(f.stat().st_size for f in files),
        "sample": sample,
    }


def capture_dropped(server: Server) -> float | None:
    """Rows capture dropped so far (``tidal_capture_dropped_total`` on /metrics)."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        status, text = get(server.port, "/metrics")
        if status == 200:
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.decode().splitlines()
                if line.startswith("tidal_capture_dropped_total")
            )
    return None


def endpoint(config: str, workspace: Path, logs: Path) -> Spec:
    rate = "0" if config.startswith("A") else "1"
    return Spec(
        f"tidal-{config}",
        CONFIGS[config],
        command(BIN / "python", "-c", SERVE, "serve", "--workspace", workspace)
        + command("--port", "{port}"),
        "/invocations",
        ENDPOINT_ENV
        | {"TIDAL_SERVING__CAPTURE_SAMPLE_RATE": rate, "BENCH_GC_FILE": str(logs / f"gc-{config}")},
    )


# -- the run -----------------------------------------------------------------------------------


def bench(
    workspaces: dict[str, Path], body: Path, args: argparse.Namespace, logs: Path
) -> dict[str, Any]:
    """Every endpoint up; warm-ups; then the rounds of turns. Each turn's figures, in order."""
    names = list(CONFIGS)
    orders = [names[i % len(names) :] + names[: i % len(names)] for i in range(args.rounds)]
    turns: list[dict[str, Any]] = []
    answered = dict.fromkeys(names, 0)
    found: dict[str, Any] = {"orders": orders, "turns": turns, "answered": answered}
    limit = (args.rounds * len(args.levels) * len(names) + 4) * (args.duration + 10) + 120
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in names:
            servers[name] = server = stack.enter_context(
                running(endpoint(name, workspaces[name], logs), logs)
            )
            server.start(body.read_bytes(), timeout_s=120)
            answered[name] += 1
        monitor = Monitor(workspaces["C"], logs, args.monitor_interval, limit)
        try:
            monitor.wait_ready()
            for name in names:  # workers up, code paths warm
                answered[name] += wrk(servers[name], body, max(args.levels), args.warmup)[
                    "requests"
                ]
            for i, order in enumerate(orders):
                for c in args.levels:
                    for name in order:
                        if name == "C":
                            monitor.resume()
                        figures = measured(servers[name], body, c, args.duration)
                        if name == "C":
                            monitor.pause()
                        answered[name] += figures["requests"]
                        turns.append({"round": i + 1, "config": name, "c": c} | figures)
                line = ", ".join(
                    f"{t['config']} {t['p50_ms']:.2f}" for t in turns if t["round"] == i + 1
                )
                print(f"  round {i + 1} p50 ms (c={','.join(map(str, args.levels))}): {line}")
        finally:
            found["monitor"] = monitor.stop()
        found["dropped"] = {name: capture_dropped(s) for name, s in servers.items()}
    return found


# -- a model without training: for a machine without MLflow ----------------------------------

# nearest class centroid on standardised features: the breast-cancer example's 30 numbers in,
# label and probabilities out, in plain Python (what the endpoint does around it is the same)
CENTROIDS = """
import json, math, os


def model_fn(model_dir):
    with open(os.path.join(model_dir, "centroids.json"), encoding="utf-8") as f:
        return json.load(f)


def predict_fn(rows, model):
    out = []
    for row in rows:
        d = {c: math.sqrt(sum(((row[f] or 0.0) - m) ** 2 / s ** 2
                              for f, m, s in zip(model["features"], means, model["scale"])))
             for c, means in model["centroids"].items()}
        weights = {c: math.exp(-v) for c, v in d.items()}
        total = sum(weights.values())
        probabilities = {c: w / total for c, w in weights.items()}
        out.append({"label": max(probabilities, key=probabilities.get),
                    "probabilities": probabilities})
    return out
"""


def deploy_python(root: Path) -> Model:
    """The tabular example's workspace with a ``python``-flavor model deployed as v1 (a class
    centroid model of its batch-1.csv, with its drift baseline): no training step, no MLflow."""
    import pandas as pd

    from tidal.artifact import Feature, Manifest, write_manifest
    from tidal.monitoring.job import build_baseline, save_baseline
    from tidal.workspace import Workspace

    started = time.monotonic()
    ws = root / "tabular"
    tidal_cli("init", str(ws), "--example", "tabular")
    frame = pd.read_csv(ws / "data" / "batch-1.csv")
    label = "diagnosis"
    features = [c for c in frame.columns if c != label]
    folder = ws / ".tidal" / "models" / "v1"
    folder.mkdir(parents=True)
    (folder / "inference.py").write_text(CENTROIDS, encoding="utf-8")
    model = {
        "features": features,
        "scale": [float(frame[f].std() or 1.0) for f in features],
        "centroids": {
            str(c): [float(v) for v in group[features].mean()] for c, group in frame.groupby(label)
        },
    }
    (folder / "centroids.json").write_text(json.dumps(model), encoding="utf-8")
    classes = sorted(str(c) for c in frame[label].unique())
    manifest = Manifest(
        "python", "tabular", [Feature(f, "number") for f in features], classes, label
    )
    sha = write_manifest(folder, manifest)
    workspace = Workspace.open(ws)
    save_baseline(workspace, "1", build_baseline(workspace, frame[features], manifest))
    workspace.state.deploy(workspace.model_name, "1", str(folder), sha, reason="bench")
    row = _read_csv(ws / "data" / "batch-2.csv")[0]
    body = root / "tabular-body.json"
    body.write_text(
        json.dumps({"instances": [{k: float(v) for k, v in row.items() if k != label}]})
    )
    description = (
        f"the breast-cancer example's {len(features)} features, a nearest-centroid model of its "
        f"{len(frame)}-row batch-1.csv in plain Python (`python` flavor, no training step)"
    )
    return Model("tabular", ws, folder, body, "1", time.monotonic() - started, description)


# -- what the pieces cost, in process ----------------------------------------------------------


def capture_cost(record: dict[str, Any], rows: int = 20_000) -> dict[str, Any]:
    """What capture does per request of one row, timed apart in this process: ``offer`` (on the
    event loop; it encodes the row and its prediction to JSON), and the flusher's work (its
    thread, holding the GIL but for the file write): the lines, the file write, the counts."""
    from tidal.serving.capture import CaptureWriter
    from tidal.storage import open_store

    folder = Path(tempfile.mkdtemp(prefix="tidal-capture-cost-"))
    try:
        store = open_store(str(folder))
        # no flush while offer is timed: one long interval, one batch of everything
        writer = CaptureWriter(
            store, "cost", flush_interval_s=3600, flush_records=10**9, max_buffer_records=10**9
        )
        requests = [
            ([dict(record["input"])], [json.loads(json.dumps(record["output"]))])
            for _ in range(rows)
        ]
        ids = [f"{i:032x}" for i in range(rows)]
        started = time.perf_counter()
        for i, (given, answer) in enumerate(requests):
            writer.offer("m", "1", "primary", ids[i], 1.5, given, answer)
        offer = time.perf_counter() - started
        writer.flush_records = 1000  # the default batch: one object per 1000 rows
        started, cpu = time.perf_counter(), time.thread_time()
        writer.flush()
        flush, flush_cpu = time.perf_counter() - started, time.thread_time() - cpu
        writer.close()
        size = sum(f.stat().st_size for f in folder.rglob("*.jsonl"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    us = 1e6 / rows
    return {
        "rows": rows,
        "offer_us": round(offer * us, 2),
        "flush_us": round(flush * us, 2),
        "flush_cpu_us": round(flush_cpu * us, 2),
        "record_bytes": round(size / rows),
    }


def routing_cost() -> dict[str, Any]:
    """Per-variant stats: ``RolloutRouter.pick`` + ``observe`` (on the request path only during
    a rollout) against the single-variant router's ``pick``, in process (rollout_bench)."""
    from rollout_bench import routing

    return routing(calls=50_000)


# -- the report -------------------------------------------------------------------------------


def summarize(found: dict[str, Any], levels: list[int]) -> dict[str, Any]:
    turns = found["turns"]
    out: dict[str, Any] = {}
    for name in CONFIGS:
        per_level: dict[str, Any] = {}
        for c in levels:
            mine = {t["round"]: t for t in turns if t["config"] == name and t["c"] == c}
            base = {t["round"]: t for t in turns if t["config"] == "A" and t["c"] == c}
            ratios = sorted(mine[r]["p50_ms"] / base[r]["p50_ms"] for r in mine)
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            per_level[str(c)] = {
                key: statistics.median(t[key] for t in mine.values()) for key in MEDIANS
            } | {
                "p50_ratio": round(statistics.median(ratios), 4),
                "p50_ratio_quartiles": [round(q[0], 4), round(q[2], 4)],
                "p50_ratios": [round(x, 4) for x in ratios],
                "errors": sum(sum(t["errors"].values()) for t in mine.values()),
            }
        out[name] = {
            "levels": per_level,
            "answered": found["answered"][name],
            "gc_collections": [
                sum(t["gc_collections"][g] for t in turns if t["config"] == name) for g in range(3)
            ],
            "gc_longest_ms": max(t["gc_longest_ms"] for t in turns if t["config"] == name),
        }
        out[name] |= found["capture"][name]
        out[name]["dropped"] = found["dropped"][name]
    checks = found["monitor"]
    out["C"]["monitor"] = {
        "checks": len(checks),
        "median_s": statistics.median(m["seconds"] for m in checks) if checks else None,
        "cpu_s": round(sum(m["cpu_s"] for m in checks), 2),
        "records": sum(m["records"] for m in checks),
        "cpu_us_per_record": (
            round(sum(m["cpu_s"] for m in checks) / sum(m["records"] for m in checks) * 1e6, 1)
            if any(m["records"] for m in checks)
            else None
        ),
        "status": sorted({s for m in checks for s in m["status"].values()}),
    }
    return out


def markdown(report: dict[str, Any]) -> str:
    m, s, summary = report["machine"], report["settings"], report["summary"]
    levels = s["levels"]
    lines = [
        f"# Monitoring overhead bench, {report['date']}",
        "",
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory_gib']} GiB, Python {m['python']}; "
        f"load average {m['loadavg_before']} before, {m['loadavg_after']} after.",
        f"Model: {report['model']}. Load: wrk -t1, keep-alive, one-row JSON POST to "
        f"`/invocations`. Four endpoints up together, each on a copy of the workspace "
        f"(`worker_idle_s` 600 for all); {s['warmup']} s warm-up each, then {s['rounds']} "
        f"rounds: per concurrency ({', '.join(map(str, levels))}), {s['duration']} s of load "
        "per endpoint, the order rotated each round. p50, p99, req/s and CPU: medians over the "
        "rounds; p50 / A: the median of the per-round ratios (quartiles beside it); CPU: user + "
        "system time per request answered, of the endpoint's processes (all; the gateway "
        "process alone, where capture runs, and the system time in it); gateway GC: the time "
        "its garbage collector took (gc.callbacks), per request.",
        "",
        "| config | c | p50 ms | p99 ms | req/s | p50 / A | quartiles | CPU µs/req | "
        "gateway CPU µs/req | of which system | gateway GC µs/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in CONFIGS:
        for c in map(str, levels):
            f = summary[name]["levels"][c]
            low, high = f["p50_ratio_quartiles"]
            lines.append(
                f"| {name} | {c} | {f['p50_ms']:.3f} | {f['p99_ms']:.2f} | {f['rps']:,.0f} | "
                f"{f['p50_ratio']:.3f} | {low:.3f}–{high:.3f} | {f['cpu_us_per_request']:,.0f} | "
                f"{f['gateway_cpu_us_per_request']:,.0f} | "
                f"{f['gateway_system_us_per_request']:,.0f} | {f['gc_us_per_request']:.1f} |"
            )
    lines += ["", "Configurations:", ""]
    for name, about in CONFIGS.items():
        x = summary[name]
        line = (
            f"- **{name}** {about}: {x['records']:,} records captured for {x['answered']:,} "
            f"requests answered, in {x['files']} files ({x['bytes'] / 2**20:.1f} MB), "
            f"{x['dropped'] or 0:.0f} dropped; the gateway's garbage collections during the "
            f"load, generations 0/1/2: {'/'.join(map(str, x['gc_collections']))}, the longest "
            f"{x['gc_longest_ms']} ms"
        )
        if "monitor" in x:
            mon = x["monitor"]
            line += (
                f"; {mon['checks']} monitor checks, median {mon['median_s']:.2f} s each, "
                f"{mon['cpu_s']:.1f} CPU s in all for {mon['records']:,} records read "
                f"({mon['cpu_us_per_record']} µs each), verdicts "
                f"{', '.join(mon['status']) or '-'} (wrk sends one row over and over)"
            )
        lines.append(line + ".")
    lines += ["", f"Goal: p50 with monitoring ≤ {GOAL} × p50 without, under load.", ""]
    for goal in report["goals"]:
        lines.append(
            f"- {goal['what']}: {goal['ratio']:.3f} ({'met' if goal['ok'] else 'MISSED'}; "
            f"noise: A2/A {goal['noise']:.3f}, quartiles {goal['noise_quartiles'][0]:.3f}–"
            f"{goal['noise_quartiles'][1]:.3f})"
        )
    cost, r = report.get("capture_cost"), report.get("routing")
    if cost:
        lines += [
            "",
            f"Capture per one-row request, in process ({cost['rows']:,} requests, lines of "
            f"{cost['record_bytes']:,} bytes): `offer` {cost['offer_us']} µs on the event loop "
            "(the row and its prediction encoded to JSON there); the flusher thread "
            f"{cost['flush_us']} µs ({cost['flush_cpu_us']} µs CPU): its lines, the file write "
            "(fsync) and the counts.",
        ]
    if r:
        lines += [
            "",
            f"Per-variant stats (on the request path only during a rollout; in process): "
            f"`RolloutRouter.pick` + `observe` {r['rollout_pick_and_observe_us']} µs per "
            f"request, against {r['single_variant_pick_us']} µs for the single-variant `pick`.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per turn (5)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up each (3)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of turns (6)")
    parser.add_argument("--levels", default="8,1", help="wrk connections (8,1)")
    parser.add_argument("--monitor-interval", type=float, default=5.0, help="C: seconds (5)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md and .json")
    parser.add_argument("--keep", action="store_true", help="keep the workspaces and logs")
    parser.add_argument(
        "--model",
        choices=("sklearn", "python"),
        default="sklearn",
        help="sklearn: trained by `tidal run` (the default); python: a plain-Python model, "
        "deployed without a training step (for a machine without MLflow)",
    )
    args = parser.parse_args(argv)
    args.levels = [int(c) for c in args.levels.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every finally stops its server
    ensure_wrk()

    started = time.monotonic()
    report: dict[str, Any] = {
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "keep")}
        | {"endpoint_env": ENDPOINT_ENV},
        "configs": CONFIGS,
    }
    if report["machine"]["loadavg_before"][0] > 0.5:
        print(f"note: load average {report['machine']['loadavg_before']}: other work skews figures")
    root = Path(tempfile.mkdtemp(prefix="tidal-monitoring-bench-"))
    try:
        logs = root / "logs"
        logs.mkdir()
        model = deploy_python(root) if args.model == "python" else deploy(root, "tabular", 0)
        report["model"] = model.description
        print(f"model v{model.version} trained and deployed in {model.train_s:.0f} s")
        workspaces = {name: root / f"ws-{name}" for name in CONFIGS}
        for folder in workspaces.values():  # the same model folder: its path is in state.db
            shutil.copytree(model.workspace, folder, symlinks=True)
        found = bench(workspaces, model.body, args, logs)
        found["capture"] = {name: capture_files(ws) for name, ws in workspaces.items()}
        sample = found["capture"]["B"]["sample"]
        for files in found["capture"].values():
            files.pop("sample")
        if sample is not None:
            report["capture_cost"] = capture_cost(sample)
        report["routing"] = routing_cost()
    finally:
        if args.keep:
            print(f"kept {root} (workspaces, logs)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["orders"], report["turns"] = found["orders"], found["turns"]
    report["monitor_checks"] = found["monitor"]
    report["summary"] = summary = summarize(found, args.levels)
    report["goals"] = [
        {
            "what": f"{name}/A p50 at c={c}",
            "ratio": summary[name]["levels"][str(c)]["p50_ratio"],
            "ok": summary[name]["levels"][str(c)]["p50_ratio"] <= GOAL,
            "noise": summary["A2"]["levels"][str(c)]["p50_ratio"],
            "noise_quartiles": summary["A2"]["levels"][str(c)]["p50_ratio_quartiles"],
        }
        for c in args.levels
        for name in ("B", "C")
    ]
    report["seconds"] = round(time.monotonic() - started, 1)
    save(report, markdown(report), args.out, "monitoring")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every endpoint and the monitor were stopped on the way out
        print("\ninterrupted: the processes it started are stopped", file=sys.stderr)
        sys.exit(130)
