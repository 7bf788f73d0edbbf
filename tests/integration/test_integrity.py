"""What is already there stays trustworthy: Tidal's own objects are never run or moved, the
frozen holdout is never cut again, a file's name never breaks a run, a store that is away for
a while delays a run instead of failing it for good, and rejected files keep their own reasons.

Real parts: a workspace with the tabular example, real training, MLflow on SQLite, the
``file://`` store; the CLI as a subprocess where its exit code is the point.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tidal.controller import Controller
from tidal.errors import DataRejected, UsageError
from tidal.examples import init_workspace
from tidal.state import RunStatus
from tidal.workspace import Workspace

BAD_CSV = "a,b,label\n1,2,x\n1,2,3,4\n"  # refused at line 3, whatever the schema


def workspace(folder: Path, **overrides: Any) -> Workspace:
    init_workspace(folder, example="tabular")
    return Workspace.open(folder, overrides={"serving": {"port": 0}, **overrides})


def store_dir(ws: Workspace) -> Path:
    return ws.home / "store"


def run_file(ws: Workspace, path: Path) -> dict[str, Any]:
    ctrl = Controller(ws)
    return ctrl.run_object(*ctrl.ingest(path))


def cli(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    return subprocess.run(
        [sys.executable, "-m", "tidal.cli", *args],
        cwd=ws.root,
        env=env | {"HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_tidal_never_runs_or_moves_its_own_objects(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    assert run_file(ws, tmp_path / "data" / "batch-1.csv")["decision"] == "promoted"
    store = store_dir(ws)
    holdout = store / "_tidal" / "holdout.json"
    before = {p: p.read_bytes() for p in (holdout, store / "_tidal" / "holdout.jsonl")}
    for target in (holdout.as_uri(), str(holdout), str(store / "_tidal" / "schema.json")):
        done = cli(ws, "run", target)
        assert done.returncode == 2, done.stderr
        assert "only objects under" in done.stderr and "incoming/" in done.stderr
    with pytest.raises(UsageError):
        Controller(ws).run_object(ws.store.uri("_tidal/holdout.jsonl"))
    assert {p: p.read_bytes() for p in before} == before
    assert not (store / "quarantine").exists()
    assert len(ws.state.runs(ws.model_name)) == 1

    # the frozen holdout lost: the next file fails, loudly and once, and cuts no new one
    for path in before:
        path.unlink()
    record = run_file(ws, tmp_path / "data" / "batch-2.csv")
    assert record["decision"] == "failed" and not record["retryable"]
    assert "frozen holdout" in record["reasons"][0] and "restore" in record["reasons"][0]
    assert not holdout.exists()
    (failed,) = [r for r in ws.state.runs(ws.model_name) if r.id != 1]
    assert failed.attempts == 1
    assert ws.state.current_deployment(ws.model_name).version == "1"  # type: ignore[union-attr]


def test_file_names_mlflow_would_refuse_are_run_and_kept_readable(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    name = "batch (1) Prüfung 🙂.csv"
    shutil.copyfile(tmp_path / "data" / "batch-1.csv", tmp_path / name)
    record = run_file(ws, tmp_path / name)
    assert record["decision"] == "promoted", record["reasons"]
    assert f"test:{name}" in record["metrics"]["candidate"]  # the record keeps the real name
    info = ws.registry.version(record["version"])
    metrics = ws.registry.run_data(info)["metrics"]
    assert "candidate.test:batch_20_281_29_20Pr_C3_BCfung_20_F0_9F_99_82.csv.accuracy" in metrics
    runs = ws.registry.client.search_runs([ws.registry._experiment_id or ""])
    assert [r.info.status for r in runs] == ["FINISHED"]
    (run,) = ws.state.runs(ws.model_name)
    assert run.attempts == 1


def test_a_store_away_for_a_while_delays_the_run_and_it_resumes(tmp_path: Path) -> None:
    ws = workspace(
        tmp_path, controller={"max_attempts": 3, "retry_base_s": 0.4, "retry_max_s": 1.0}
    )
    blocker = store_dir(ws) / "_tidal" / "datasets"  # a file where prepare writes a folder
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    ctrl = Controller(ws)
    started = time.monotonic()
    record = ctrl.run_object(*ctrl.ingest(tmp_path / "data" / "batch-1.csv"))
    took = time.monotonic() - started
    assert record["decision"] == "failed" and record["retryable"]
    assert str(store_dir(ws)) in record["reasons"][0]  # the hint names the folder,
    assert "AWS" not in record["reasons"][0]  # not credentials a file:// store has no use for
    retries = [e for e in ws.state.events(50) if e["kind"] == "run.retry"]
    waits = sorted(e["data"]["wait_s"] for e in retries)
    assert len(waits) == 2 and 0.2 <= waits[0] <= 0.4 and 0.4 <= waits[1] <= 0.8
    assert took >= sum(waits)  # it did wait between the tries
    (run,) = ws.state.runs(ws.model_name)
    assert (run.status, run.step, run.attempts) == (RunStatus.FAILED, "prepare", 3)

    assert ctrl.poll() == []  # failed under retry_max_s ago: not yet
    blocker.unlink()  # the store is back
    time.sleep(1.0)
    assert [r.id for r in ctrl.poll()] == [run.id]
    assert ctrl.work_once()["decision"] == "promoted"  # type: ignore[index]
    assert ws.state.run(run.id).attempts == 1  # type: ignore[union-attr]


def test_rejected_files_keep_their_own_reasons_and_names_run_or_are_refused(
    tmp_path: Path,
) -> None:
    ws = workspace(tmp_path)
    store = store_dir(ws)
    for i, folder in enumerate(("one", "two")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "export.csv").write_text(BAD_CSV + f"{i},{i},x\n")
        assert run_file(ws, tmp_path / folder / "export.csv")["decision"] == "invalid"
    reasons = sorted((store / "quarantine").glob("*.reason.json"))
    assert len(reasons) == 2  # the second did not overwrite the first
    for reason in reasons:  # each file beside its own reason
        kept = Path(str(reason).removesuffix(".reason.json"))
        assert (
            json.loads(reason.read_text())["sha256"]
            == hashlib.sha256(kept.read_bytes()).hexdigest()
        )
    names = sorted(p.name for p in (store / "quarantine").glob("*.csv"))
    assert names[1] == "export.csv" and names[0].startswith("export-")

    # a name with ".tmp-" in it is an ordinary file: queued like any other
    (tmp_path / "export.tmp-2024.csv").write_text(BAD_CSV)
    Controller(ws).ingest(tmp_path / "export.tmp-2024.csv")
    os.utime(store / "incoming" / "export.tmp-2024.csv", (time.time() - 5,) * 2)
    assert [r.uri.rsplit("/", 1)[-1] for r in Controller(ws).poll()] == ["export.tmp-2024.csv"]
    # a name the trigger skips is refused at once, not silently never run
    (tmp_path / "_draft.csv").write_text(BAD_CSV)
    with pytest.raises(UsageError, match="never run"):
        Controller(ws).ingest(tmp_path / "_draft.csv")


def test_a_file_above_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    ws = workspace(tmp_path, validation={"max_file_mb": 0.05})
    store = store_dir(ws)
    # refused by ingest before it is copied; quarantined with the reason when landed directly
    big = tmp_path / "big.csv"
    big.write_text("a,b,label\n" + "1,2,x\n" * 20_000)
    with pytest.raises(DataRejected, match=r"validation\.max_file_mb"):
        Controller(ws).ingest(big)
    (store / "incoming").mkdir(parents=True)
    shutil.copyfile(big, store / "incoming" / "big.csv")
    record = Controller(ws).run_object(ws.store.uri("incoming/big.csv"))
    assert record["decision"] == "invalid" and "0.05 MB" in record["reasons"][0]
    assert (store / "quarantine" / "big.csv").is_file()
    assert not (store / "_tidal" / "schema.json").exists()  # nothing was learnt from it
