"""The controller database: queue, leases, step outputs, deployments and events, on a tmp file."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tidal.state import RunStatus, State, owner_alive, owner_id

SHA_A = "a" * 64
SHA_B = "b" * 64
LEASE_S = 30.0


@pytest.fixture
def state(tmp_path: Path) -> State:
    return State(tmp_path / "state.db")


def live_owner() -> str:
    """This test process: alive for the whole test."""
    return owner_id()


def other_live_owner() -> str:
    """Another owner on this host that is alive too (pid 1 always is)."""
    return f"{socket.gethostname()}:1"


@pytest.fixture(scope="module")
def dead_owner() -> str:
    """``host:pid`` of a process that has exited (and been reaped), so its pid is gone."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}"


def test_enqueue_is_idempotent_per_model_and_sha256(state: State) -> None:
    first, created = state.enqueue("m", "file:///in/a.csv", SHA_A, "validate")
    again, created_again = state.enqueue("m", "file:///in/a-copy.csv", SHA_A, "validate")
    other_model, created_other = state.enqueue("n", "file:///in/a.csv", SHA_A, "validate")
    other_bytes, created_bytes = state.enqueue("m", "file:///in/b.csv", SHA_B, "validate")

    assert created and not created_again
    assert again.id == first.id and again.uri == "file:///in/a.csv"  # the first run, unchanged
    assert created_other and other_model.id != first.id
    assert created_bytes and other_bytes.id not in (first.id, other_model.id)
    assert first.status == RunStatus.QUEUED and first.step == "validate"
    assert state.counts() == {"queued": 3}
    assert [e["kind"] for e in state.events()].count("run.queued") == 3


def test_claim_gives_a_run_to_one_owner(state: State) -> None:
    run, _ = state.enqueue("m", "u", SHA_A, "validate")
    me = live_owner()

    claimed = state.claim(None, me, LEASE_S)

    assert claimed is not None and claimed.id == run.id
    assert claimed.status == RunStatus.RUNNING and claimed.owner == me
    assert claimed.attempts == 1 and claimed.started_at is not None
    assert claimed.lease_until is not None and claimed.lease_until > time.time() + LEASE_S - 5
    assert state.claim(None, other_live_owner(), LEASE_S) is None  # pid 1 is alive
    # the owner itself may claim again (wait_for does), which counts as another attempt
    reclaimed = state.claim(run.id, me, LEASE_S)
    assert reclaimed is not None and reclaimed.attempts == 2


def test_a_live_lease_blocks_another_owner(state: State) -> None:
    run, _ = state.enqueue("m", "u", SHA_A, "validate")
    assert state.claim(run.id, live_owner(), LEASE_S) is not None

    assert state.claim(run.id, other_live_owner(), LEASE_S) is None
    assert state.claim(run.id, "another-host:123", LEASE_S) is None
    assert state.run(run.id).owner == live_owner()  # type: ignore[union-attr]


def test_a_run_of_a_dead_owner_is_claimable_at_once(state: State, dead_owner: str) -> None:
    assert not owner_alive(dead_owner)
    run, _ = state.enqueue("m", "u", SHA_A, "validate")
    assert state.claim(run.id, dead_owner, 3600) is not None  # a lease for an hour

    taken = state.claim(None, live_owner(), LEASE_S)

    assert taken is not None and taken.id == run.id
    assert taken.owner == live_owner() and taken.attempts == 2


def test_an_expired_lease_is_claimable_even_if_its_owner_may_live(state: State) -> None:
    run, _ = state.enqueue("m", "u", SHA_A, "validate")
    other_host = "some-other-host:4242"  # cannot be checked, so only the lease counts
    assert owner_alive(other_host)
    assert state.claim(run.id, other_host, 0.05) is not None
    assert state.claim(run.id, live_owner(), LEASE_S) is None  # lease still live

    time.sleep(0.1)
    taken = state.claim(run.id, live_owner(), LEASE_S)

    assert taken is not None and taken.owner == live_owner()


