"""The loop for one object: validate → prepare → train → evaluate → register → deploy.

Each step reads what earlier steps returned (kept in the controller database) and returns a
small JSON-able dict; the runner records it before moving on, so a run killed at any point
resumes after its last completed step. Steps are idempotent: a step cut short is done again and
overwrites its own outputs (keys are per run), and registration looks for an existing version
before creating one.

Where data lives in the store (``_tidal/`` beside ``incoming/``):
    _tidal/schema.json                  schema inferred from the first accepted file
    _tidal/holdout.jsonl (+ .json)      frozen holdout cut from the first accepted file
    _tidal/datasets/<version>/{train,test}.jsonl
    _tidal/runs/<run id>/model/         the candidate model folder written by training
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidal import __version__
from tidal.errors import DataRejected, NotFound, RetryableError, TidalError
from tidal.evaluation.gate import Decision
from tidal.workspace import INCOMING, META, QUARANTINE, Workspace

if TYPE_CHECKING:
    import pandas as pd

    from tidal.config import ControllerConfig
    from tidal.data.schema import Schema
    from tidal.state import Run


log = logging.getLogger("tidal.pipeline")


class Step(StrEnum):
    VALIDATE = "validate"
    PREPARE = "prepare"
    TRAIN = "train"
    EVALUATE = "evaluate"
    REGISTER = "register"
    DEPLOY = "deploy"
    DONE = "done"


ORDER = [Step.VALIDATE, Step.PREPARE, Step.TRAIN, Step.EVALUATE, Step.REGISTER, Step.DEPLOY]
NEXT = {step: (ORDER[i + 1] if i + 1 < len(ORDER) else Step.DONE) for i, step in enumerate(ORDER)}
FIRST = ORDER[0]

SCHEMA_KEY = f"{META}/schema.json"
HOLDOUT_KEY = f"{META}/holdout.jsonl"
HOLDOUT_META_KEY = f"{META}/holdout.json"

Progress = Callable[[str, dict[str, Any]], None]


class RunEnded(Exception):
    """A step ended the run early with a decision (data rejected by validation)."""

    def __init__(self, decision: Decision, reasons: list[str], extra: dict[str, Any]) -> None:
        self.decision = decision
        self.reasons = reasons
        self.extra = extra


@dataclass
class RunContext:
    ws: Workspace
    run: Run
    outputs: dict[str, dict[str, Any]]
    progress: Progress = field(default=lambda step, info: None)

    @property
    def key(self) -> str:
        return self.ws.store.key_of(self.run.uri)

    def out(self, step: Step) -> dict[str, Any]:
        return self.outputs[step.value]

    @property
    def candidate_dir(self) -> Path:
        return self.ws.path("cache") / f"run-{self.run.id}" / "model"

    def fetch_candidate(self) -> Path:
        """The trained model folder, copied from the store unless this copy is current."""
        import shutil

        from tidal.artifact import MANIFEST
        from tidal.storage import sha256_file

        local, trained = self.candidate_dir, self.out(Step.TRAIN)
        manifest = local / MANIFEST
        if not manifest.exists() or sha256_file(manifest) != trained["manifest_sha256"]:
            shutil.rmtree(local, ignore_errors=True)
            self.ws.store.get_dir(self.ws.store.key_of(trained["model_uri"]), local)
        return local


# -- steps ------------------------------------------------------------------------------------


def validate(ctx: RunContext) -> dict[str, Any]:
    from tidal.data.validate import check, check_size, read_table

    store = ctx.ws.store
    schema = load_schema(ctx.ws)
    try:
        check_size(store.size(ctx.key), ctx.key, ctx.ws.config.validation.max_file_mb)
        frame = read_table(store.get_bytes(ctx.key), ctx.key)
        report = check(frame, schema, ctx.ws.config, name=ctx.key)
    except DataRejected as exc:
        target = quarantine(ctx.ws, ctx.key, exc.problems, ctx.run)
        raise RunEnded(Decision.INVALID, exc.problems, {"quarantine": store.uri(target)}) from exc
    return {"rows": report.rows, "columns": report.columns, "warnings": report.warnings}


def prepare(ctx: RunContext) -> dict[str, Any]:
    from tidal.data.prepare import cap_share, dataset_version, drop_known, split, to_jsonl
    from tidal.data.schema import infer_schema
    from tidal.data.validate import coerce, read_table

    ws, store, cfg = ctx.ws, ctx.ws.store, ctx.ws.config
    frame = read_table(store.get_bytes(ctx.key), ctx.key)
    schema = load_schema(ws)
    if schema is None or _created_by(ws, SCHEMA_KEY) == ctx.run.id:
        schema = infer_schema(frame, cfg.data)
        payload = json.loads(schema.to_json()) | {"created_by_run": ctx.run.id}
        store.put_bytes(SCHEMA_KEY, json.dumps(payload, indent=2).encode())
    frame = coerce(frame, schema)
    version = dataset_version(ctx.run.sha256)
    holdout_rows = None
    if not store.exists(HOLDOUT_META_KEY):
        _refuse_second_holdout(ws, ctx.run.id)
    if not store.exists(HOLDOUT_META_KEY) or _created_by(ws, HOLDOUT_META_KEY) == ctx.run.id:
        frame, holdout = split(
            frame, cfg.data.holdout_fraction, label_column=schema.label_column, seed=cfg.data.seed
        )
        store.put_bytes(HOLDOUT_KEY, to_jsonl(holdout))
        meta = {"created_by_run": ctx.run.id, "dataset_version": version, "rows": len(holdout)}
        store.put_bytes(HOLDOUT_META_KEY, json.dumps(meta).encode())
        holdout_rows = len(holdout)
    notes: list[str] = []
    if holdout_rows is None:  # the holdout is an earlier file's: rows of it must not train
        known = coerce(read_table(store.get_bytes(HOLDOUT_KEY), HOLDOUT_KEY), schema)
        frame, leaked = drop_known(frame, known, schema.feature_names)
        if leaked:
            notes.append(
                f"{leaked} rows of {Path(ctx.key).name} have the features of rows of the frozen "
                "holdout: rejected (leakage), never trained or tested on"
            )
        if len(frame) < 2:
            problems = [*notes, "fewer than 2 rows are left to train and test on"]
            target = quarantine(ws, ctx.key, problems, ctx.run)
            raise RunEnded(Decision.INVALID, problems, {"quarantine": store.uri(target)})
    train, test = split(
        frame, cfg.data.test_fraction, label_column=schema.label_column, seed=cfg.data.seed
    )
    if cfg.data.accumulate:
        share = cfg.validation.max_file_share
        before = accepted_train_rows(ws, exclude=ctx.run.id)
        train, capped = cap_share(
            train, before, share, label_column=schema.label_column, seed=cfg.data.seed
        )
        if capped:
            notes.append(
                f"{capped} training rows of {Path(ctx.key).name} left out: one file may be at "
                f"most {share:g} of the accumulated training set ({before} rows before it; "
                "validation.max_file_share)"
            )
    prefix = f"{META}/datasets/{version}"
    store.put_bytes(f"{prefix}/train.jsonl", to_jsonl(train))
    store.put_bytes(f"{prefix}/test.jsonl", to_jsonl(test))
    train_uris = [store.uri(f"{prefix}/train.jsonl")]
    if cfg.data.accumulate:
        train_uris = accepted_train_sets(ws, exclude=ctx.run.id) + train_uris
    return {
        "dataset_version": version,
        "train_uri": store.uri(f"{prefix}/train.jsonl"),
        "test_uri": store.uri(f"{prefix}/test.jsonl"),
        "train_uris": train_uris,
        "rows": {"train": len(train), "test": len(test), "holdout": holdout_rows},
        "schema": json.loads(schema.to_json()),
        "notes": notes,
    }


def train(ctx: RunContext) -> dict[str, Any]:
    import sys

    from tidal.training import checkpoints
    from tidal.training.executors.base import JobSpec, JobStatus
    from tidal.training.executors.local import parse_event

    ws, cfg, prep = ctx.ws, ctx.ws.config, ctx.out(Step.PREPARE)
    output_uri = ws.store.uri(f"{META}/runs/{ctx.run.id}/model")
    checkpoint_prefix = f"{META}/runs/{ctx.run.id}/checkpoints"
    spec = JobSpec(
        name=f"run-{ctx.run.id}",
        command=[sys.executable, "-m", "tidal.training.entrypoint"],
        channels={"train": prep["train_uris"], "test": [prep["test_uri"]]},
        hyperparameters={
            "recipe": cfg.training.recipe,
            "params": cfg.training.params,
            "seed": cfg.data.seed,
            "schema": prep["schema"] | {"task": cfg.data.task},
            "checkpoint": {
                "every_steps": cfg.training.checkpoint_every_steps,
                "every_s": cfg.training.checkpoint_every_s,
                "keep": cfg.training.checkpoints_keep,
            },
            "device": cfg.training.device,
            "threads": cfg.training.threads,
        },
        output_uri=output_uri,
        checkpoint_uri=ws.store.uri(checkpoint_prefix),
        timeout_s=cfg.training.timeout_s,
        cpus=cfg.training.threads,
    )
    if cfg.training.recipe == "script":  # the user's train.py under the same contract
        from tidal.training.recipes.script import script_job

        spec = script_job(cfg, ws.root, ws.store).apply(spec)
    executor = ws.executor
    reporter = _TrainingReporter(ws, ctx.run.id)
    handle = executor.submit(spec)
    try:
        for line in executor.logs(handle):
            event = parse_event(line)
            if event is None:
                continue
            if event.get("event") == "progress":
                ctx.progress("train", event)
                reporter.report(event)
            elif event.get("event") == "resumed":
                ctx.progress("train", event)
                ws.state.event(
                    "run.resumed",
                    f"run {ctx.run.id}: training resumed from its checkpoint at step "
                    f"{event.get('step')}",
                    model=ws.model_name,
                    run_id=ctx.run.id,
                    data={"step": event.get("step")},
                )
        result = executor.collect(handle)
    except BaseException:  # Ctrl-C or an error here: stop the job too, it resumes on restart
        executor.cancel(handle)
        raise
    if result.status == JobStatus.INTERRUPTED:
        raise RetryableError(
            f"training job {spec.name} was interrupted (exit {result.exit_code}); it will be "
            "retried and resume from its newest checkpoint"
        )
    if result.status != JobStatus.SUCCEEDED:
        tail = "\n".join(result.log_tail[-15:])
        raise TidalError(f"training job {spec.name} failed (exit {result.exit_code}):\n{tail}")
    if cfg.training.recipe == "script":  # give what the script wrote a manifest
        from tidal.training.recipes.script import adopt_stored

        local = ctx.candidate_dir
        schema = prep["schema"] | {"task": cfg.data.task}
        adopt_stored(ws.store, output_uri, local, schema, params=cfg.training.params)
    manifest_key = ws.store.key_of(output_uri) + "/tidal-model.json"
    metrics = dict(result.metrics)
    resumed_from = metrics.pop("resumed_from_step", None)
    output = {
        "model_uri": output_uri,
        "manifest_sha256": ws.store.sha256(manifest_key),
        "executor": executor.name,
        "train_seconds": round(result.seconds, 3),
        "train_metrics": metrics,
        "train_sets": len(prep["train_uris"]),
        "steps": int(metrics["steps"]) if "steps" in metrics else None,
        "resumed_from_step": int(resumed_from) if resumed_from is not None else None,
    }
    try:  # the model is in the store: the run's checkpoints are no use any more
        checkpoints.delete_remote(ws.store, checkpoint_prefix)
    except TidalError as exc:
        ws.state.event(
            "run.warning",
            f"run {ctx.run.id}: could not remove its checkpoints: {exc}",
            model=ws.model_name,
            run_id=ctx.run.id,
        )
    return output


class _TrainingReporter:
    """Keeps ``tidal status`` and MLflow up to date while a job trains (every few seconds)."""

    def __init__(self, ws: Workspace, run_id: int, every_s: float = 2.0) -> None:
        self.ws, self.run_id, self.every_s = ws, run_id, every_s
        self.last = 0.0
        self.mlflow_ok = True

    def report(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and event.get("step") != event.get("total"):
            return
        self.last = now
        data = {k: v for k, v in event.items() if k != "event"}
        self.ws.state.set_progress(self.run_id, data)
        numbers = {
            k: v
            for k, v in data.items()
            if isinstance(v, (int, float)) and k not in ("step", "total")
        }
        if not (self.mlflow_ok and numbers and isinstance(data.get("step"), int)):
            return
        try:
            self.ws.registry.log_training(self.run_id, numbers, int(data["step"]))
        except Exception as exc:  # streaming is a nicety: training goes on without it
            self.mlflow_ok = False
            log.warning("run %s: streaming metrics to MLflow stopped: %s", self.run_id, exc)


def evaluate(ctx: RunContext) -> dict[str, Any]:
    from tidal.artifact import load_predictor
    from tidal.data.prepare import from_jsonl
    from tidal.evaluation.gate import decide

    ws, store = ctx.ws, ctx.ws.store
    trained, prep = ctx.out(Step.TRAIN), ctx.out(Step.PREPARE)
    candidate = load_predictor(ctx.fetch_candidate(), trained["manifest_sha256"])
    test = f"test:{Path(ctx.key).name}"
    slices = {
        "holdout": from_jsonl(store.get_bytes(HOLDOUT_KEY)),
        test: from_jsonl(store.get_bytes(store.key_of(prep["test_uri"]))),
    }
    # a retrain file of late labels is untrusted: the comparison rests on the holdout alone
    untrusted = [test] if _from_late_labels(ws, ctx.run) else []
    trusted = [name for name in slices if name not in untrusted]
    label = prep["schema"]["label_column"]
    candidate_scores = score(candidate, slices, label, combine=trusted)
    champion_scores, champion_version = None, None
    deployment = ws.state.current_deployment(ws.model_name)
    if deployment is not None:
        champion = load_predictor(Path(deployment.model_dir), deployment.manifest_sha256)
        champion_scores = score(champion, slices, label, combine=trusted)
        champion_version = deployment.version
    result = decide(
        candidate_scores,
        champion_scores,
        ws.config.gate,
        champion_version=champion_version,
        untrusted=untrusted,
    )
    return result.to_dict()


def _from_late_labels(ws: Workspace, run: Run) -> bool:
    """Whether the run trains on a retrain file the policy made from late labels (by its name,
    which the policy gives before the decision is recorded, or by the decision)."""
    from tidal.monitoring.policy import FILE_PREFIX, decisions

    if Path(ws.store.key_of(run.uri)).name.startswith(FILE_PREFIX):
        return True
    return any(d.run_id == run.id for d in decisions(ws, limit=1000) if d.action == "retrain")


def register(ctx: RunContext) -> dict[str, Any]:
    from tidal.registry import metric_key

    ws = ctx.ws
    prep, trained, gate = ctx.out(Step.PREPARE), ctx.out(Step.TRAIN), ctx.out(Step.EVALUATE)
    local = ctx.fetch_candidate()
    # slice names carry file names: escaped for MLflow here, readable in the decision record
    metrics = {
        f"{who}.{metric_key(s)}.{metric_key(m)}": v
        for who in ("candidate", "champion")
        for s, ms in (gate[who] or {}).items()
        for m, v in ms.items()
    }
    metrics |= {f"train.{metric_key(k)}": v for k, v in trained["train_metrics"].items()}
    metrics["compute_seconds"] = trained["train_seconds"]
    tags = {
        "tidal.decision": gate["decision"],
        "tidal.source_uri": ctx.run.uri,
        "tidal.source_sha256": ctx.run.sha256,
        "tidal.dataset_version": prep["dataset_version"],
        "tidal.training_sets": json.dumps(prep["train_uris"]),
        "tidal.manifest_sha256": trained["manifest_sha256"],
        "tidal.code_version": code_version(),
        "tidal.recipe": ws.config.training.recipe,
    }
    params = {
        "recipe": ws.config.training.recipe,
        "executor": trained["executor"],
        **{f"param.{metric_key(k)}": v for k, v in ws.config.training.params.items()},
        "train_rows": prep["rows"]["train"],
        "seed": ws.config.data.seed,
    }
    record = build_record(ctx, gate["decision"], version=None)
    info = ws.registry.register(
        run_id=ctx.run.id, model_dir=local, params=params, metrics=metrics, tags=tags, record=record
    )
    baseline_uri = None
    if gate["decision"] == Decision.PROMOTED:  # only a version that will serve is monitored
        baseline_uri = _save_baseline(ctx, prep, local, trained["manifest_sha256"], info.version)
    return {"version": info.version, "mlflow_run_id": info.run_id, "baseline_uri": baseline_uri}


def _save_baseline(
    ctx: RunContext, prep: dict[str, Any], local: Path, manifest_sha256: str, version: str
) -> str | None:
    """The drift baseline of a version to serve (training data, holdout predictions); a
    failure is an event, never a failed registration."""
    from tidal.monitoring.job import baseline_for_run, save_baseline

    ws = ctx.ws
    try:
        return save_baseline(ws, version, baseline_for_run(ws, prep, local, manifest_sha256))
    except Exception as exc:
        log.warning("run %s: no drift baseline for v%s: %s", ctx.run.id, version, exc)
        ws.state.event(
            "run.warning",
            f"run {ctx.run.id}: no drift baseline for v{version}: {exc}",
            model=ws.model_name,
            run_id=ctx.run.id,
        )
        return None


def deploy(ctx: RunContext) -> dict[str, Any]:
    ws = ctx.ws
    gate, reg = ctx.out(Step.EVALUATE), ctx.out(Step.REGISTER)
    if gate["decision"] != Decision.PROMOTED:
        return {"deployed": None}
    from tidal.deploy import promote

    strategy = ws.config.rollout.strategy
    if strategy != "all_at_once" and ws.state.current_deployment(ws.model_name) is not None:
        # a champion serves: the new version earns its traffic through the configured rollout
        from tidal.rollout.manager import Manager

        rollout = Manager(ws).start(reg["version"], run_id=ctx.run.id)
        return {"deployed": None, "rollout_id": rollout["id"], "strategy": strategy}
    deployment = promote(
        ws, reg["version"], reason=f"promoted by run {ctx.run.id}", run_id=ctx.run.id
    )
    return {"deployed": deployment.version, "model_dir": deployment.model_dir}


STEPS: dict[Step, Callable[[RunContext], dict[str, Any]]] = {
    Step.VALIDATE: validate,
    Step.PREPARE: prepare,
    Step.TRAIN: train,
    Step.EVALUATE: evaluate,
    Step.REGISTER: register,
    Step.DEPLOY: deploy,
}


# -- the runner -------------------------------------------------------------------------------


def execute(
    ws: Workspace, run: Run, owner: str, progress: Progress | None = None
) -> dict[str, Any]:
    """Run ``run`` from its next step to the end; returns its decision record.

    The caller holds the run's lease; a heartbeat renews it while steps work. A retryable
    error gives the run back to the queue (up to ``controller.max_attempts``); any other error
    ends it as failed with the message.
    """
    state = ws.state
    outputs = state.step_outputs(run.id)
    resumed_from = run.step if outputs else None
    ctx = RunContext(ws, run, outputs, progress or (lambda step, info: None))
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(ws, run.id, owner, stop), daemon=True)
    beat.start()
    try:
        if run.attempts > ws.config.controller.max_attempts:
            raise TidalError(
                f"gave up after {run.attempts - 1} attempts (controller.max_attempts); "
                f"the last error: {run.error or 'the process running it died'}"
            )
        step = Step(run.step)
        while step != Step.DONE:
            ctx.progress(step.value, {"event": "start"})
            started = time.monotonic()
            output = STEPS[step](ctx)
            seconds = time.monotonic() - started
            state.step_done(run.id, step.value, NEXT[step].value, output, seconds)
            outputs[step.value] = output | {"_seconds": seconds}
            ctx.progress(step.value, {"event": "done", "seconds": seconds})
            step = NEXT[step]
        gate = outputs[Step.EVALUATE.value]
        record = build_record(
            ctx, gate["decision"], version=outputs[Step.REGISTER.value]["version"]
        )
        record["resumed_from_stage"] = resumed_from
        record["resumed_from_step"] = outputs[Step.TRAIN.value].get("resumed_from_step")
        deploy = outputs.get(Step.DEPLOY.value) or {}
        if deploy.get("rollout_id") is not None:
            record["rollout"] = {"id": deploy["rollout_id"], "strategy": deploy.get("strategy")}
        state.finish(run.id, decision=record["decision"], record=record)
        state.event(
            f"run.{record['decision']}",
            _summary(record),
            model=ws.model_name,
            run_id=run.id,
            data={"version": record["version"]},
        )
        return record
    except RunEnded as ended:
        record = build_record(ctx, ended.decision, version=None, reasons=ended.reasons)
        record |= ended.extra
        state.finish(run.id, decision=ended.decision.value, record=record)
        state.event(f"run.{ended.decision}", _summary(record), model=ws.model_name, run_id=run.id)
        return record
    except RetryableError as exc:
        current = state.run(run.id)
        attempts = current.attempts if current else run.attempts
        if attempts < ws.config.controller.max_attempts:
            wait = backoff_s(attempts, ws.config.controller)
            state.release(run.id, owner, requeue=True, error=str(exc), retry_at=time.time() + wait)
            state.event(
                "run.retry",
                f"run {run.id}: attempt {attempts} of {ws.config.controller.max_attempts} "
                f"failed, next in {wait:.1f} s: {exc}",
                model=ws.model_name,
                run_id=run.id,
                data={"attempt": attempts, "wait_s": round(wait, 3)},
            )
            raise
        return _fail(ws, ctx, exc)
    except TidalError as exc:
        return _fail(ws, ctx, exc)
    except Exception as exc:  # an internal error still ends the run with its message
        return _fail(ws, ctx, exc)
    finally:
        stop.set()


def backoff_s(
    attempt: int, cfg: ControllerConfig, rand: Callable[[], float] = random.random
) -> float:
    """The wait after the ``attempt``-th try (1, 2, ...) failed for a temporary reason:
    ``retry_base_s`` doubled each time up to ``retry_max_s``, with jitter over its upper half
    (so runs failing together do not come back together)."""
    ceiling = min(cfg.retry_max_s, cfg.retry_base_s * 2 ** max(attempt - 1, 0))
    return float(ceiling / 2 + rand() * ceiling / 2)


def _fail(ws: Workspace, ctx: RunContext, exc: BaseException) -> dict[str, Any]:
    record = build_record(ctx, None, version=None, reasons=[f"{type(exc).__name__}: {exc}"])
    record["decision"] = "failed"
    # a temporary cause: 'tidal up' queues the run again once the store answers
    record["retryable"] = isinstance(exc, RetryableError)
    if Step.PREPARE.value in ctx.outputs:  # training may have opened its MLflow run
        try:
            ws.registry.close_run(ctx.run.id, failed=True)
        except Exception as close_exc:
            log.warning("run %s: its MLflow run stays open: %s", ctx.run.id, close_exc)
    ws.state.finish(ctx.run.id, decision="failed", record=record, failed=True, error=str(exc))
    ws.state.event(
        "run.failed", f"run {ctx.run.id} failed: {exc}", model=ws.model_name, run_id=ctx.run.id
    )
    return record


def _heartbeat(ws: Workspace, run_id: int, owner: str, stop: threading.Event) -> None:
    every = ws.config.controller.lease_s / 3
    while not stop.wait(every):
        ws.state.renew(run_id, owner, ws.config.controller.lease_s)


@functools.cache
def code_version() -> str:
    """Tidal's version plus a digest of its source files: what code made a model."""
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{__version__}+src.{digest.hexdigest()[:12]}"


