"""Several variants on one endpoint: the router that splits traffic during a rollout.

``RolloutRouter`` holds the ``primary`` slot (the champion, from the deployment record) and a
``candidate`` slot (the version a rollout is bringing in, from the rollout record). On every
refresh it reads the model's active rollout and applies it:

- ``traffic``: the candidate's share of requests, in percent. Each request is routed at random,
  or, with a sticky header (``X-User-Id``, say), by a hash of its value, so one user sees one
  variant for the whole experiment.
- ``shadow``: the share of requests also sent to the candidate in the background; its answers
  are counted and captured, never returned (``shadow_slot``).
- ``warming`` (blue/green): the candidate gets a worker started before any traffic.

Each variant's cumulative counters (``VariantStats``: requests, 5xx errors, a fine latency
histogram, predicted labels) are written to the controller database as snapshots about once a
second while a rollout is active; the rollout manager judges its alarms on windows of them.
Routing costs a dictionary read and one random number per request.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tidal.serving.slot import Loader, ModelSlot
from tidal.state import Deployment

log = logging.getLogger("tidal.serving")

PRIMARY = "primary"
CANDIDATE = "candidate"
# 50 µs to ~60 s in steps of 25%: a p99 read from it is within 25% of the true one
LATENCY_BOUNDS = tuple(round(0.00005 * 1.25**i, 7) for i in range(64))
SNAPSHOT_EVERY_S = 1.0


class VariantStats:
    """Cumulative counters of one variant; written on the event loop, read by the refresher."""

    def __init__(self, bounds: Sequence[float] = LATENCY_BOUNDS) -> None:
        self.bounds = list(bounds)
        self.requests = 0
        self.errors = 0
        self.counts = [0] * (len(self.bounds) + 1)
        self.labels: dict[str, int] = {}
        self.workers = 0

    def observe(
        self, status: int, seconds: float, predictions: list[dict[str, Any]] | None
    ) -> None:
        self.requests += 1
        if status >= 500:
            self.errors += 1
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        if predictions:
            labels = self.labels
            for prediction in predictions:
                key = str(prediction.get("label"))
                labels[key] = labels.get(key, 0) + 1

    def snapshot(self, t: float) -> dict[str, Any]:
        return {
            "t": t,
            "requests": self.requests,
            "errors": self.errors,
            "latency": {"bounds": self.bounds, "counts": list(self.counts)},
            "labels": dict(self.labels),
            "workers": self.workers,
        }


def sticky_bucket(value: str) -> float:
    """A stable number in [0, 100) for a sticky header's value."""
    digest = hashlib.blake2b(value.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100


class RolloutRouter:
    """``primary`` always; ``candidate`` while the model has an active rollout."""

    def __init__(
        self,
        primary: ModelSlot,
        candidate_loader: Loader,
        rollout_source: Callable[[], dict[str, Any] | None],
        write_snapshots: Callable[[int, dict[str, dict[str, Any]]], None] | None = None,
        *,
        snapshot_every_s: float = SNAPSHOT_EVERY_S,
    ) -> None:
        self.primary = primary
        self.candidate = ModelSlot(self._candidate_deployment, candidate_loader, name=CANDIDATE)
        self._rollout_source = rollout_source
        self._write_snapshots = write_snapshots
        self.snapshot_every_s = snapshot_every_s
        self.rollout: dict[str, Any] | None = None
        self.traffic = 0.0
        self.shadow = 0.0
        self.sticky: str | None = None
        self.stats = {PRIMARY: VariantStats(), CANDIDATE: VariantStats()}
        self._last_snapshot = 0.0
        self._random = random.random

    # -- the request path -----------------------------------------------------------------------

    def pick(self, request_headers: Mapping[str, str]) -> ModelSlot:
        traffic = self.traffic
        if traffic <= 0 or self.candidate._loaded is None:
            return self.primary
        if self.sticky is not None:
            value = request_headers.get(self.sticky)
            if value is not None:
                return self.candidate if sticky_bucket(value) < traffic else self.primary
        return self.candidate if self._random() * 100 < traffic else self.primary

    def shadow_slot(self, request_headers: Mapping[str, str]) -> ModelSlot | None:
        """The slot to mirror this request to, if any."""
        shadow = self.shadow
        if shadow <= 0 or self.candidate._loaded is None:
            return None
        return self.candidate if self._random() * 100 < shadow else None

    def observe(
        self,
        variant: str,
        status: int,
        seconds: float,
        predictions: list[dict[str, Any]] | None,
    ) -> None:
        stats = self.stats.get(variant)
        if stats is not None:
            stats.observe(status, seconds, predictions)

    # -- following the records ------------------------------------------------------------------

    def slots(self) -> Sequence[ModelSlot]:
        return (self.primary, self.candidate) if self.rollout else (self.primary,)

    def all_slots(self) -> Sequence[ModelSlot]:
        """Both slots, whether a rollout runs or not (for shutdown)."""
        return (self.primary, self.candidate)

    def refresh_all(self, *, force: bool = False) -> bool:
        try:
            rollout = self._rollout_source()
        except Exception as exc:  # keep routing as it was; the next refresh tries again
            log.error("cannot read the rollout record: %s", exc)
            rollout = self.rollout
        if (rollout or {}).get("id") != (self.rollout or {}).get("id"):
            self.stats[CANDIDATE] = VariantStats()  # a new rollout's candidate starts at zero
            self._last_snapshot = 0.0
        self.rollout = rollout
        swapped = self.primary.refresh(force=force)
        if rollout is None:
            self.traffic = self.shadow = 0.0
            if self.candidate.loaded is not None:
                self.candidate.clear()
                swapped = True
        else:
            swapped = self.candidate.refresh(force=force) or swapped
            if rollout.get("status") == "warming":
                self._warm_candidate()
            paused = rollout.get("status") == "paused" and not rollout.get("keep_split")
            self.traffic = 0.0 if paused else float(rollout.get("traffic", 0.0))
            self.shadow = 0.0 if paused else float(rollout.get("shadow", 0.0))
            self.sticky = rollout.get("sticky_header")
        self._snapshot()
        return swapped

    def _candidate_deployment(self) -> Deployment | None:
        """The candidate slot's source: the active rollout's candidate, as a Deployment."""
        rollout = self.rollout
        if rollout is None:
            return None
        return Deployment(
            id=int(rollout["id"]),
            model=str(rollout["model"]),
            version=str(rollout["candidate_version"]),
            model_dir=str(rollout["candidate_dir"]),
            manifest_sha256=str(rollout["candidate_sha256"]),
            reason=f"rollout {rollout['id']} ({rollout['strategy']})",
            run_id=None,
            rolled_back=False,
            created_at=float(rollout.get("started_at", 0.0)),
        )

    def _warm_candidate(self) -> None:
        backend = self.candidate.backend
        if backend is None or backend.has_workers:
            return
        try:
            backend.warm_blocking()
        except Exception as exc:
            log.error("the candidate could not be warmed: %s", exc)

    def _snapshot(self) -> None:
        rollout = self.rollout
        now = time.time()
        if rollout is None or self._write_snapshots is None:
            return
        if now - self._last_snapshot < self.snapshot_every_s:
            return
        self._last_snapshot = now
        for name, slot in ((PRIMARY, self.primary), (CANDIDATE, self.candidate)):
            backend = slot.backend
            status = backend.status() if backend is not None else {}
            self.stats[name].workers = len(status.get("workers", ()))
        try:
            self._write_snapshots(
                int(rollout["id"]), {name: s.snapshot(now) for name, s in self.stats.items()}
            )
        except Exception as exc:
            log.error("cannot write the variants' statistics: %s", exc)