def test_a_model_never_has_two_running_runs(state: State) -> None:
    first, _ = state.enqueue("m", "u1", SHA_A, "validate")
    second, _ = state.enqueue("m", "u2", SHA_B, "validate")
    elsewhere, _ = state.enqueue("n", "u3", SHA_A, "validate")
    me, other = live_owner(), other_live_owner()
    assert state.claim(first.id, me, LEASE_S) is not None

    assert state.claim(second.id, other, LEASE_S) is None  # same model, asked by id
    got = state.claim(None, other, LEASE_S)  # the oldest runnable: the other model's run
    assert got is not None and got.id == elsewhere.id
    assert [r.id for r in state.runs("m") if r.status == RunStatus.RUNNING] == [first.id]

    state.finish(first.id, decision="promoted", record={"decision": "promoted"})
    after = state.claim(None, other, LEASE_S)
    assert after is not None and after.id == second.id


def test_renew_and_release(state: State) -> None:
    run, _ = state.enqueue("m", "u", SHA_A, "validate")
    me = live_owner()
    state.claim(run.id, me, 0.05)

    assert state.renew(run.id, me, LEASE_S)
    assert not state.renew(run.id, "someone-else:1", LEASE_S)
    time.sleep(0.1)
    assert state.claim(run.id, "another-host:1", LEASE_S) is None  # renewed: still live

    state.release(run.id, me, requeue=True, error="storage down")
    released = state.run(run.id)
    assert released is not None and released.status == RunStatus.QUEUED
    assert released.owner is None and released.error == "storage down"


def test_step_outputs_round_trip_and_move_the_step(state: State) -> None:
    run, _ = state.enqueue("m", "u", SHA_A, "validate")

    state.step_done(run.id, "validate", "prepare", {"rows": 10, "warnings": ["w"]}, 0.5)
    state.step_done(run.id, "prepare", "train", {"train_uris": ["file:///x"], "n": None}, 1.25)
    state.step_done(run.id, "prepare", "train", {"train_uris": ["file:///y"]}, 2.0)  # redone

    assert state.run(run.id).step == "train"  # type: ignore[union-attr]
    assert state.step_outputs(run.id) == {
        "validate": {"rows": 10, "warnings": ["w"], "_seconds": 0.5},
        "prepare": {"train_uris": ["file:///y"], "_seconds": 2.0},
    }
    assert state.step_outputs(run.id + 1) == {}


def test_finish_records_the_decision(state: State) -> None:
    run, _ = state.enqueue("m", "u", SHA_A, "validate")
    state.claim(run.id, live_owner(), LEASE_S)

    state.finish(run.id, decision="rejected", record={"decision": "rejected", "reasons": ["x"]})

    done = state.run_by_sha("m", SHA_A)
    assert done is not None and done.status == RunStatus.DONE and done.decision == "rejected"
    assert done.record == {"decision": "rejected", "reasons": ["x"]}
    assert done.owner is None and done.finished_at is not None
    assert state.claim(None, live_owner(), LEASE_S) is None  # a finished run is never claimed


def test_only_a_failed_run_can_be_retried_and_it_starts_over(state: State) -> None:
    run, _ = state.enqueue("m", "u", SHA_A, "validate")
    state.claim(run.id, live_owner(), LEASE_S)
    state.step_done(run.id, "validate", "prepare", {"rows": 10}, 0.1)
    assert not state.retry(run.id, "validate")  # running: not failed

    state.finish(run.id, decision="failed", record={"decision": "failed"}, failed=True, error="x")
    assert state.retry(run.id, "validate")

    again = state.run(run.id)
    assert again is not None and again.status == RunStatus.QUEUED and again.step == "validate"
    assert (again.decision, again.record, again.error, again.attempts) == (None, None, None, 0)
    assert state.step_outputs(run.id) == {}
    assert not state.retry(run.id, "validate")  # queued now
    state.finish(run.id, decision="promoted", record={"decision": "promoted"})
    assert not state.retry(run.id, "validate")  # a decision stands


def test_deployments_and_rollback_marks(state: State) -> None:
    assert state.current_deployment("m") is None
    state.deploy("m", "1", "/models/v1", "s1", "promoted by run 1", run_id=1)
    state.deploy("m", "2", "/models/v2", "s2", "promoted by run 2", run_id=2)
    state.deploy("other", "7", "/o/v7", "s7", "elsewhere")

    current = state.current_deployment("m")
    assert current is not None and (current.version, current.run_id) == ("2", 2)
    assert not current.rolled_back

    state.mark_rolled_back("m", "2")
    state.deploy("m", "1", "/models/v1", "s1", "rollback from v2")

    history = state.deployments("m")
    assert [(d.version, d.rolled_back, d.run_id) for d in history] == [
        ("1", False, None),
        ("2", True, 2),
        ("1", False, 1),
    ]
    assert state.current_deployment("m").reason == "rollback from v2"  # type: ignore[union-attr]
    assert [d.version for d in state.deployments("other")] == ["7"]