def build_record(
    ctx: RunContext, decision: str | None, *, version: str | None, reasons: list[str] | None = None
) -> dict[str, Any]:
    """The decision record: what was decided, on what evidence, from which data and code."""
    outputs = ctx.outputs
    gate = outputs.get(Step.EVALUATE.value, {})
    prep = outputs.get(Step.PREPARE.value, {})
    deployment = ctx.ws.state.current_deployment(ctx.ws.model_name)
    now = time.time()
    started = ctx.run.started_at or now
    return {
        "run_id": ctx.run.id,
        "decision": decision,
        "version": version,
        "champion": deployment.version if deployment else None,
        "metrics": {"candidate": gate.get("candidate"), "champion": gate.get("champion")},
        "champion_before": gate.get("champion_version"),
        "thresholds": gate.get("thresholds"),
        "reasons": reasons if reasons is not None else gate.get("reasons", []),
        "notes": prep.get("notes", []),
        "source": ctx.run.uri,
        "sha256": ctx.run.sha256,
        "dataset_version": prep.get("dataset_version"),
        "training_sets": prep.get("train_uris"),
        "code_version": code_version(),
        "steps": {k: round(v.get("_seconds", 0.0), 3) for k, v in outputs.items()},
        "seconds": round(now - started, 3),
        "seconds_since_landing": round(now - (ctx.run.landed_at or started), 3),
    }


