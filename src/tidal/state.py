"""The controller's durable state: SQLite in WAL mode, safe across processes and kill -9.

Tables: ``runs`` (the queue and each run's state), ``steps`` (each completed step's output, so a
run resumes after its last completed step), ``cursors`` and ``seen`` (what the polling trigger
has already queued), ``deployments`` (which version serves, in order), ``rollouts`` and
``variant_stats``, ``retrain_decisions`` (the retrain policy's), ``labels`` (late labels and
the predictions they joined, ``tidal.monitoring.labels``), ``label_cells`` (those joined labels
counted per version, variant, minute, label and prediction) and ``events`` (an audit log that
``tidal status`` shows).

A run is unique per (model, sha256 of its object): queueing the same bytes twice returns the
first run. A run is executed by one owner at a time under a lease that the owner renews; a lease
whose owner died (same host, pid gone) or that expired can be taken over.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

# one B-tree (WITHOUT ROWID): a label is written once, not into a table and its key's index
LABELS = """CREATE TABLE IF NOT EXISTS labels(
  model TEXT NOT NULL,
  inference_id TEXT NOT NULL,
  row INTEGER NOT NULL,
  label TEXT NOT NULL,
  received_at REAL NOT NULL,
  replaced INTEGER NOT NULL DEFAULT 0,
  status TEXT NOT NULL,
  version TEXT, variant TEXT, ts REAL, predicted TEXT, input TEXT, source TEXT,
  key_id TEXT, trust TEXT,
  PRIMARY KEY(model, inference_id, row)
) WITHOUT ROWID;"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  model TEXT NOT NULL,
  uri TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  status TEXT NOT NULL,
  step TEXT NOT NULL,
  decision TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  owner TEXT,
  lease_until REAL,
  landed_at REAL,
  created_at REAL NOT NULL,
  started_at REAL,
  finished_at REAL,
  record TEXT,
  error TEXT,
  UNIQUE(model, sha256)
);
CREATE TABLE IF NOT EXISTS steps(
  run_id INTEGER NOT NULL,
  step TEXT NOT NULL,
  output TEXT NOT NULL,
  seconds REAL NOT NULL,
  finished_at REAL NOT NULL,
  PRIMARY KEY(run_id, step)
);
CREATE TABLE IF NOT EXISTS cursors(source TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL);
CREATE TABLE IF NOT EXISTS seen(
  source TEXT NOT NULL, key TEXT NOT NULL, mtime REAL NOT NULL, size INTEGER NOT NULL,
  PRIMARY KEY(source, key, mtime, size)
);
CREATE TABLE IF NOT EXISTS deployments(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  model TEXT NOT NULL,
  version TEXT NOT NULL,
  model_dir TEXT NOT NULL,
  manifest_sha256 TEXT NOT NULL,
  reason TEXT NOT NULL,
  run_id INTEGER,
  rolled_back INTEGER NOT NULL DEFAULT 0,
  created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS progress(
  run_id INTEGER PRIMARY KEY,
  data TEXT NOT NULL,
  updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  model TEXT NOT NULL,
  status TEXT NOT NULL,
  doc TEXT NOT NULL,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rollouts_model ON rollouts(model, status);
CREATE TABLE IF NOT EXISTS variant_stats(
  rollout_id INTEGER NOT NULL,
  variant TEXT NOT NULL,
  t REAL NOT NULL,
  data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS variant_stats_at ON variant_stats(rollout_id, variant, t);
CREATE TABLE IF NOT EXISTS retrain_decisions(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  model TEXT NOT NULL,
  action TEXT NOT NULL,
  at REAL NOT NULL,
  doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS retrain_decisions_model ON retrain_decisions(model, id);
{LABELS}
DROP INDEX IF EXISTS labels_status;
DROP INDEX IF EXISTS labels_pending;
CREATE INDEX IF NOT EXISTS labels_open ON labels(model) WHERE status != 'matched';
CREATE INDEX IF NOT EXISTS labels_replaced ON labels(model) WHERE replaced > 0;
CREATE TABLE IF NOT EXISTS label_cells(
  model TEXT NOT NULL,
  version TEXT NOT NULL,
  variant TEXT NOT NULL,
  minute INTEGER NOT NULL,
  label TEXT NOT NULL,
  predicted TEXT NOT NULL,
  n INTEGER NOT NULL,
  PRIMARY KEY(model, version, variant, minute, label, predicted)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ts REAL NOT NULL,
  kind TEXT NOT NULL,
  model TEXT,
  run_id INTEGER,
  message TEXT NOT NULL,
  data TEXT
);
"""
SCHEMA = SCHEMA.replace("{LABELS}", LABELS)


ACTIVE_ROLLOUT = ("baking", "paused", "warming")


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Run:
    id: int
    model: str
    uri: str
    sha256: str
    status: RunStatus
    step: str
    decision: str | None
    attempts: int
    owner: str | None
    lease_until: float | None
    landed_at: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    record: dict[str, Any] | None
    error: str | None
    retry_at: float | None = None  # a run given back after a temporary error waits till then

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Run:
        data = dict(row)
        data["status"] = RunStatus(data["status"])
        data["record"] = json.loads(data["record"]) if data["record"] else None
        return cls(**data)


@dataclass(frozen=True)
class Deployment:
    id: int
    model: str
    version: str
    model_dir: str
    manifest_sha256: str
    reason: str
    run_id: int | None
    rolled_back: bool
    created_at: float


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str | None) -> bool:
    """False only when the owner surely died: same host and its pid is gone."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # cannot tell; the lease expiry decides
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _rebuild_labels(db: sqlite3.Connection) -> None:
    """A labels table made before 2026-11-22 (a rowid table, without ``source``) becomes the
    one ``LABELS`` makes, with its rows; its indexes are made again by ``SCHEMA``."""
    found = db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='labels'")
    row = found.fetchone()
    if row is None or "WITHOUT ROWID" in row[0].upper():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("ALTER TABLE labels RENAME TO labels_before")
        names = [r[1] for r in db.execute("PRAGMA table_info(labels_before)")]
        for (index,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='labels_before'"
            " AND sql IS NOT NULL"
        ).fetchall():
            db.execute(f'DROP INDEX "{index}"')
        db.execute(LABELS)
        kept = {r[1] for r in db.execute("PRAGMA table_info(labels)")}
        columns = ", ".join(n for n in names if n in kept)
        db.execute(f"INSERT INTO labels({columns}) SELECT {columns} FROM labels_before")
        db.execute("DROP TABLE labels_before")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _add_label_columns(db: sqlite3.Connection) -> None:
    """A labels table made before 2026-12-04 gets ``key_id`` (who sent the label) and
    ``trust`` (NULL, or ``quarantined`` by the retrain policy's check)."""
    names = {r[1] for r in db.execute("PRAGMA table_info(labels)")}
    for column in ("key_id", "trust"):
        if column not in names:
            db.execute(f"ALTER TABLE labels ADD COLUMN {column} TEXT")


class State:
    """All reads and writes of the controller database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            counted = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='label_cells'"
            ).fetchone()
            _rebuild_labels(db)
            db.executescript(SCHEMA)
            _add_label_columns(db)
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            if "retry_at" not in columns:  # a database made before 2026-12-04
                db.execute("ALTER TABLE runs ADD COLUMN retry_at REAL")
            if not counted:  # a database made before 2026-11-22: count its joined labels once
                db.execute(
                    "INSERT INTO label_cells SELECT model, COALESCE(version, ''),"
                    " COALESCE(variant, ''), CAST(COALESCE(ts, 0) / 60 AS INTEGER),"
                    " label, COALESCE(predicted, ''), COUNT(*) FROM labels"
                    " WHERE status = 'matched' GROUP BY 1, 2, 3, 4, 5, 6"
                )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so claims cannot race."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        db = self._connect()
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    # -- runs -------------------------------------------------------------------------------

    def enqueue(
        self, model: str, uri: str, sha256: str, first_step: str, landed_at: float | None = None
    ) -> tuple[Run, bool]:
        """Queue a run for the object; returns (run, created). Same bytes → the existing run."""
        now = time.time()
        with self.tx() as db:
            row = db.execute(
                "SELECT * FROM runs WHERE model=? AND sha256=?", (model, sha256)
            ).fetchone()
            if row is not None:
                return Run.from_row(row), False
            cur = db.execute(
                "INSERT INTO runs(model, uri, sha256, status, step, landed_at, created_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (model, uri, sha256, RunStatus.QUEUED, first_step, landed_at or now, now),
            )
            row = db.execute("SELECT * FROM runs WHERE id=?", (cur.lastrowid,)).fetchone()
        self.event("run.queued", f"queued run {row['id']} for {uri}", model=model, run_id=row["id"])
        return Run.from_row(row), True

    def run(self, run_id: int) -> Run | None:
        rows = self._read("SELECT * FROM runs WHERE id=?", (run_id,))
        return Run.from_row(rows[0]) if rows else None

    def run_by_sha(self, model: str, sha256: str) -> Run | None:
        rows = self._read("SELECT * FROM runs WHERE model=? AND sha256=?", (model, sha256))
        return Run.from_row(rows[0]) if rows else None

    def runs(self, model: str | None = None, limit: int = 50) -> list[Run]:
        if model is None:
            rows = self._read("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._read(
                "SELECT * FROM runs WHERE model=? ORDER BY id DESC LIMIT ?", (model, limit)
            )
        return [Run.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._read("SELECT status, COUNT(*) AS n FROM runs GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    def claim(self, run_id: int | None, owner: str, lease_s: float) -> Run | None:
        """Take a runnable run (a given one, or the oldest) under a lease, or None.

        A run is runnable when queued (and its ``retry_at``, if any, has passed), or running
        under a lease that expired or whose owner died. A model never has two runs executing
        at once: a live lease on another run of the same model blocks the claim.
        """
        now = time.time()
        with self.tx() as db:
            if run_id is None:
                candidates = db.execute(
                    "SELECT * FROM runs WHERE status IN ('queued','running') ORDER BY id"
                ).fetchall()
            else:
                candidates = db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchall()
            for row in candidates:
                if row["status"] not in (RunStatus.QUEUED, RunStatus.RUNNING):
                    continue
                if row["status"] == RunStatus.QUEUED and (row["retry_at"] or 0) > now:
                    continue  # backing off after a temporary error
                if (
                    row["status"] == RunStatus.RUNNING
                    and row["owner"] != owner
                    and _lease_live(row, now)
                ):
                    continue
                busy = db.execute(
                    "SELECT owner, lease_until FROM runs WHERE model=? AND status='running'"
                    " AND id<>?",
                    (row["model"], row["id"]),
                ).fetchall()
                if any(_lease_live(b, now) for b in busy):
                    continue
                db.execute(
                    "UPDATE runs SET status='running', owner=?, lease_until=?, attempts=attempts+1,"
                    " started_at=COALESCE(started_at, ?) WHERE id=?",
                    (owner, now + lease_s, now, row["id"]),
                )
                claimed = db.execute("SELECT * FROM runs WHERE id=?", (row["id"],)).fetchone()
                return Run.from_row(claimed)
        return None

    def renew(self, run_id: int, owner: str, lease_s: float) -> bool:
        with self.tx() as db:
            cur = db.execute(
                "UPDATE runs SET lease_until=? WHERE id=? AND owner=? AND status='running'",
                (time.time() + lease_s, run_id, owner),
            )
            return cur.rowcount == 1

    def release(
        self,
        run_id: int,
        owner: str,
        *,
        requeue: bool = False,
        error: str | None = None,
        retry_at: float | None = None,
    ) -> None:
        """Give a run back: to the queue (retried, not before ``retry_at``) or leave it for
        takeover."""
        with self.tx() as db:
            db.execute(
                "UPDATE runs SET status=?, owner=NULL, lease_until=NULL, error=?, retry_at=?"
                " WHERE id=? AND owner=?",
                (
                    RunStatus.QUEUED if requeue else RunStatus.RUNNING,
                    error,
                    retry_at,
                    run_id,
                    owner,
                ),
            )

    def resume_failed(self, run_id: int) -> bool:
        """Queue a failed run again at the step where it stopped, with its attempts counted
        afresh (its completed steps are kept); False when it is not failed."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE runs SET status='queued', decision=NULL, record=NULL, attempts=0,"
                " owner=NULL, lease_until=NULL, retry_at=NULL, finished_at=NULL"
                " WHERE id=? AND status='failed'",
                (run_id,),
            )
            return cur.rowcount == 1

    def step_done(
        self, run_id: int, step: str, next_step: str, output: dict[str, Any], seconds: float
    ) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO steps(run_id, step, output, seconds, finished_at)"
                " VALUES (?,?,?,?,?)",
                (run_id, step, json.dumps(output), seconds, time.time()),
            )
            db.execute("UPDATE runs SET step=? WHERE id=?", (next_step, run_id))

    def set_progress(self, run_id: int, data: dict[str, Any]) -> None:
        """The latest training progress of a run (step, total, loss, ETA), for ``tidal status``."""
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO progress(run_id, data, updated_at) VALUES (?,?,?)",
                (run_id, json.dumps(data), time.time()),
            )

    def progress(self, run_id: int) -> dict[str, Any] | None:
        rows = self._read("SELECT data, updated_at FROM progress WHERE run_id=?", (run_id,))
        if not rows:
            return None
        return dict(json.loads(rows[0]["data"])) | {"updated_at": rows[0]["updated_at"]}

    def step_outputs(self, run_id: int) -> dict[str, dict[str, Any]]:
        rows = self._read("SELECT step, output, seconds FROM steps WHERE run_id=?", (run_id,))
        return {r["step"]: {**json.loads(r["output"]), "_seconds": r["seconds"]} for r in rows}

    def finish(
        self,
        run_id: int,
        *,
        decision: str | None,
        record: dict[str, Any],
        failed: bool = False,
        error: str | None = None,
    ) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE runs SET status=?, decision=?, record=?, error=?, finished_at=?,"
                " owner=NULL, lease_until=NULL WHERE id=?",
                (
                    RunStatus.FAILED if failed else RunStatus.DONE,
                    decision,
                    json.dumps(record),
                    error,
                    time.time(),
                    run_id,
                ),
            )

    def retry(self, run_id: int, first_step: str) -> bool:
        """Queue a failed run again from its first step (its earlier outputs are dropped)."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE runs SET status='queued', step=?, decision=NULL, record=NULL, error=NULL,"
                " attempts=0, retry_at=NULL, owner=NULL, lease_until=NULL, started_at=NULL,"
                " finished_at=NULL"
                " WHERE id=? AND status='failed'",
                (first_step, run_id),
            )
            if cur.rowcount != 1:
                return False
            db.execute("DELETE FROM steps WHERE run_id=?", (run_id,))
        return True

    # -- polling cursor -----------------------------------------------------------------------

    def cursor(self, source: str) -> str | None:
        rows = self._read("SELECT value FROM cursors WHERE source=?", (source,))
        return rows[0]["value"] if rows else None

    def mark_seen(self, source: str, items: list[tuple[str, float, int]], cursor: str) -> None:
        with self.tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO seen(source, key, mtime, size) VALUES (?,?,?,?)",
                [(source, k, m, s) for k, m, s in items],
            )
            db.execute(
                "INSERT OR REPLACE INTO cursors(source, value, updated_at) VALUES (?,?,?)",
                (source, cursor, time.time()),
            )

    def is_seen(self, source: str, key: str, mtime: float, size: int) -> bool:
        rows = self._read(
            "SELECT 1 FROM seen WHERE source=? AND key=? AND mtime=? AND size=?",
            (source, key, mtime, size),
        )
        return bool(rows)

    # -- deployments --------------------------------------------------------------------------

    def deploy(
        self,
        model: str,
        version: str,
        model_dir: str,
        manifest_sha256: str,
        reason: str,
        run_id: int | None = None,
    ) -> Deployment:
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO deployments(model, version, model_dir, manifest_sha256, reason,"
                " run_id, created_at) VALUES (?,?,?,?,?,?,?)",
                (model, version, model_dir, manifest_sha256, reason, run_id, time.time()),
            )
            row = db.execute("SELECT * FROM deployments WHERE id=?", (cur.lastrowid,)).fetchone()
        return _deployment(row)

    def mark_rolled_back(self, model: str, version: str) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE deployments SET rolled_back=1 WHERE model=? AND version=?", (model, version)
            )

    def current_deployment(self, model: str) -> Deployment | None:
        rows = self._read(
            "SELECT * FROM deployments WHERE model=? ORDER BY id DESC LIMIT 1", (model,)
        )
        return _deployment(rows[0]) if rows else None

    def deployments(self, model: str) -> list[Deployment]:
        rows = self._read("SELECT * FROM deployments WHERE model=? ORDER BY id DESC", (model,))
        return [_deployment(r) for r in rows]

    # -- rollouts -----------------------------------------------------------------------------
    # A rollout is one JSON document (tidal.rollout.manager.Rollout) with its status beside it
    # for queries; the endpoint's per-variant counters are appended as snapshots about once a
    # second, so the evidence of a bake survives a controller restart.

    def create_rollout(self, model: str, status: str, doc: dict[str, Any]) -> int:
        """Insert a rollout; refused (UsageError) when the model already has an active one."""
        now = time.time()
        with self.tx() as db:
            active = db.execute(
                "SELECT id FROM rollouts WHERE model=? AND status IN (?, ?, ?)",
                (model, *ACTIVE_ROLLOUT),
            ).fetchone()
            if active is not None:
                from tidal.errors import UsageError

                raise UsageError(
                    f"rollout {active['id']} of {model} is still running",
                    hint="wait for it, or stop it with 'tidal rollout abort'",
                )
            cur = db.execute(
                "INSERT INTO rollouts(model, status, doc, created_at, updated_at)"
                " VALUES (?,?,?,?,?)",
                (model, status, json.dumps(doc), now, now),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def save_rollout(self, rollout_id: int, status: str, doc: dict[str, Any]) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE rollouts SET status=?, doc=?, updated_at=? WHERE id=?",
                (status, json.dumps(doc), time.time(), rollout_id),
            )

    def rollout(self, rollout_id: int) -> dict[str, Any] | None:
        rows = self._read("SELECT * FROM rollouts WHERE id=?", (rollout_id,))
        return _rollout(rows[0]) if rows else None

    def rollouts(
        self, model: str, *, active: bool = False, limit: int = 20
    ) -> list[dict[str, Any]]:
        """The model's rollouts, newest first (only the active one with ``active``)."""
        if active:
            rows = self._read(
                "SELECT * FROM rollouts WHERE model=? AND status IN (?, ?, ?) ORDER BY id DESC",
                (model, *ACTIVE_ROLLOUT),
            )
        else:
            rows = self._read(
                "SELECT * FROM rollouts WHERE model=? ORDER BY id DESC LIMIT ?", (model, limit)
            )
        return [_rollout(r) for r in rows]

    def add_snapshots(self, rollout_id: int, snapshots: dict[str, dict[str, Any]]) -> None:
        """One snapshot of each variant's cumulative counters (``t`` inside each)."""
        with self.tx() as db:
            db.executemany(
                "INSERT INTO variant_stats(rollout_id, variant, t, data) VALUES (?,?,?,?)",
                [(rollout_id, v, snap["t"], json.dumps(snap)) for v, snap in snapshots.items()],
            )

    def snapshots(self, rollout_id: int, variant: str, since: float = 0.0) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT data FROM variant_stats WHERE rollout_id=? AND variant=? AND t>=? ORDER BY t",
            (rollout_id, variant, since),
        )
        return [json.loads(r["data"]) for r in rows]

    # -- retrain decisions ----------------------------------------------------------------------
    # One JSON document per decision of the retrain policy (tidal.monitoring.policy).

    def add_retrain_decision(self, model: str, action: str, doc: dict[str, Any]) -> int:
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO retrain_decisions(model, action, at, doc) VALUES (?,?,?,?)",
                (model, action, doc.get("at", time.time()), json.dumps(doc)),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def update_retrain_decision(self, decision_id: int, doc: dict[str, Any]) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE retrain_decisions SET doc=? WHERE id=?", (json.dumps(doc), decision_id)
            )

    def retrain_decisions(self, model: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """The model's retrain decisions, newest first (each its document and ``id``)."""
        rows = self._read(
            "SELECT id, doc FROM retrain_decisions WHERE model=? ORDER BY id DESC LIMIT ?",
            (model, limit),
        )
        return [json.loads(r["doc"]) | {"id": r["id"]} for r in rows]

    # -- events -------------------------------------------------------------------------------

    def event(
        self,
        kind: str,
        message: str,
        *,
        model: str | None = None,
        run_id: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO events(ts, kind, model, run_id, message, data) VALUES (?,?,?,?,?,?)",
                (time.time(), kind, model, run_id, message, json.dumps(data) if data else None),
            )

    def events(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._read("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) | {"data": json.loads(r["data"]) if r["data"] else None} for r in rows]


def _lease_live(row: sqlite3.Row, now: float) -> bool:
    return bool(row["lease_until"] and row["lease_until"] > now and owner_alive(row["owner"]))


def _rollout(row: sqlite3.Row) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(row["doc"])
    return doc | {"id": row["id"], "model": row["model"], "status": row["status"]}


def _deployment(row: sqlite3.Row) -> Deployment:
    data = dict(row)
    data["rolled_back"] = bool(data["rolled_back"])
    return Deployment(**data)
