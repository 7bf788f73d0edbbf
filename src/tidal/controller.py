"""The controller: turns landed objects into runs and runs them, durably.

    trigger (polling cursor) ──► queue (state.db, one run per sha256) ──► claim under lease
        ──► pipeline.execute (resumes after the last completed step) ──► decision record

``tidal up`` calls ``serve_forever``; ``tidal run`` calls ``run_object`` for one file and
waits for its record. Both may run at once: the lease keeps one executor per run, and a model
never has two runs executing together. A run whose owner was killed (kill -9) is taken over
once its owner is known dead or its lease expires, and resumes where it stopped.

Only objects under ``incoming/`` are ever run: Tidal's own objects (``_tidal/``, the holdout,
``quarantine/``) are refused, never validated or moved. A run that meets a temporary error
waits (exponential backoff with jitter, ``controller.retry_base_s`` to ``retry_max_s``) and is
tried again up to ``controller.max_attempts`` times; a run that failed for such a reason is
queued again by ``serve_forever`` once the store answers, at most every ``retry_max_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from tidal.errors import NotFound, RetryableError, UsageError
from tidal.evaluation.gate import Decision
from tidal.pipeline import FIRST, Progress, execute, quarantine
from tidal.state import Run, RunStatus, owner_id
from tidal.storage import sha256_file
from tidal.triggers.polling import DATA_SUFFIXES, PollingSource, ignored_because
from tidal.workspace import INCOMING, Workspace

log = logging.getLogger("tidal.controller")


class Controller:
    def __init__(self, ws: Workspace, *, progress: Progress | None = None) -> None:
        self.ws = ws
        self.owner = owner_id()
        self.progress = progress
        self.source = PollingSource(ws.store, ws.state, INCOMING)

    # -- getting objects in -----------------------------------------------------------------

    def ingest(self, path: Path) -> tuple[str, str]:
        """Copy a local file into ``incoming/`` (atomically); returns (uri, sha256).

        The same bytes already there are not copied twice; a different file with the same
        name gets the first 8 characters of its sha256 added to its name. A file above
        ``validation.max_file_mb``, or named so that the trigger would never run it, is refused.
        """
        from tidal.data.validate import check_size

        if not path.is_file():
            raise UsageError(
                f"no such file: {path}", hint="give the path of a CSV or JSON Lines file"
            )
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise UsageError(
                f"{path.name}: unsupported file type {path.suffix or '(none)'}",
                hint=f"use one of {', '.join(DATA_SUFFIXES)}",
            )
        ignored = ignored_because(path.name)
        if ignored:
            raise UsageError(
                f"{path.name}: {ignored}, so incoming/ would never run it",
                hint="rename the file (start it with a letter or digit)",
            )
        check_size(path.stat().st_size, path.name, self.ws.config.validation.max_file_mb)
        sha = sha256_file(path)
        store = self.ws.store
        key = f"{INCOMING}/{path.name}"
        if store.exists(key) and store.sha256(key) != sha:
            key = f"{INCOMING}/{path.stem}-{sha[:8]}{path.suffix}"
        if not store.exists(key):
            store.put_file(key, path)
        return store.uri(key), sha

    def submit(
        self, uri: str, sha256: str | None = None, landed_at: float | None = None
    ) -> tuple[Run, bool]:
        """Queue a run for an object under incoming/; the same bytes give the same run."""
        key = self.ws.store.key_of(uri)
        if not key.startswith(f"{INCOMING}/") or ignored_because(key.rsplit("/", 1)[-1]):
            raise UsageError(
                f"{uri} is not a landed file: only objects under {self.ws.store.uri(INCOMING)}/ "
                "are run (Tidal's own objects are never validated or moved)",
                hint="give the path of a local file (it is copied into incoming/), or upload "
                "the file to incoming/",
            )
        sha = sha256 or self.ws.store.sha256(key)
        return self.ws.state.enqueue(self.ws.model_name, uri, sha, FIRST.value, landed_at)

    def poll(self) -> list[Run]:
        """Queue a run for every new object in incoming/, and again every run that failed for
        a temporary reason (the store answered this listing)."""
        queued = []
        for info in self.source.poll():
            try:
                run, created = self.submit(self.ws.store.uri(info.key), landed_at=info.mtime)
            except NotFound:
                continue  # moved away between listing and reading
            self.source.ack([info])
            if created:
                log.info("queued run %s for %s", run.id, run.uri)
                queued.append(run)
            else:
                self._requarantine(run, info.key)
        return queued + self._resume_temporary_failures()

    def _resume_temporary_failures(self) -> list[Run]:
        """Failed runs whose last error was temporary, failed over ``retry_max_s`` ago: queued
        again at the step where they stopped, with fresh attempts."""
        state, cfg = self.ws.state, self.ws.config.controller
        resumed = []
        for run in state.runs(self.ws.model_name, limit=200):
            if run.status != RunStatus.FAILED or not (run.record or {}).get("retryable"):
                continue
            if time.time() - (run.finished_at or 0) < cfg.retry_max_s:
                continue
            if state.resume_failed(run.id):
                state.event(
                    "run.queued",
                    f"run {run.id} failed for a temporary reason ({run.error}); the store "
                    f"answers again: queued at step {run.step}",
                    model=run.model,
                    run_id=run.id,
                )
                resumed.append(run)
        return resumed

    def _requarantine(self, run: Run, key: str) -> None:
        """Bytes that validation already refused, landed again: back to quarantine/ with them."""
        if run.decision != Decision.INVALID or run.record is None:
            return
        if key.startswith(f"{INCOMING}/") and self.ws.store.exists(key):
            quarantine(self.ws, key, run.record.get("reasons") or [], run)

    # -- running ----------------------------------------------------------------------------

    def work_once(self) -> dict[str, Any] | None:
        """Claim the oldest runnable run and execute it; None when there is nothing to do."""
        run = self.ws.state.claim(None, self.owner, self.ws.config.controller.lease_s)
        if run is None:
            return None
        try:
            return execute(self.ws, run, self.owner, self.progress)
        except RetryableError as exc:
            log.warning("run %s will be retried: %s", run.id, exc)
            return None

    def run_object(
        self, uri: str, sha256: str | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Queue ``uri`` (if new) and return its decision record, running it here if free.

        An object that was already decided on returns the earlier record at once
        (``repeated``); one whose run failed (a crash, a bad setting) is run again.
        """
        run, _ = self.submit(uri, sha256)
        if run.status == RunStatus.FAILED and self.ws.state.retry(run.id, FIRST.value):
            self.ws.state.event(
                "run.queued", f"retrying failed run {run.id}", model=run.model, run_id=run.id
            )
            return self.wait_for(run.id, timeout_s=timeout_s)
        if run.status == RunStatus.DONE and run.record is not None:
            self._requarantine(run, self.ws.store.key_of(uri))
            current = self.ws.state.current_deployment(self.ws.model_name)
            return run.record | {"repeated": True, "champion": current.version if current else None}
        return self.wait_for(run.id, timeout_s=timeout_s)

    def wait_for(self, run_id: int, *, timeout_s: float | None = None) -> dict[str, Any]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = 0.2
        while True:
            run = self.ws.state.run(run_id)
            if run is None:
                raise NotFound(f"no run {run_id}")
            if run.status in (RunStatus.DONE, RunStatus.FAILED) and run.record is not None:
                return run.record
            claimed = self.ws.state.claim(run_id, self.owner, self.ws.config.controller.lease_s)
            if claimed is not None:
                try:
                    return execute(self.ws, claimed, self.owner, self.progress)
                except RetryableError as exc:
                    log.warning("run %s will be retried: %s", run_id, exc)
            if deadline is not None and time.monotonic() > deadline:
                raise RetryableError(f"run {run_id} did not finish within {timeout_s} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def serve_forever(self, stop: threading.Event) -> None:
        """Poll and work until ``stop`` is set; errors are logged, never fatal."""
        interval = self.ws.config.controller.poll_interval_s
        while not stop.is_set():
            try:
                self.poll()
                while not stop.is_set() and self.work_once() is not None:
                    self.poll()
            except RetryableError as exc:
                log.warning("controller: %s", exc)
            except Exception:
                log.exception("controller loop error")
            stop.wait(interval)