def _summary(record: dict[str, Any]) -> str:
    decision = record["decision"]
    if decision == Decision.PROMOTED and record.get("rollout"):
        rollout = record["rollout"]
        return (
            f"run {record['run_id']}: v{record['version']} passed the gate; rollout "
            f"{rollout['id']} ({rollout['strategy']}) started, v{record['champion']} serves "
            "until it completes"
        )
    if decision == Decision.PROMOTED:
        return f"run {record['run_id']}: v{record['version']} promoted and deployed"
    if decision == Decision.REJECTED:
        return f"run {record['run_id']}: v{record['version']} rejected by the gate"
    return f"run {record['run_id']}: {decision}: {'; '.join(record['reasons'])[:300]}"


# -- helpers the steps and the CLI share ------------------------------------------------------


def load_schema(ws: Workspace) -> Schema | None:
    from tidal.data.schema import Schema

    try:
        data = json.loads(ws.store.get_bytes(SCHEMA_KEY))
    except NotFound:
        return None
    data.pop("created_by_run", None)
    return Schema.from_json(json.dumps(data))


def _created_by(ws: Workspace, key: str) -> int | None:
    try:
        value = json.loads(ws.store.get_bytes(key)).get("created_by_run")
    except NotFound:
        return None
    return int(value) if value is not None else None