def test_events_newest_first_with_data(state: State) -> None:
    state.event("deploy", "v1 serves", model="m", run_id=1, data={"version": "1"})
    state.event("rollback", "back to v1", model="m")

    events = state.events(limit=5)

    assert [e["kind"] for e in events] == ["rollback", "deploy"]
    assert events[0]["data"] is None and events[0]["run_id"] is None
    assert events[1]["data"] == {"version": "1"} and events[1]["message"] == "v1 serves"
    assert len(state.events(limit=1)) == 1


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state.db"
    run, _ = State(path).enqueue("m", "u", SHA_A, "validate")

    reopened = State(path)

    assert reopened.run(run.id) is not None
    assert reopened.enqueue("m", "u", SHA_A, "validate")[1] is False


def test_progress_keeps_the_latest_report(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    assert state.progress(7) is None
    state.set_progress(7, {"step": 3, "total": 10, "loss": 0.9})
    state.set_progress(7, {"step": 5, "total": 10, "loss": 0.7})
    got = state.progress(7)
    assert got is not None and got["step"] == 5 and got["loss"] == 0.7 and got["updated_at"] > 0


def test_a_database_of_an_older_release_gains_the_label_columns_and_counts(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:  # the labels table as released before 2026-11-22
        db.execute(
            "CREATE TABLE labels(model TEXT NOT NULL, inference_id TEXT NOT NULL,"
            " row INTEGER NOT NULL, label TEXT NOT NULL, received_at REAL NOT NULL,"
            " replaced INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL, version TEXT,"
            " variant TEXT, ts REAL, predicted TEXT, input TEXT,"
            " PRIMARY KEY(model, inference_id, row))"
        )
        db.executemany(
            "INSERT INTO labels VALUES ('toy', ?, 0, ?, 1.0, 0, ?, '1', 'default', 120.5, 'a',"
            " '{\"x\": 1}')",
            [("i1", "a", "matched"), ("i2", "b", "matched"), ("i3", "a", "pending")],
        )
    State(path)
    State(path)  # opening again counts nothing twice
    with sqlite3.connect(path) as db:
        assert "source" in {r[1] for r in db.execute("PRAGMA table_info(labels)")}
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name='labels'").fetchone()
        assert "WITHOUT ROWID" in sql
        kept = db.execute("SELECT inference_id, status, input FROM labels").fetchall()
        cells = db.execute("SELECT minute, label, predicted, n FROM label_cells").fetchall()
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert sorted(kept) == [("i1", "matched", '{"x": 1}'), ("i2", "matched", '{"x": 1}'),
                            ("i3", "pending", '{"x": 1}')]  # fmt: skip
    assert sorted(cells) == [(2, "a", "a", 1), (2, "b", "a", 1)]
    assert {"labels_open", "labels_replaced"} <= indexes


def test_a_labels_table_made_before_provenance_gets_its_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:  # the labels table as it was on 2026-11-22
        db.execute(
            "CREATE TABLE labels(model TEXT NOT NULL, inference_id TEXT NOT NULL,"
            " row INTEGER NOT NULL, label TEXT NOT NULL, received_at REAL NOT NULL,"
            " replaced INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL, version TEXT,"
            " variant TEXT, ts REAL, predicted TEXT, input TEXT, source TEXT,"
            " PRIMARY KEY(model, inference_id, row)) WITHOUT ROWID"
        )
        db.execute("INSERT INTO labels VALUES ('m','i',0,'a',1.0,0,'matched',NULL,NULL,NULL,"
                   "NULL,NULL,NULL)")  # fmt: skip
    State(path)
    State(path)  # a second open changes nothing
    with sqlite3.connect(path) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(labels)")]
        kept = db.execute("SELECT label, key_id, trust FROM labels").fetchall()
    assert columns[-2:] == ["key_id", "trust"] and kept == [("a", None, None)]
