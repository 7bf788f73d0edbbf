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

import contextlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidal.config import CONFIG_FILE, Config, load_config
from tidal.errors import UsageError

ENDPOINT_FILE = "endpoint.json"  # in .tidal/: the URL and pid of the running endpoint

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
        """The running endpoint's URL as it recorded it ('tidal serve --port N' included), else
        the configured one (serving.host and serving.port)."""
        return self.running_endpoint() or local_url(
            self.config.serving.host, self.config.serving.port
        )

    def record_endpoint(self, url: str) -> Path:
        """Record that this process serves the workspace at ``url`` (until ``forget``)."""
        record = self.home / ENDPOINT_FILE
        self.home.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"url": url, "pid": os.getpid()}), "utf-8")
        return record

    def forget_endpoint(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            record = self.home / ENDPOINT_FILE
            if json.loads(record.read_text("utf-8")).get("pid") == os.getpid():
                record.unlink()

    def running_endpoint(self) -> str | None:
        """The URL a live endpoint process recorded, or None (none, or its process is gone)."""
        try:
            data = json.loads((self.home / ENDPOINT_FILE).read_text("utf-8"))
            os.kill(int(data["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        url = data.get("url")
        return url if isinstance(url, str) else None

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
        from tidal.training.executors import build_executor

        return build_executor(self)


def local_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for an endpoint bound to host:port."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
