"""The model an endpoint serves, following the deployment record, and the router that picks one.

``ModelSlot`` holds one backend (the worker pool of ``tidal.serving.pool``, or an in-process
``InlineBackend``) and the deployment it came from. ``refresh()`` asks its ``source`` for the
current deployment; when the deployment id changed it checks the new artifact and builds its
backend first, warms it when the old one had workers running (so live traffic never waits for
a cold start), and then swaps one reference, so a request sees the old model or the new one,
never half of either. The old backend is retired: its in-flight requests finish, its workers
exit. When the source fails or the new model does not load (a file missing, a
sha256 that does not match), the slot keeps serving what it had, remembers the error in
``last_error`` and logs it; a deployment that failed is tried again after a growing pause (1 s
doubling to 60 s), or at once on ``refresh(force=True)``.

Threads: one refresher thread and any number of request handlers. Handlers read ``loaded``
(a single attribute read) and use that pair for the whole request; refreshes are serialised.

``Router`` is the seam for endpoints with several variants (canary, A/B, shadow): the gateway
asks it for the slot of each request. This issue has one implementation, a single variant.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tidal.artifact import Manifest
    from tidal.state import Deployment
    from tidal.training.recipes.base import Predictor

log = logging.getLogger("tidal.serving")


class Backend(Protocol):
    """What answers a slot's requests: a worker pool, or a predictor in process (tests)."""

    manifest: Manifest

    async def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Predictions for ``rows``; raises InvalidInput, ``pool.ModelRaised``, ``WorkerFailed``."""
        ...

    @property
    def has_workers(self) -> bool: ...

    def warm_blocking(self, timeout_s: float | None = None) -> None: ...

    def retire(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


class InlineBackend:
    """A predictor called in the gateway's own thread: for tests of routing, errors and auth."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.manifest = predictor.manifest
        self.retired = False

    async def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from tidal.serving.launcher import run_batch
        from tidal.serving.pool import worker_error

        (result,) = run_batch(self.predictor, rows, [len(rows)])
        if "e" in result:
            raise worker_error(result["e"])
        predictions: list[dict[str, Any]] = result["p"]
        return predictions

    @property
    def has_workers(self) -> bool:
        return False

    def warm_blocking(self, timeout_s: float | None = None) -> None:
        return None

    def retire(self) -> None:
        self.retired = True

    def status(self) -> dict[str, Any]:
        return {"inline": True}


Loader = Callable[["Deployment"], Backend]
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


@dataclass(frozen=True)
class Loaded:
    """A deployment and the predictor loaded from it: read together, swapped together."""

    deployment: Deployment
    backend: Backend
    variant: str = "primary"


