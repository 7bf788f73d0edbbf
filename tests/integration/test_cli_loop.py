"""The whole loop through the real ``tidal`` command, one process per call, in one workspace.

The module fixture tells the example's story once (three trainings cost most of the time):
batch-1 is promoted, batch-2 is promoted or rejected, shuffled labels are rejected by the
gate, a malformed file is quarantined, and batch-1 again returns its earlier record. The tests
then read what each step printed and left behind; only the last test changes the workspace.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tidal.state import Deployment, State

RECORD_KEYS = {"decision", "version", "champion", "metrics", "reasons", "seconds"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(port: int) -> dict[str, str]:
    """The caller's environment without TIDAL_* settings, offline, on a port nobody serves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    return env | {"HF_HUB_OFFLINE": "1", "TIDAL_SERVING__PORT": str(port)}


@dataclass
class Tidal:
    """Runs ``python -m tidal.cli`` in ``cwd``; a JSON answer is parsed."""

    cwd: Path
    env: dict[str, str]

    def __call__(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tidal.cli", *args],
            cwd=cwd or self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def json(self, *args: str, code: int | set[int] = 0) -> Any:
        done = self(*args, "--json")
        allowed = code if isinstance(code, set) else {code}
        assert done.returncode in allowed, f"tidal {' '.join(args)}: {explain(done)}"
        return json.loads(done.stdout)


def explain(done: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n"
        f"--- stderr\n{done.stderr[-3000:]}"
    )


@dataclass
class Story:
    ws: Path
    tidal: Tidal
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    deployments: dict[str, list[Deployment]] = field(default_factory=dict)  # after each run
    models: list[dict[str, Any]] = field(default_factory=list)  # after the last run

    @property
    def model(self) -> str:
        return self.ws.name  # tidal init names the project (and model) after the folder

    @property
    def state(self) -> State:
        return State(self.ws / ".tidal" / "state.db")

    def run(self, name: str, file: str) -> None:
        done = self.tidal("run", f"data/{file}", "--json")
        assert done.stdout.strip(), explain(done)
        self.records[name] = json.loads(done.stdout)
        self.codes[name] = done.returncode
        self.deployments[name] = self.state.deployments(self.model)


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    root = tmp_path_factory.mktemp("loop")
    tidal = Tidal(root, cli_env(free_port()))
    init = tidal("init", "shop", "--example", "tabular", "--json")
    assert init.returncode == 0, explain(init)
    ws = root / "shop"
    tidal.cwd = ws
    told = Story(ws, tidal)
    told.run("first", "batch-1.csv")
    told.run("second", "batch-2.csv")
    told.run("shuffled", "batch-3-shuffled-labels.csv")
    told.run("malformed", "malformed.csv")
    told.run("again", "batch-1.csv")
    told.run("malformed-again", "malformed.csv")
    told.models = tidal.json("models", "list")
    return told


def test_init_writes_a_workspace_with_example_data(story: Story) -> None:
    assert (story.ws / "tidal.yaml").is_file()
    names = sorted(p.name for p in (story.ws / "data").iterdir())
    assert names == [
        "batch-1.csv",
        "batch-2.csv",
        "batch-3-shuffled-labels.csv",
        "malformed.csv",
        "traffic.csv",
    ]
    assert "label_column: diagnosis" in (story.ws / "tidal.yaml").read_text()


def test_first_batch_is_promoted_as_version_1(story: Story) -> None:
    record = story.records["first"]

    assert story.codes["first"] == 0
    assert set(record) >= RECORD_KEYS
    assert (record["decision"], record["version"], record["champion"]) == ("promoted", "1", "1")
    assert record["metrics"]["champion"] is None
    assert {"holdout", "test:batch-1.csv", "combined"} <= set(record["metrics"]["candidate"])
    assert "no champion yet: decided on thresholds alone" in record["reasons"]
    assert record["seconds"] > 0 and record["resumed_from_step"] is None
    assert [(d.version, d.run_id) for d in story.deployments["first"]] == [("1", 1)]
    assert story.models[0]["decision"] == "promoted"
    assert story.models[0]["accuracy"] == record["metrics"]["candidate"]["combined"]["accuracy"]


def test_second_batch_exit_code_follows_its_decision(story: Story) -> None:
    record, code = story.records["second"], story.codes["second"]

    assert record["decision"] in ("promoted", "rejected")
    assert code == {"promoted": 0, "rejected": 3}[record["decision"]]
    assert record["version"] == "2" and record["champion_before"] == "1"
    assert record["metrics"]["champion"] is not None  # compared with v1 on the same data
    assert record["champion"] == ("2" if record["decision"] == "promoted" else "1")
    promoted = record["decision"] == "promoted"
    assert len(story.deployments["second"]) == (2 if promoted else 1)
    assert story.models[1]["decision"] == record["decision"]


def test_only_the_champion_carries_the_alias_and_serves(story: Story) -> None:
    champion = story.records["second"]["champion"]

    assert [m["version"] for m in story.models] == ["1", "2", "3"]  # nothing else registered
    assert [m["version"] for m in story.models if m["serving"]] == [champion]
    assert [m["version"] for m in story.models if "champion" in m["aliases"]] == [champion]


def test_shuffled_labels_are_rejected_and_change_nothing_that_serves(story: Story) -> None:
    record, champion = story.records["shuffled"], story.records["second"]["champion"]

    assert story.codes["shuffled"] == 3
    assert record["decision"] == "rejected" and record["version"] == "3"
    assert record["champion"] == champion
    assert any("below the minimum" in r for r in record["reasons"])
    # it is registered for the record, but not promoted: no alias, not serving
    rejected = story.models[2]
    assert (rejected["version"], rejected["decision"]) == ("3", "rejected")
    assert rejected["aliases"] == [] and not rejected["serving"]
    assert rejected["source"].endswith("/incoming/batch-3-shuffled-labels.csv")
    assert story.deployments["shuffled"] == story.deployments["second"]


def test_malformed_file_is_quarantined_with_its_reasons(story: Story) -> None:
    record = story.records["malformed"]
    store = story.ws / ".tidal" / "store"

    assert story.codes["malformed"] == 4
    assert record["decision"] == "invalid" and record["version"] is None
    assert record["champion"] == story.records["second"]["champion"]
    assert (store / "quarantine" / "malformed.csv").is_file()
    assert not (store / "incoming" / "malformed.csv").exists()
    reason = json.loads((store / "quarantine" / "malformed.csv.reason.json").read_text())
    assert any("'diagnosis'" in p for p in reason["problems"])
    assert reason["run_id"] == record["run_id"] and reason["problems"] == record["reasons"]
    assert record["quarantine"].endswith("/quarantine/malformed.csv")
    assert story.deployments["malformed"] == story.deployments["second"]
    assert not any(m["source"].endswith("malformed.csv") for m in story.models)


def test_the_same_file_again_returns_the_earlier_record(story: Story) -> None:
    first, again = story.records["first"], story.records["again"]

    assert story.codes["again"] == 0
    assert again["repeated"] is True and "repeated" not in first
    assert again["run_id"] == first["run_id"] and again["version"] == "1"
    assert again["sha256"] == first["sha256"]
    assert again["champion"] == story.records["second"]["champion"]  # today's champion
    assert story.deployments["again"] == story.deployments["malformed"]
    assert len(story.state.runs(story.model)) == 4  # no fifth run, so no fourth version


def test_a_refused_file_sent_again_goes_back_to_quarantine(story: Story) -> None:
    first, again = story.records["malformed"], story.records["malformed-again"]
    store = story.ws / ".tidal" / "store"

    assert story.codes["malformed-again"] == 4
    assert again["repeated"] is True and again["run_id"] == first["run_id"]
    assert again["reasons"] == first["reasons"]
    assert not (store / "incoming" / "malformed.csv").exists()  # not left behind in incoming/
    assert (store / "quarantine" / "malformed.csv").read_bytes() == (
        story.ws / "data" / "malformed.csv"
    ).read_bytes()


def test_the_watcher_sends_a_refused_file_back_to_quarantine_too(story: Story) -> None:
    """What ``tidal up`` does when the same bad bytes land in incoming/ again (in-process)."""
    from tidal.controller import Controller
    from tidal.workspace import Workspace

    incoming = story.ws / ".tidal" / "store" / "incoming" / "malformed.csv"
    incoming.write_bytes((story.ws / "data" / "malformed.csv").read_bytes())
    os.utime(incoming, (time.time() - 60, time.time() - 60))  # settled, not being written
    ctrl = Controller(Workspace.open(story.ws))

    queued = ctrl.poll()

    assert queued == []  # every file there was run before: no new run
    assert not incoming.exists()
    assert (story.ws / ".tidal" / "store" / "quarantine" / "malformed.csv").is_file()
    assert {p.name for p in incoming.parent.iterdir()} == {
        "batch-1.csv",
        "batch-2.csv",
        "batch-3-shuffled-labels.csv",
    }


def test_models_show_has_lineage_back_to_the_file(story: Story) -> None:
    shown = story.tidal.json("models", "show", "v1")
    sha = hashlib.sha256((story.ws / "data" / "batch-1.csv").read_bytes()).hexdigest()

    lineage = shown["lineage"]
    assert shown["version"] == "1"
    assert lineage["source_sha256"] == sha
    assert lineage["source_uri"].endswith("/incoming/batch-1.csv")
    assert lineage["tidal_run_id"] == str(story.records["first"]["run_id"])
    assert lineage["dataset_version"] == story.records["first"]["dataset_version"]
    assert len(lineage["manifest_sha256"]) == 64 and lineage["mlflow_run_id"]
    assert lineage["deployments"][-1]["reason"] == "promoted by run 1"
    assert shown["decision_record"]["decision"] == "promoted"
    assert (
        shown["metrics"]["candidate.combined.accuracy"]
        == (story.records["first"]["metrics"]["candidate"]["combined"]["accuracy"])
    )


def test_models_show_of_a_missing_version_is_a_usage_error(story: Story) -> None:
    done = story.tidal("models", "show", "99", "--json")

    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["code"] == "not_found"


def test_predict_without_an_endpoint_runs_in_process(story: Story) -> None:
    rows = (story.ws / "data" / "batch-2.csv").read_text().strip().splitlines()[1:]

    result = story.tidal.json("predict", "--file", "data/batch-2.csv")

    assert result["via"].startswith("in-process")
    assert result["model_version"] == story.records["second"]["champion"]
    assert len(result["predictions"]) == len(rows)
    assert {p["label"] for p in result["predictions"]} <= {"benign", "malignant"}
    assert all(0.0 <= p["score"] <= 1.0 for p in result["predictions"])


def test_a_bad_config_key_exits_2_and_names_it(story: Story, tmp_path: Path) -> None:
    (tmp_path / "tidal.yaml").write_text("serving:\n  prot: 9000\n")

    from_file = story.tidal("status", "--json", cwd=tmp_path)
    from_env = subprocess.run(
        [sys.executable, "-m", "tidal.cli", "status"],
        cwd=story.ws,
        env=story.tidal.env | {"TIDAL_GATE__MIN_ACC": "0.5"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert from_file.returncode == 2, explain(from_file)
    error = json.loads(from_file.stdout)["error"]
    assert error["code"] == "config_error" and "serving.prot: unknown key" in error["message"]
    assert from_env.returncode == 2, explain(from_env)
    assert "gate.min_acc: unknown key" in from_env.stderr


def test_a_failed_run_is_run_again_when_the_file_is_sent_again(
    story: Story, tmp_path: Path
) -> None:
    """A failure is not a decision: after fixing the setting, the same file runs again."""
    from tidal.examples import init_workspace

    init_workspace(tmp_path / "ws", example="tabular")
    ws = tmp_path / "ws"

    def run_with(model: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tidal.cli", "run", "data/batch-1.csv", "--json"],
            cwd=ws,
            env=story.tidal.env | {"TIDAL_TRAINING__PARAMS": f"{{model: {model}}}"},
            capture_output=True,
            text=True,
            timeout=120,
        )

    first, second = run_with("nonsense"), run_with("still-nonsense")

    assert first.returncode == 1, explain(first)
    assert second.returncode == 1, explain(second)
    failed, retried = json.loads(first.stdout), json.loads(second.stdout)
    assert failed["decision"] == "failed" and "'nonsense'" in failed["reasons"][0]
    assert retried["run_id"] == failed["run_id"] and "repeated" not in retried
    assert "'still-nonsense'" in retried["reasons"][0]  # it ran again, with the new setting
    assert State(ws / ".tidal" / "state.db").counts() == {"failed": 1}


def test_rollback_puts_the_previous_champion_back(story: Story) -> None:
    """Changes the workspace: keep it last."""
    if story.records["second"]["decision"] != "promoted":  # v1 is the only champion ever
        done = story.tidal("models", "rollback", "--json")
        assert done.returncode == 2 and "only version ever deployed" in done.stdout
        return

    moved = story.tidal.json("models", "rollback")
    status = story.tidal.json("status")
    again = story.tidal("models", "rollback", "--json")

    assert moved == {"from": "2", "to": "1"}
    champion = status["champion"]
    assert champion["version"] == "1" and champion["reason"] == "rollback from v2"
    assert champion["metrics"] == story.records["first"]["metrics"]["candidate"]["combined"]
    assert status["active_runs"] == [] and status["endpoint"]["up"] is False
    assert status["events"][0]["message"] == "rolled back from v2 to v1"
    current = story.state.current_deployment(story.model)
    assert current is not None and Path(current.model_dir).name == "v1"
    # v2 was abandoned, so a second rollback has nowhere to go (and says why)
    assert again.returncode == 2
    assert "v2 was rolled back already" in json.loads(again.stdout)["error"]["message"]
