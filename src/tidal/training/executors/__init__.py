"""Where training jobs run: one module per backend, named here and imported on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidal.training.executors.base import Executor
    from tidal.workspace import Workspace

EXECUTORS: dict[str, str] = {
    "local": "tidal.training.executors.local:build",
}


def build_executor(ws: Workspace) -> Executor:
    """The executor ``training.executor`` names, built for workspace ``ws``."""
    name = ws.config.training.executor
    module, _, attr = EXECUTORS[name].partition(":")
    factory = getattr(importlib.import_module(module), attr)
    executor: Executor = factory(ws)
    return executor