class ModelSlot:
    """One served model that follows ``source()``, the current deployment (or None)."""

    def __init__(
        self,
        source: Callable[[], Deployment | None],
        loader: Loader,
        *,
        name: str = "primary",
        keep_previous_s: float = 0.0,
    ) -> None:
        self.name = name
        # after a swap the replaced backend stays ready this long, for an instant rollback
        self.keep_previous_s = keep_previous_s
        self._previous: tuple[Loaded, float] | None = None
        self._source = source
        self._loader = loader
        self._loaded: Loaded | None = None
        self._last_error: str | None = None
        self._refresh_lock = threading.Lock()
        self._failed_id: int | None = None  # deployment that failed to load, and when to retry
        self._retry_at = 0.0
        self._retry_s = RETRY_FIRST_S

    @property
    def loaded(self) -> Loaded | None:
        return self._loaded

    @property
    def backend(self) -> Backend | None:
        loaded = self._loaded
        return loaded.backend if loaded else None

    @property
    def deployment(self) -> Deployment | None:
        loaded = self._loaded
        return loaded.deployment if loaded else None

    @property
    def last_error(self) -> str | None:
        """Why the latest refresh could not follow the source; None after a good one."""
        return self._last_error

    @property
    def ready(self) -> bool:
        return self._loaded is not None

    def refresh(self, *, force: bool = False) -> bool:
        """Follow the source; True when a new model was swapped in."""
        self.expire_previous()
        with self._refresh_lock:
            try:
                target = self._source()
            except Exception as exc:
                self._fail(None, f"cannot read the current deployment: {exc}")
                return False
            current = self._loaded
            if target is None or (current is not None and current.deployment.id == target.id):
                self._last_error = None
                return False
            if target.id == self._failed_id and not force and time.monotonic() < self._retry_at:
                return False
            kept = self._take_previous(target)
            try:
                backend = kept or self._loader(target)
                if kept is None and current is not None and current.backend.has_workers:
                    try:
                        backend.warm_blocking()  # blue/green: the new one is up before it serves
                    except BaseException:
                        backend.retire()
                        raise
            except Exception as exc:
                log.debug("loading deployment %s failed", target.id, exc_info=True)
                self._fail(
                    target,
                    f"version {target.version} of {target.model} (deployment {target.id}) "
                    f"was not loaded: {exc}",
                )
                return False
            self._loaded = Loaded(target, backend, self.name)
            if current is not None:
                self._keep_previous(current)
            self._last_error = None
            self._failed_id = None
            self._retry_s = RETRY_FIRST_S
        log.info(
            "serving %s version %s (deployment %s, from %s)",
            target.model,
            target.version,
            target.id,
            target.model_dir,
        )
        return True

    def _take_previous(self, target: Deployment) -> Backend | None:
        """The kept previous backend when ``target`` is the same model again (a rollback
        within the termination wait): ready at once, no load."""
        previous, self._previous = self._previous, None
        if previous is None:
            return None
        loaded, until = previous
        same = (loaded.deployment.model_dir, loaded.deployment.manifest_sha256) == (
            target.model_dir,
            target.manifest_sha256,
        )
        if same and time.monotonic() < until:
            log.info("version %s was kept ready: back in service at once", target.version)
            return loaded.backend
        loaded.backend.retire()
        return None

    def _keep_previous(self, replaced: Loaded) -> None:
        if self.keep_previous_s <= 0:
            replaced.backend.retire()
            return
        self._previous = (replaced, time.monotonic() + self.keep_previous_s)

    def backends(self) -> list[Backend]:
        """Every backend the slot holds: the serving one and a kept previous one."""
        found = [self._loaded.backend] if self._loaded else []
        if self._previous is not None:
            found.append(self._previous[0].backend)
        return found

    def expire_previous(self) -> None:
        """Retire the kept previous backend once its termination wait is over."""
        previous = self._previous
        if previous is not None and time.monotonic() >= previous[1]:
            self._previous = None
            previous[0].backend.retire()

    def clear(self) -> None:
        """Serve nothing any more (a rollout ended): retire the backend."""
        with self._refresh_lock:
            current, self._loaded = self._loaded, None
            self._failed_id = None
            self._last_error = None
        if current is not None:
            current.backend.retire()
            log.info(
                "stopped serving %s version %s (%s)",
                current.deployment.model,
                current.deployment.version,
                self.name,
            )

    def _fail(self, target: Deployment | None, message: str) -> None:
        kept = self._loaded
        still = (
            f"; still serving version {kept.deployment.version}" if kept else "; no model is served"
        )
        if message != self._last_error:  # log each distinct failure once, not every interval
            log.error("%s%s", message, still)
        self._last_error = message
        if target is None:
            return
        if target.id == self._failed_id:
            self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
        else:
            self._failed_id, self._retry_s = target.id, RETRY_FIRST_S
        self._retry_at = time.monotonic() + self._retry_s


class Router(Protocol):
    """Which slot answers a request. Implementations: one variant now; canary and A/B later."""

    def pick(self, request_headers: Mapping[str, str]) -> ModelSlot:
        """The slot for a request with these headers."""
        ...

    def slots(self) -> Sequence[ModelSlot]:
        """Every slot, for readiness and reloads."""
        ...

    def refresh_all(self, *, force: bool = False) -> bool:
        """Refresh every slot; True when any swapped."""
        ...


class SingleVariantRouter:
    """Every request goes to the one slot."""

    def __init__(self, slot: ModelSlot) -> None:
        self.slot = slot

    def pick(self, request_headers: Mapping[str, str]) -> ModelSlot:
        return self.slot

    def slots(self) -> Sequence[ModelSlot]:
        return (self.slot,)

    def refresh_all(self, *, force: bool = False) -> bool:
        return self.slot.refresh(force=force)