def _refuse_second_holdout(ws: Workspace, run_id: int) -> None:
    """The holdout is cut once, from the first accepted file, and frozen: when it is gone but
    another run already prepared data, cutting a new one from this file would change what
    every later gate compares on. Fail instead (not retried), saying how to fix it."""
    for run in ws.state.runs(ws.model_name, limit=10_000):
        if run.id != run_id and Step.PREPARE.value in ws.state.step_outputs(run.id):
            raise TidalError(
                f"the frozen holdout {ws.store.uri(HOLDOUT_META_KEY)} is missing, but run "
                f"{run.id} already prepared data against it; a new holdout is not cut from a "
                "later file",
                hint=f"restore {HOLDOUT_KEY} and {HOLDOUT_META_KEY} in the store from a backup "
                "and run this file again ('tidal run URI'), or start a new workspace",
            )


def accepted_train_sets(ws: Workspace, *, exclude: int) -> list[str]:
    """Train splits of earlier files whose model was promoted, oldest first."""
    uris = []
    for run in reversed(ws.state.runs(ws.model_name, limit=10_000)):
        if run.id == exclude or run.decision != Decision.PROMOTED:
            continue
        prep = ws.state.step_outputs(run.id).get(Step.PREPARE.value)
        if prep:
            uris.append(prep["train_uri"])
    return uris


