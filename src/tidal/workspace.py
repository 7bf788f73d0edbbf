"""The workspace: a folder with ``tidal.yaml`` and its state under ``.tidal/``.

    tidal.yaml        the configuration (``tidal init`` writes it, commented)
    .tidal/state.db   controller: queue, runs, steps, cursor, deployments, events
    .tidal/mlflow.db  MLflow tracking and registry (SQLite), artifacts in .tidal/mlruns/
    .tidal/store/     the file:// bucket, unless storage.uri points elsewhere
    .tidal/models/    verified copies of deployed model versions, what the endpoint loads
    .tidal/jobs/      training job folders;  .tidal/cache/  evaluation copies
    .tidal/logs/

Deleting ``.tidal/`` resets everything; nothing is written outside the workspace.
Components are built on first use so a command pays only for what it touches.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidal.config import CONFIG_FILE, Config, load_config
from tidal.errors import UsageError

if TYPE_CHECKING:
    from tidal.registry import Registry
    from tidal.state import State
    from tidal.storage import Store
    from tidal.training.executors.base import Executor

INCOMING = "incoming"
QUARANTINE = "quarantine"
META = "_tidal"


class Workspace:
    def __init__(self, root: Path, config: Config) -> None:
        self.root = root.resolve()
        self.config = config
        self.home = self.root / ".tidal"

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @classmethod
    def open(
        cls, path: Path | None = None, *, overrides: dict[str, Any] | None = None
    ) -> Workspace:
        """The workspace at ``path``, ``$TIDAL_WORKSPACE``, or the nearest one above the cwd."""
        if path is None and os.environ.get("TIDAL_WORKSPACE"):
            path = Path(os.environ["TIDAL_WORKSPACE"])
        start = (path or Path.cwd()).resolve()
        for folder in (start, *start.parents):
            if (folder / CONFIG_FILE).is_file():
                return cls(folder, load_config(folder, overrides=overrides))
            if path is not None:
                break
        raise UsageError(
            f"no {CONFIG_FILE} in {start}" + ("" if path else " or its parents"),
            hint="create a workspace with 'tidal init DIR' or pass --workspace DIR",
        )

    # -- places -------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        folder = self.home / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def model_name(self) -> str:
        return self.config.model_name

    @property
    def endpoint_url(self) -> str:
        host = self.config.serving.host
        return (
            f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.config.serving.port}"
        )

    # -- components ---------------------------------------------------------------------------

    @cached_property
    def store(self) -> Store:
        from tidal.storage import open_store

        s = self.config.storage
        uri = s.uri or (self.home / "store").as_uri()
        return open_store(
            uri,
            endpoint_url=s.endpoint_url,
            key=s.key.get_secret_value() if s.key else None,
            secret=s.secret.get_secret_value() if s.secret else None,
            region=s.region,
        )

    @cached_property
    def state(self) -> State:
        from tidal.state import State

        return State(self.home / "state.db")

    @cached_property
    def registry(self) -> Registry:
        from tidal.registry import Registry

        uri = self.config.registry.tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"
        return Registry(uri, self.path("mlruns"), self.model_name, self.home / "mlflow.lock")

    @cached_property
    def executor(self) -> Executor:
        from tidal.training.executors.local import LocalExecutor

        return LocalExecutor(self.store, self.path("jobs"))
