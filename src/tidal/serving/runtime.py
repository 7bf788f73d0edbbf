"""What runs beside the endpoint's routes: the worker launcher, the metrics, data capture.

``Runtime`` is built once per endpoint and handed to ``build_app``. Its ``loader(variant)`` is
the ``ModelSlot`` loader that turns a deployment into a worker ``Pool``: the artifact's sha256
is checked here, in the gateway, once per deployment (the workers trust that check for files
whose stamp did not change since), so a cold start does not hash the model again.
"""

from __future__ import annotations

import asyncio
import logging
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
            return Pool(
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

        return load

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.launcher.start()

    def stop(self) -> None:
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