def accepted_train_rows(ws: Workspace, *, exclude: int | None = None) -> int:
    """Rows in the train splits of earlier files whose model was promoted."""
    total = 0
    for run in ws.state.runs(ws.model_name, limit=10_000):
        if run.id == exclude or run.decision != Decision.PROMOTED:
            continue
        prep = ws.state.step_outputs(run.id).get(Step.PREPARE.value)
        if prep:
            total += int((prep.get("rows") or {}).get("train") or 0)
    return total


def quarantine(ws: Workspace, key: str, problems: list[str], run: Run) -> str:
    """Move a rejected file from incoming/ to quarantine/ with a ``.reason.json`` beside it.

    A different file already quarantined under the same name keeps its place: this one gets
    the first 8 characters of its sha256 added to its name. An object outside incoming/ is
    never moved (its reason is written all the same).
    """
    store = ws.store
    path = Path(key)
    target = f"{QUARANTINE}/{path.name}"
    if _other_reason(store, target, run.sha256):
        target = f"{QUARANTINE}/{path.stem}-{run.sha256[:8]}{path.suffix}"
    reason = {
        "source": store.uri(key),
        "sha256": run.sha256,
        "run_id": run.id,
        "rejected_at": time.time(),
        "problems": problems,
        "how_to_fix": "fix the file and upload it again to incoming/ (a changed file is a new run)",
    }
    store.put_bytes(f"{target}.reason.json", json.dumps(reason, indent=2).encode())
    if key.startswith(f"{INCOMING}/") and store.exists(key):
        store.move(key, target)
    return target


def _other_reason(store: Any, target: str, sha256: str) -> bool:
    """Whether quarantine/ holds, under ``target``, a file other than the one of ``sha256``."""
    try:
        reason = json.loads(store.get_bytes(f"{target}.reason.json"))
    except NotFound:
        return store.exists(target)
    return bool(reason.get("sha256") != sha256)


def score(
    predictor: Any,
    slices: dict[str, pd.DataFrame],
    label: str,
    *,
    combine: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per slice, and ``combined`` over the slices named in ``combine`` (all: None)."""
    from tidal.evaluation.metrics import classification

    names = predictor.manifest.feature_names
    out: dict[str, dict[str, float]] = {}
    truth_all: list[Any] = []
    pred_all: list[Any] = []
    for name, frame in slices.items():
        rows = frame[names].astype(object).where(frame[names].notna(), None).to_dict("records")
        truth = frame[label].tolist()
        preds = [p["label"] for p in predictor.predict(rows)] if rows else []
        out[name] = classification(truth, preds)
        if combine is None or name in combine:
            truth_all += truth
            pred_all += preds
    out["combined"] = classification(truth_all, pred_all)
    return out
