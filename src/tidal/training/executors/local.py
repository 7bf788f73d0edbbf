"""The local executor: a training job as a subprocess of its own, laid out like /opt/ml.

The job folder holds ``code/`` (the job's working folder), ``input/data/<channel>/`` (staged
from the store), ``model/``, ``output/data/`` and ``checkpoints/``; the environment carries
SageMaker's ``SM_*`` variables.
Log lines are streamed as they come and kept in ``job.log``; lines starting with ``@tidal ``
carry JSON events (progress, metrics) from the job.

Inputs are staged for the job's life only: when it ends, ``input/data/`` is removed and
``input/manifest.json`` keeps what it read (each channel's URIs, sha256 and sizes), so the
jobs folder grows by a model and a log per run, not by every accumulated training set again.

Checkpoints (``spec.checkpoint_uri``): before the job starts, the newest complete checkpoint in
the store is brought into ``checkpoints/`` (unless the folder, kept from an earlier attempt of
the same job, already has one as new); while it runs, a background thread uploads each new
complete checkpoint (its marker last) and prunes the store to the newest
``hyperparameters["checkpoint"]["keep"]``; when it ends without success a last sync runs (a
checkpoint written on SIGTERM reaches the store); when it succeeds the local ones are removed.
A job killed by a signal (SIGTERM, SIGKILL) or exiting 75 is ``INTERRUPTED``: run again, it
resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidal.errors import EXIT_RETRY
from tidal.lifeline import job_preexec
from tidal.storage import Store, sha256_file
from tidal.training import checkpoints
from tidal.training.executors.base import Executor, JobHandle, JobResult, JobSpec, JobStatus

if TYPE_CHECKING:
    from tidal.workspace import Workspace

EVENT_PREFIX = "@tidal "
_DONE = object()


def parse_event(line: str) -> dict[str, Any] | None:
    """The JSON event carried by a log line, or None for an ordinary line."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX) :])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def sm_environment(spec: JobSpec, root: Path, channels: list[str]) -> dict[str, str]:
    """The variables SageMaker gives a training container, pointing into ``root``."""
    cpus = spec.cpus or os.cpu_count() or 1
    env = {
        "SM_MODEL_DIR": str(root / "model"),
        "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
        "SM_OUTPUT_DIR": str(root / "output"),
        "SM_INPUT_DIR": str(root / "input"),
        "SM_INPUT_CONFIG_DIR": str(root / "input" / "config"),
        "SM_CHECKPOINT_DIR": str(root / "checkpoints"),
        "SM_CHANNELS": json.dumps(sorted(channels)),
        "SM_HPS": json.dumps(spec.hyperparameters),
        "SM_NUM_GPUS": str(spec.gpus),
        "SM_NUM_CPUS": str(cpus),
        "SM_CURRENT_HOST": "algo-1",
        "SM_HOSTS": json.dumps(["algo-1"]),
        "SM_USER_ARGS": json.dumps(hyperparameter_args(spec.hyperparameters)),
        "PYTHONUNBUFFERED": "1",
        # thread pools follow the job's CPU share: oversubscribed OpenMP is 3-10x slower
        "OMP_NUM_THREADS": str(cpus),
        "OPENBLAS_NUM_THREADS": str(cpus),
        "MKL_NUM_THREADS": str(cpus),
    }
    for name in channels:
        env[f"SM_CHANNEL_{name.upper()}"] = str(root / "input" / "data" / name)
    return env


