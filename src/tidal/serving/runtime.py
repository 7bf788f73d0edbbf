"""What runs beside the endpoint's routes: the worker launcher, the metrics, data capture.

``Runtime`` is built once per endpoint and handed to ``build_app``. Its ``loader(variant)`` is
the ``ModelSlot`` loader that turns a deployment into a worker ``Pool``: the artifact's sha256
is checked here, in the gateway, once per deployment (the workers trust that check for files
whose stamp did not change since), so a cold start does not hash the model again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidal.artifact import MANIFEST, verify_stamped
from tidal.serving.capture import CAPTURE_PREFIX
from tidal.serving.metrics import ServingMetrics
from tidal.serving.pool import Launcher, Pool, PoolKey

if TYPE_CHECKING:
    from tidal.config import ServingConfig
    from tidal.serving.capture import CaptureWriter
    from tidal.serving.slot import Loader
    from tidal.state import Deployment
    from tidal.storage import Store

log = logging.getLogger("tidal.serving")


class Runtime:
    def __init__(
        self,
        config: ServingConfig,
        *,
        store: Store | None = None,
        capture_prefix: str = CAPTURE_PREFIX,
        flavors: list[str] | None = None,
    ) -> None:
        self.config = config
        self.metrics = ServingMetrics()
        self.launcher = Launcher(flavors)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pools: weakref.WeakSet[Pool] = weakref.WeakSet()
        self._idle_task: asyncio.Task[None] | None = None
        self.capture: CaptureWriter | None = None
        if store is not None and config.capture_sample_rate > 0:
            from tidal.serving.capture import CaptureWriter

            self.capture = CaptureWriter(
                store,
                capture_prefix,
                sample_rate=config.capture_sample_rate,
                flush_interval_s=config.capture_flush_interval_s,
                format=config.capture_format,
                metrics=self.metrics,
            )

    def loader(self, variant: str = "primary") -> Loader:
        def load(deployment: Deployment) -> Pool:
            folder = Path(deployment.model_dir)
            manifest, stamps = verify_stamped(folder, deployment.manifest_sha256)
            if self.loop is not None:  # running: import a new flavor's libraries before traffic
                self.launcher.preload(manifest.flavor)
            pool = Pool(
                PoolKey(deployment.model, deployment.version, variant),
                folder,
                manifest,
                deployment.manifest_sha256,
                stamps,
                self.launcher,
                self.config,
                self.metrics,
                loop=self.loop,
            )
            self._pools.add(pool)
            return pool

        return load

    def unready(self) -> str | None:
        """Why a request would wait for more than a model load now (``/ping`` answers 503 with
        it), or None. Only the first launcher's imports count: after a ``launcher_idle_s``
        retire the endpoint stays ready, and the next request pays for the import."""
        if self.loop is None or self.launcher.ready:
            return None
        return self.launcher.error or (
            f"starting: the worker launcher is importing {', '.join(self.launcher.flavors)} "
            "libraries"
            if self.launcher.flavors
            else "starting: the worker launcher is starting"
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.launcher.start()
        if self.config.launcher_idle_s:
            self._idle_task = loop.create_task(self._retire_idle(self.config.launcher_idle_s))

    async def _retire_idle(self, idle_s: float) -> None:
        """Stop the launcher once no pool has had a worker for ``idle_s`` seconds."""
        busy_at = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, idle_s / 4))
            now = time.monotonic()
            if not (self.launcher.ready and self.launcher.running) or any(
                pool.has_workers or pool.in_flight for pool in list(self._pools)
            ):
                busy_at = now  # idle counts from the imports' end or the last worker's exit
            elif now - busy_at >= idle_s and await asyncio.to_thread(self.launcher.retire, busy_at):
                log.info(
                    "no worker for %.0f s: the worker launcher exited (serving.launcher_idle_s); "
                    "the next request waits for its imports",
                    now - busy_at,
                )

    def stop(self) -> None:
        if self._idle_task is not None and self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has stopped already
                self.loop.call_soon_threadsafe(self._idle_task.cancel)
        self.launcher.stop()
        if self.capture is not None:
            self.capture.close()


def deployed_flavors(model_dirs: list[str]) -> list[str]:
    """The flavors of these model folders (read from their manifests; unreadable ones skipped),
    so the launcher imports their libraries before the first request needs them."""
    import json

    flavors = []
    for folder in model_dirs:
        try:
            data: dict[str, Any] = json.loads((Path(folder) / MANIFEST).read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data.get("flavor"), str) and data["flavor"] not in flavors:
            flavors.append(data["flavor"])
    return flavors
