"""Tidal: continuous training and serverless model serving.

``import tidal`` stays light (no mlflow, sklearn, torch): the names below are imported on first
use. The CLI (``tidal``) and the dashboard call the same service functions.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Config": "tidal.config",
    "DataRejected": "tidal.errors",
    "Store": "tidal.storage",
    "TidalError": "tidal.errors",
    "Workspace": "tidal.workspace",
    "load_config": "tidal.config",
    "open_store": "tidal.storage",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tidal' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