def hyperparameter_args(hps: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in hps.items():
        text = value if isinstance(value, str) else json.dumps(value)
        args += [f"--{key}", text]
    return args


class LocalExecutor(Executor):
    name = "local"

    sync_interval_s = 1.0  # how often a running job's checkpoints are looked for

    def __init__(self, store: Store, jobs_root: Path) -> None:
        self.store = store
        self.jobs_root = jobs_root

    def submit(self, spec: JobSpec) -> JobHandle:
        root = self.jobs_root / spec.name
        _stop_orphan(root)
        # an earlier attempt's checkpoints stay: they may be newer than the store's (its
        # controller died before the last upload)
        _clear(root, keep="checkpoints" if spec.checkpoint_uri else None)
        for sub in ("model", "output/data", "checkpoints", "input/config"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        uploader = None
        if spec.checkpoint_uri:
            prefix = self.store.key_of(spec.checkpoint_uri)
            checkpoints.download_latest(self.store, prefix, root / "checkpoints")
            keep = int((spec.hyperparameters.get("checkpoint") or {}).get("keep", 2))
            uploader = checkpoints.Uploader(
                root / "checkpoints", self.store, prefix, keep=keep, interval_s=self.sync_interval_s
            )
        staged: dict[str, list[dict[str, Any]]] = {}
        for channel, uris in spec.channels.items():
            folder = root / "input" / "data" / channel
            folder.mkdir(parents=True, exist_ok=True)
            for i, uri in enumerate(uris):
                key = self.store.key_of(uri)
                local = folder / f"{i:04d}-{Path(key).name}"
                self.store.get_file(key, local)
                staged.setdefault(channel, []).append(
                    {"uri": uri, "sha256": sha256_file(local), "bytes": local.stat().st_size}
                )
        (root / "input" / "manifest.json").write_text(json.dumps(staged, indent=2))
        (root / "input/config/hyperparameters.json").write_text(json.dumps(spec.hyperparameters))
        code = root / "code"
        if spec.code_dir:
            shutil.copytree(spec.code_dir, code, ignore=shutil.ignore_patterns(".tidal", ".git"))
        code.mkdir(exist_ok=True)
        env = {**os.environ, **sm_environment(spec, root, list(spec.channels)), **spec.env}
        log = open(root / "job.log", "w", encoding="utf-8")  # noqa: SIM115 - closed by the reader
        proc = subprocess.Popen(
            [*spec.command, *hyperparameter_args(spec.hyperparameters)],
            cwd=code,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, not the job
            preexec_fn=job_preexec(),  # killed with us, even by kill -9: no orphan
        )
        (root / "job.pid").write_text(str(proc.pid))
        lines: queue.Queue[object] = queue.Queue()
        tail: deque[str] = deque(maxlen=40)

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                log.write(line + "\n")
                log.flush()
                tail.append(line)
                lines.put(line)
            proc.stdout.close()
            log.close()
            lines.put(_DONE)

        reader = threading.Thread(target=read, name=f"job-{spec.name}-log", daemon=True)
        reader.start()
        if uploader is not None:
            uploader.start()
        return JobHandle(
            id=spec.name,
            spec=spec,
            backend_data={
                "proc": proc,
                "root": root,
                "lines": lines,
                "tail": tail,
                "reader": reader,
                "started": time.monotonic(),
                "events": [],
                "uploader": uploader,
            },
        )

    def logs(self, handle: JobHandle) -> Iterator[str]:
        lines: queue.Queue[object] = handle.backend_data["lines"]
        if handle.backend_data.get("drained"):
            return
        deadline = handle.backend_data["started"] + handle.spec.timeout_s
        while True:
            try:
                item = lines.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() > deadline:
                    self.cancel(handle)
                    handle.backend_data["timed_out"] = True
                continue
            if item is _DONE:
                handle.backend_data["drained"] = True
                return
            line = str(item)
            event = parse_event(line)
            if event is not None:
                handle.backend_data["events"].append(event)
            yield line

    def poll(self, handle: JobHandle) -> JobStatus:
        code = handle.backend_data["proc"].poll()
        if code is None:
            return JobStatus.RUNNING
        return _status(code)

    def cancel(self, handle: JobHandle) -> None:
        proc: subprocess.Popen[str] = handle.backend_data["proc"]
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)

    def collect(self, handle: JobHandle) -> JobResult:
        for _ in self.logs(handle):  # drain what nobody read
            pass
        proc: subprocess.Popen[str] = handle.backend_data["proc"]
        code = proc.wait()
        handle.backend_data["reader"].join(timeout=5)
        # the inputs are in the store (input/manifest.json names them): no copy is kept
        shutil.rmtree(handle.backend_data["root"] / "input" / "data", ignore_errors=True)
        seconds = time.monotonic() - handle.backend_data["started"]
        status = _status(code)
        tail = list(handle.backend_data["tail"])
        uploader: checkpoints.Uploader | None = handle.backend_data["uploader"]
        if uploader is not None:  # the job's last checkpoint (a SIGTERM's) reaches the store
            uploader.stop(final_sync=status != JobStatus.SUCCEEDED)
            tail += [f"checkpoint upload failed: {e}" for e in uploader.errors[-3:]]
        if handle.backend_data.get("timed_out"):
            status = JobStatus.FAILED
            tail.append(f"stopped after the training timeout of {handle.spec.timeout_s} s")
        metrics: dict[str, float] = {}
        for event in handle.backend_data["events"]:
            if event.get("event") == "metrics":
                metrics.update(
                    {
                        k: float(v)
                        for k, v in event.get("metrics", {}).items()
                        if isinstance(v, int | float)
                    }
                )
        output = None
        if status == JobStatus.SUCCEEDED:
            model_dir = handle.backend_data["root"] / "model"
            prefix = self.store.key_of(handle.spec.output_uri)
            self.store.put_dir(prefix, model_dir)
            output = handle.spec.output_uri
            if uploader is not None:
                # the model is safe: its checkpoints are no use any more (the pipeline removes
                # the store's copies once it has recorded the step)
                shutil.rmtree(handle.backend_data["root"] / "checkpoints", ignore_errors=True)
        return JobResult(status, code, seconds, output, metrics, tail)

    def workdir(self, handle: JobHandle) -> Path:
        root: Path = handle.backend_data["root"]
        return root


def _stop_orphan(root: Path) -> None:
    """Kill a job left running by a controller that died (kill -9) before resubmitting it."""
    try:
        pid = int((root / "job.pid").read_text())
        if os.readlink(f"/proc/{pid}/cwd") != str(root / "code"):
            return  # that pid now belongs to another process: not ours to stop
        os.killpg(pid, signal.SIGKILL)
    except (OSError, ValueError):
        return  # no pid file, or the job is gone already
    for _ in range(50):
        try:
            os.killpg(pid, 0)
        except OSError:
            return
        time.sleep(0.05)


def _clear(root: Path, *, keep: str | None) -> None:
    """Empty a job folder for a new attempt, leaving the entry named ``keep`` in place."""
    if not root.exists():
        return
    if keep is None:
        shutil.rmtree(root)
        return
    for entry in root.iterdir():
        if entry.name == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _status(code: int) -> JobStatus:
    if code == 0:
        return JobStatus.SUCCEEDED
    # killed from outside (a spot reclaim, the OOM killer, kill -9) or stopped after writing a
    # checkpoint: another attempt may succeed, and resumes from the newest checkpoint
    if code in (EXIT_RETRY, -signal.SIGTERM, -signal.SIGKILL):
        return JobStatus.INTERRUPTED
    return JobStatus.FAILED


def build(ws: Workspace) -> LocalExecutor:
    return LocalExecutor(ws.store, ws.path("jobs"))
